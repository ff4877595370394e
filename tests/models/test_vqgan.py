"""mmkit VQGAN: shapes and ranges, straight-through training, dead-code restarts, native round trip."""
from __future__ import annotations

import pytest
import torch

from mmkit.models import VQGAN
from mmkit.stems.vq import VectorQuantizer



@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core CPU only contend with more threads (10x slower measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), z_channels=8, codebook_size=32, code_dim=8)


def test_shapes_and_ranges():
    torch.manual_seed(0)
    model = VQGAN(**TINY).eval()
    images = torch.rand(3, 3, 16, 24)
    codes = model.encode(images)
    assert codes.shape == (3, 8, 12) and codes.dtype == torch.int64
    out = model.decode(codes)
    assert out.shape == (3, 3, 16, 24) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.decode(torch.full((1, 2, 2), 32))
    with pytest.raises(ValueError, match="value_range"):
        VQGAN(**TINY, value_range="bytes")


def test_straight_through_training_reduces_loss():
    torch.manual_seed(0)
    model = VQGAN(**TINY)
    images = torch.rand(4, 3, 16, 16).round()  # a fixed batch to overfit
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        recon, vq_loss, _ = model(images)
        error = (recon - images).abs().mean()
        loss = error + vq_loss
        opt.zero_grad()
        loss.backward()
        assert model.encoder.conv_in.weight.grad.abs().sum() > 0  # gradients pass the quantizer
        opt.step()
        losses.append(error.item())
    assert min(losses[-5:]) < 0.5 * losses[0]


def test_dead_codes_are_restarted_from_batch_latents():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, restart_threshold=0.5, usage_decay=0.0).train()
    z = torch.randn(2, 4, 3, 3) + 10.0  # far from every code: one or two codes win, the rest die
    dead = 8 - len(vq.codes(z).unique())
    assert dead >= 6
    vq(z)
    codes = vq.codes(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    restarted = [e for e in vq.embedding.weight if (flat == e).all(1).any()]
    assert len(restarted) == dead
    assert len(codes.unique()) > 1  # the restarted codes now take part
    vq.eval()
    before = vq.embedding.weight.clone()
    vq(torch.randn(2, 4, 3, 3) - 10.0)
    assert torch.equal(before, vq.embedding.weight)  # no restarts outside training


def test_native_round_trip(tmp_path):
    torch.manual_seed(0)
    model = VQGAN(**TINY, value_range="unit", norm_eps=1e-5).eval()
    model.save_pretrained(tmp_path)
    again = VQGAN.from_pretrained(tmp_path).eval()
    images = torch.rand(1, 3, 16, 16)
    assert torch.equal(model.decode(model.encode(images)), again.decode(again.encode(images)))
    assert again.config["norm_eps"] == 1e-5 and again.config["value_range"] == "unit"

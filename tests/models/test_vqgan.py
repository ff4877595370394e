"""mmkit VQGAN: shapes and ranges, straight-through training, dead-code restarts, native round trip."""
from __future__ import annotations

import copy

import pytest
import torch

from mmkit.models import VQGAN
from torch import Tensor

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


def _run_two_ranks(monkeypatch, replicas, batches, synchronised: bool) -> None:
    """Runs each replica on its own rank's batches in its own thread, with the quantizer's
    collectives replaced by in-process ones (a barrier to exchange tensors), as gloo/NCCL would."""
    import threading

    import mmkit.stems.vq as vq_module

    local, barrier, slots = threading.local(), threading.Barrier(2), [None, None]

    def exchange(t: Tensor) -> list:
        slots[local.rank] = t.clone()
        barrier.wait()
        both = list(slots)
        barrier.wait()  # nobody overwrites a slot before both have read it
        return both

    def all_reduce_sum(t):
        return t.copy_(sum(exchange(t))) if synchronised else t

    def broadcast_from_rank0(t):
        return t.copy_(exchange(t)[0]) if synchronised else t

    monkeypatch.setattr(vq_module, "_all_reduce_sum", all_reduce_sum)
    monkeypatch.setattr(vq_module, "_broadcast_from_rank0", broadcast_from_rank0)
    monkeypatch.setattr(vq_module, "_world_size", lambda: 2)
    errors = []

    def rank(r: int) -> None:
        local.rank = r
        try:
            for z in batches[r]:
                replicas[r](z)
        except BaseException as e:  # surfaced below, not lost in the thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_dead_code_restarts_keep_data_parallel_codebooks_identical(monkeypatch, ema_decay):
    # Each rank sees different latents; restarts and EMA updates must still leave both replicas
    # with the same codebook (counts summed over ranks, restart vectors broadcast from rank 0).
    torch.manual_seed(0)
    batches = [[torch.randn(2, 4, 3, 3) * 3 + 5 * r for _ in range(4)] for r in range(2)]
    outcome = {}
    for synchronised in (True, False):
        torch.manual_seed(1)
        replicas = [VectorQuantizer(16, 4, restart_threshold=0.5, usage_decay=0.5, ema_decay=ema_decay).train()]
        replicas.append(copy.deepcopy(replicas[0]))
        start = replicas[0].embedding.weight.clone()
        _run_two_ranks(monkeypatch, replicas, batches, synchronised)
        assert not torch.equal(start, replicas[0].embedding.weight)  # codes were restarted / moved
        outcome[synchronised] = torch.equal(replicas[0].embedding.weight, replicas[1].embedding.weight)
        if synchronised:
            assert torch.equal(replicas[0].usage, replicas[1].usage)
    assert outcome == {True: True, False: False}  # and without the collectives they drift apart


def test_ema_codebook_moves_codes_to_their_latents():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, restart_threshold=0.0, ema_decay=0.5).train()
    assert not vq.embedding.weight.requires_grad
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0]]).repeat(8, 1).T.reshape(1, 2, 4, 4)  # two points
    for _ in range(20):
        _, loss, codes = vq(z)
    used = codes.unique()
    assert len(used) == 2
    targets = z.permute(0, 2, 3, 1).reshape(-1, 2).unique(dim=0)
    got = vq.embedding.weight[used].sort(0).values
    assert torch.allclose(got, targets.sort(0).values, atol=1e-3)
    assert loss < 1e-4  # only the commitment term, now ~0


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_quantizer_stays_fp32_under_bf16_autocast(ema_decay):
    """bf16-mixed training (the DALL·E tokenizer recipe): the code search, the VQ loss and the EMA
    statistics run in fp32, so the codes equal fp32's and the EMA update takes bf16 activations."""
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8, restart_threshold=0.0, ema_decay=ema_decay).train()
    reference = copy.deepcopy(vq)
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, loss, codes = vq(z.to(torch.bfloat16))
    want_q, want_loss, want_codes = reference(z.detach().to(torch.bfloat16).float())
    assert z_q.dtype == loss.dtype == torch.float32
    assert torch.equal(codes, want_codes) and torch.allclose(loss, want_loss)
    assert torch.equal(vq.embedding.weight, reference.embedding.weight)  # the same EMA step
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()

"""VQGAN in a model dtype other than fp32 (`.double()`, `.to(torch.bfloat16)`): forward, encode and decode
run, the codes agree with fp32's (the code search runs in fp32, fp64 for a float64 model) and z_q reaches
the decoder in its dtype; images whose sides the downsampling does not divide are refused, not cropped."""
from __future__ import annotations

import copy

import pytest
import torch

from mmkit.models import VQGAN
from mmkit.stems.vq import VectorQuantizer

TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), z_channels=8, codebook_size=16, code_dim=8,
            norm_groups=4)  # tests/models/test_contract.py's


@pytest.fixture(scope="module")
def fp32_model() -> VQGAN:
    torch.manual_seed(0)
    model = VQGAN(**TINY).eval()
    with torch.no_grad():  # a codebook of encoder outputs, as a trained one is, so the codes vary by position
        z = model._latents(torch.rand(4, 3, 16, 16)).permute(0, 2, 3, 1).reshape(-1, TINY["code_dim"])
        model.quantize.embedding.weight.copy_(z[torch.randperm(len(z))[:TINY["codebook_size"]]])
    return model


IMAGES = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype, agree, atol", [(torch.float64, 1.0, 1e-5), (torch.bfloat16, 0.9, 0.05)])
@torch.no_grad()
def test_forward_encode_decode_in_another_dtype_agree_with_fp32(fp32_model, dtype, agree, atol):
    model = copy.deepcopy(fp32_model).to(dtype)
    images = IMAGES.to(dtype)
    want_codes = fp32_model.encode(IMAGES)
    assert len(want_codes.unique()) > 3

    codes = model.encode(images)  # was: "expected m1 and m2 to have the same dtype" in the code search
    assert codes.dtype == torch.int64 and (codes == want_codes).float().mean() >= agree

    recon, loss, forward_codes = model(images)  # was the same error; then fp32 z_q into a bf16 decoder
    assert recon.dtype == dtype and recon.shape == IMAGES.shape and torch.isfinite(loss)
    assert torch.equal(forward_codes, codes)

    out = model.decode(want_codes)
    assert out.dtype == dtype
    assert (out.float() - fp32_model.decode(want_codes)).abs().max() <= atol


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_a_training_step_runs_in_bfloat16(ema_decay):
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8, restart_threshold=0.5, ema_decay=ema_decay).to(torch.bfloat16).train()
    z = torch.randn(2, 8, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    z_q, loss, _ = vq(z)  # the EMA step and the dead-code restarts write the bf16 codebook
    assert z_q.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad.float()).all()


@pytest.mark.parametrize("size", [(15, 15), (16, 15), (17, 16)])
def test_sides_the_downsampling_does_not_divide_are_refused(fp32_model, size):
    images = torch.rand(1, 3, *size)
    for run in (fp32_model, fp32_model.encode):  # was a 14x14 reconstruction of a 15x15 image
        with pytest.raises(ValueError, match=f"multiples of the downsample factor 2, got {size[0]}x{size[1]}"):
            run(images)

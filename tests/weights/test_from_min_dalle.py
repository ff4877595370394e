"""min-dalle → mmkit: VQGAN parity with min-dalle's `VQGanDetokenizer` (random init, offline).

Importing min_dalle calls `torch.set_grad_enabled(False)` for the whole process; the fixture
restores the previous state so later tests still train.
"""
from __future__ import annotations

import pytest
import torch

from mmkit.models import VQGAN
from mmkit.weights import WeightsError

ATOL = 1e-4


@pytest.fixture(scope="module")
def min_dalle_modules():
    grad = torch.is_grad_enabled()
    try:
        from min_dalle.models.vqgan_detokenizer import VQGanDetokenizer
    finally:
        torch.set_grad_enabled(grad)
    return VQGanDetokenizer


@pytest.fixture(scope="module")
def detokenizer(min_dalle_modules, tmp_path_factory):
    torch.manual_seed(0)
    ref = min_dalle_modules().eval()
    # The decoder's default init saturates min-dalle's [0, 1] clip; a smaller output conv keeps
    # pixels inside it, so the comparison measures the network, not the clamp.
    ref.decoder.conv_out.weight.data.mul_(0.05)
    ref.decoder.conv_out.bias.data.fill_(0.5)
    root = tmp_path_factory.mktemp("min_dalle")
    (root / "vqgan").mkdir()
    torch.save(ref.state_dict(), root / "vqgan" / "detoker.pt")
    return ref, root, VQGAN.from_min_dalle(root)


def test_grad_mode_restored(min_dalle_modules):
    assert torch.is_grad_enabled()


def test_config_from_tensors(detokenizer):
    _, _, model = detokenizer
    assert model.config["ch_mult"] == [1, 1, 2, 2, 4] and model.config["attn_levels"] == [4]
    assert model.config["norm_eps"] == 1e-5 and model.codebook_size == 16384 and not model.has_encoder
    with pytest.raises(ValueError, match="no encoder"):
        model.encode(torch.rand(1, 3, 16, 16))


def test_parity_small_grid(detokenizer):
    # min-dalle's forward fixes a 16×16 grid (256×256 pixels); its decoder itself is fully
    # convolutional, so a 2×2 grid through the same submodules checks every layer cheaply.
    ref, root, _ = detokenizer
    model = VQGAN.from_min_dalle(root / "vqgan" / "detoker.pt")  # the file itself, not the root
    codes = torch.randint(0, 16384, (2, 2, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = ref.embedding(codes).permute(0, 3, 1, 2)
        expected = ref.decoder(ref.post_quant_conv(z)).clip(0, 1)
        out = model.decode(codes)
    assert 0.05 < expected.mean() < 0.95
    assert (out - expected).abs().max().item() <= ATOL


@pytest.mark.slow
def test_parity_full_forward(detokenizer):
    ref, _, model = detokenizer
    codes = torch.randint(0, 16384, (1, 16, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(False, codes.view(1, 256)) / 255  # (256, 256, 3)
        out = model.decode(codes)[0].permute(1, 2, 0)
    assert (out - expected).abs().max().item() <= ATOL


def test_not_a_detokenizer(tmp_path):
    torch.save({"something.weight": torch.zeros(2)}, tmp_path / "detoker.pt")
    with pytest.raises(WeightsError, match="not a min-dalle"):
        VQGAN.from_min_dalle(tmp_path / "detoker.pt")

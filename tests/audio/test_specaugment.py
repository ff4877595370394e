"""SpecAugment: identity in eval; in training, whole-band frequency and time masks within bounds."""
from __future__ import annotations

import pytest
import torch

from mmkit.audio import SpecAugment


@pytest.fixture
def spec() -> torch.Tensor:
    return torch.randn(4, 80, 300, generator=torch.Generator().manual_seed(0)) + 10.0  # never equal to 0.0


def test_eval_mode_is_identity(spec):
    aug = SpecAugment().eval()
    assert aug(spec) is spec


def test_masks_are_whole_bands_within_bounds(spec):
    aug = SpecAugment(freq_mask_param=10, num_freq_masks=2, time_mask_param=30, num_time_masks=3).train()
    out = aug(spec, generator=torch.Generator().manual_seed(1))
    masked = out == 0.0
    assert masked.any()
    kept = ~masked
    torch.testing.assert_close(out[kept], spec[kept], rtol=0, atol=0)
    for b in range(spec.shape[0]):
        rows = masked[b].all(dim=1)  # frequency bins masked at every frame
        cols = masked[b].all(dim=0)  # frames masked in every bin
        # every masked cell lies in a fully masked row or column: masks are bands, not speckle
        assert torch.equal(masked[b], rows[:, None] | cols[None, :])
        assert rows.sum() <= 2 * 10 and cols.sum() <= 3 * 30


def test_masks_vary_per_example_and_are_reproducible(spec):
    aug = SpecAugment(freq_mask_param=20, time_mask_param=50).train()
    a = aug(spec, generator=torch.Generator().manual_seed(3))
    b = aug(spec, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    m = a == 0.0
    assert not all(torch.equal(m[0], m[i]) for i in range(1, 4))


def test_time_ratio_caps_mask_width_and_2d_input():
    spec = torch.ones(80, 50)
    aug = SpecAugment(freq_mask_param=0, time_mask_param=100, num_time_masks=1, max_time_ratio=0.1,
                      mask_value=-1.0).train()
    for seed in range(20):
        out = aug(spec, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (80, 50)
        assert (out == -1.0).all(dim=0).sum() <= 5  # 10% of 50 frames


def test_no_masks_and_invalid_arguments(spec):
    aug = SpecAugment(freq_mask_param=0, time_mask_param=0).train()
    assert torch.equal(aug(spec), spec)
    with pytest.raises(ValueError):
        SpecAugment(max_time_ratio=1.5)
    with pytest.raises(ValueError):
        SpecAugment(num_time_masks=-1)

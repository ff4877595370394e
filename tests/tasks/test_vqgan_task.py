"""VQGANTask pieces that need no training: codebook usage/perplexity and the foreground weight."""
from __future__ import annotations

import pytest
import torch

from mmkit.models import VQGAN
from mmkit.tasks.vqgan_task import VQGANTask, codebook_usage


def test_codebook_usage_metric():
    assert codebook_usage(torch.tensor([5, 5, 0, 0])) == (0.5, pytest.approx(2.0))
    assert codebook_usage(torch.tensor([1, 1, 1, 1])) == (1.0, pytest.approx(4.0))
    assert codebook_usage(torch.zeros(3, dtype=torch.long)) == (0.0, 0.0)


def test_foreground_weight_counts_the_object_more():
    torch.manual_seed(0)
    model = VQGAN(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=8, code_dim=8,
                  norm_groups=4).eval()
    images = torch.full((2, 3, 16, 16), 0.2)
    images[:, 0, 4:8, 4:8] = 0.9  # a red square on grey: 1/16 of the pixels
    plain, l1_plain, _ = VQGANTask(model)._step(images)
    weighted, l1_weighted, _ = VQGANTask(model, foreground_weight=5.0)._step(images)
    assert torch.equal(l1_plain, l1_weighted)  # the logged error stays plain L1
    assert weighted > plain


def test_edge_weight_counts_the_outline_more():
    torch.manual_seed(0)
    model = VQGAN(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=8, code_dim=8,
                  norm_groups=4).eval()
    images = torch.full((2, 3, 16, 16), 0.2)
    images[:, 0, 4:10, 4:10] = 0.9
    fg, _, _ = VQGANTask(model, foreground_weight=5.0)._step(images)
    edged, _, _ = VQGANTask(model, foreground_weight=5.0, edge_weight=5.0)._step(images)
    assert edged > fg
    # Only the outline band counts: an error confined to the square's interior weighs the same with it.
    recon = images.clone()
    recon[:, :, 6:8, 6:8] += 0.5  # inside the square, two pixels from its edge
    model.forward = lambda x: (recon, torch.tensor(0.0), None)  # a fixed reconstruction, no VQ loss
    task_fg, task_edge = VQGANTask(model, foreground_weight=5.0), VQGANTask(model, foreground_weight=5.0, edge_weight=5.0)
    assert torch.equal(task_fg._step(images)[0], task_edge._step(images)[0])
    recon[:, :, 4, 4:10] += 0.5  # now on the outline too
    assert task_edge._step(images)[0] > task_fg._step(images)[0]


def test_a_checkpoint_keeps_the_codebooks_training_state():
    """The EMA codebook's sums and counts and the usage counts are buffers outside the state dict (exports and
    the reference formats have none): a Lightning checkpoint keeps them, so a resumed run goes on from them (it
    restarted from the random initial ones, and its first step moved the trained codebook halfway back)."""
    def task() -> VQGANTask:
        return VQGANTask(VQGAN(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=8,
                               code_dim=8, norm_groups=4, ema_decay=0.99))

    trained, resumed = task(), task()
    quantize = trained.model.quantize
    for name in ("usage", "ema_count", "ema_sum"):
        getattr(quantize, name).uniform_(0.5, 2.0)  # as training leaves them
    checkpoint = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(checkpoint)
    assert "model.quantize.ema_sum" not in checkpoint["state_dict"]
    resumed.on_load_checkpoint(checkpoint)
    for name in ("usage", "ema_count", "ema_sum"):
        assert torch.equal(getattr(resumed.model.quantize, name), getattr(quantize, name)), name

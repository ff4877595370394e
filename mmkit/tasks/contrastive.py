"""Symmetric InfoNCE for CLIP (Radford et al., 2021) with features gathered across ranks *with*
gradients and each rank scoring only its local rows against everything gathered: open_clip's
`ClipLoss(local_loss=True, gather_with_grad=True)`. Under DDP's gradient averaging this gives
exactly the gradient of one process over the combined batch (tests/test_clip_ddp.py).

Why it is exact: rank r's loss L_r is the mean over its B_r rows, and the gather's backward sums
the gradients that every rank's loss sends to rank r's features, so after backward rank r holds
d(sum_s L_s)/d(its own parameters' use). DDP then averages over the W ranks, (1/W) d(sum_s L_s),
which is the gradient of the mean loss over all W*B rows when the B_r are equal. The learned
temperature enters every L_r directly, and DDP's average of dL_r/dscale is again that gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks (an all-reduce) and keeps
    this rank's slice. torch.distributed.nn's all_gather does the same with all-to-all or
    reduce-scatter, which not every backend implements; all_reduce works everywhere."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # (B_max, D) -> (W, B_max, D)
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # (W, B_max, D) -> (B_max, D)
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def batch_sizes_across_ranks(local_size: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's batch size, in rank order ([local_size] outside distributed training).

    A collective: under DDP every rank must call it, including one whose batch is empty.
    """
    if not _distributed():
        return [local_size]
    sizes = torch.tensor([local_size], device=device)
    out = [torch.empty_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(out, sizes)
    return [int(s) for s in out]


def gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate every rank's rows, in rank order, keeping the autograd graph to all of them.

    Args:
        x: (B_local, D) this rank's features.
        sizes: every rank's B (from `batch_sizes_across_ranks`); None asks for them. Unequal sizes
            (a batch that lost unreadable images) are padded for the collective and cut back.

    Returns:
        (sum of B, D); `x` itself outside distributed training.
    """
    if not _distributed():
        return x
    sizes = sizes or batch_sizes_across_ranks(x.shape[0], x.device)
    pad = max(sizes) - x.shape[0]
    padded = F.pad(x, (0, 0, 0, pad)) if pad else x  # (B_max, D)
    gathered = _AllGatherWithGrad.apply(padded)  # (W, B_max, D)
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE of this rank's pairs against the pairs of all ranks (local loss).

    Args:
        image_features: (B, D) L2-normalised image features of this rank's pairs.
        text_features: (B, D) L2-normalised text features, row i the caption of image i.
        logit_scale: 0-d inverse temperature, already exponentiated (CLIP's forward returns it so).

    Returns:
        0-d loss: (CE(image -> all texts) + CE(text -> all images)) / 2, averaged over the B rows.
    """
    sizes = batch_sizes_across_ranks(image_features.shape[0], image_features.device)
    all_images = gather_with_grad(image_features, sizes)  # (N, D), N = sum of sizes
    all_texts = gather_with_grad(text_features, sizes)
    logits_per_image = logit_scale * image_features @ all_texts.T  # (B, N)
    logits_per_text = logit_scale * text_features @ all_images.T  # (B, N)
    rank = dist.get_rank() if _distributed() else 0
    # This rank's pair i sits at row sum(sizes[:rank]) + i of the gathered features.
    labels = torch.arange(image_features.shape[0], device=image_features.device) + sum(sizes[:rank])
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2

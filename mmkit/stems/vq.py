"""VQ image tokenizer parts in taming-transformers' layout (Esser et al., "Taming Transformers for
High-Resolution Image Synthesis", 2021; `taming/modules/diffusionmodules/model.py` and
`taming/modules/vqvae/quantize.py`): GroupNorm + swish ResNet blocks, single-head spatial attention,
strided/nearest resampling, and a codebook trained with straight-through gradients (van den Oord
et al., "Neural Discrete Representation Learning", 2017). Parameter names are taming's, so its
checkpoints (and min-dalle's, which reuse them) map 1:1.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.core.execution import run_block

GroupNormFactory = Callable[[int], nn.Module]


def group_norm(eps: float, groups: int = 32) -> GroupNormFactory:
    """GroupNorm factory; the eps is per source (taming 1e-6, min-dalle's port 1e-5)."""
    return partial(nn.GroupNorm, groups, eps=eps, affine=True)


class ResnetBlock(nn.Module):
    """norm → swish → conv3 → norm → swish → dropout → conv3, plus a 1×1 shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, norm: GroupNormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H×W positions, with 1×1-conv projections (taming's
    names q/k/v/proj_out); SDPA does the softmax(q kᵀ / sqrt(C)) v."""

    def __init__(self, ch: int, norm: GroupNormFactory) -> None:
        super().__init__()
        self.norm = norm(ch)
        self.q, self.k, self.v = nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (conv(y).flatten(2).transpose(1, 2).unsqueeze(1) for conv in (self.q, self.k, self.v))  # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3×3 conv with taming's asymmetric (right/bottom) zero padding."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResNet blocks, each followed by attention on `attn` levels."""

    def __init__(self, chans: Sequence[tuple[int, int]], attn: bool, norm: GroupNormFactory, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, norm, dropout) for i, o in chans)
        self.attn = nn.ModuleList(AttnBlock(o, norm) for _, o in chans) if attn else nn.ModuleList()

    def forward(self, x: Tensor) -> Tensor:
        for i, blk in enumerate(self.block):
            x = blk(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class _Mid(nn.Module):
    def __init__(self, ch: int, norm: GroupNormFactory, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, norm, dropout)
        self.attn_1 = AttnBlock(ch, norm)
        self.block_2 = ResnetBlock(ch, ch, norm, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class ConvEncoder(nn.Module):
    """Pixels (B, in_ch, H, W) → latents (B, z_channels, H/2^(L-1), W/2^(L-1)), L = len(ch_mult)."""

    grad_checkpointing = False  # recompute each level and the middle in the backward pass (`core.execution`)

    def __init__(self, in_ch: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Sequence[int],
                 z_channels: int, norm: GroupNormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, ch, 3, padding=1)
        widths = [ch * m for m in (1, *ch_mult)]
        self.down = nn.ModuleList()
        for lvl in range(len(ch_mult)):
            chans = [(widths[lvl] if j == 0 else widths[lvl + 1], widths[lvl + 1]) for j in range(num_res_blocks)]
            level = _Level(chans, lvl in attn_levels, norm, dropout)
            if lvl != len(ch_mult) - 1:
                level.downsample = Downsample(widths[lvl + 1])
            self.down.append(level)
        self.mid = _Mid(widths[-1], norm, dropout)
        self.norm_out = norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], z_channels, 3, padding=1)

    def compile_stack(self, **options: Any) -> None:
        """`torch.compile(**options)` this module in place (`core.execution`)."""
        self.compile(**options)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = run_block(self.grad_checkpointing, level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = run_block(self.grad_checkpointing, self.mid, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvDecoder(nn.Module):
    """Latents (B, z_channels, h, w) → pixels (B, out_ch, h·2^(L-1), w·2^(L-1)). `up` is indexed
    by level like taming (up[0] is the full-resolution level) and run from the coarsest."""

    grad_checkpointing = False  # as ConvEncoder's

    def __init__(self, out_ch: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, attn_levels: Sequence[int],
                 z_channels: int, norm: GroupNormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        top = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, top, 3, padding=1)
        self.mid = _Mid(top, norm, dropout)
        levels: list[nn.Module] = []
        block_in = top
        for lvl in reversed(range(len(ch_mult))):
            out = ch * ch_mult[lvl]
            chans = [(block_in if j == 0 else out, out) for j in range(num_res_blocks + 1)]
            level = _Level(chans, lvl in attn_levels, norm, dropout)
            if lvl != 0:
                level.upsample = Upsample(out)
            levels.insert(0, level)
            block_in = out
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def compile_stack(self, **options: Any) -> None:
        """`torch.compile(**options)` this module in place (`core.execution`)."""
        self.compile(**options)

    def forward(self, z: Tensor) -> Tensor:
        h = run_block(self.grad_checkpointing, self.mid, self.conv_in(z))
        for level in reversed(self.up):
            h = run_block(self.grad_checkpointing, level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over data-parallel ranks in place (identity when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_available() and \
        torch.distributed.is_initialized() else 1


def _broadcast_from_rank0(t: Tensor) -> Tensor:
    """Rank 0's tensor on every rank, in place (identity when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(t, src=0)
    return t


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantizer with straight-through gradients, the VQ-VAE codebook +
    commitment loss, and dead-code restarts.

    The loss is `||sg(z) - e||² + beta · ||z - sg(e)||²` (VQ-VAE eq. 3; taming's default
    `legacy=True` swaps beta onto the codebook term, a bug it keeps for old checkpoints; it only
    matters for training, and we train with the paper's form). With `ema_decay` > 0 the codebook is
    instead the running mean of the latents assigned to each code (VQ-VAE appendix A.1, VQ-VAE-2):
    no codebook term, only the commitment term, and the codes move at the pace of the encoder.
    Dead codes: in training, a code whose running usage (EMA over steps) falls below
    `restart_threshold` is re-seeded with a random encoder output from the current batch (Dhariwal
    et al., Jukebox, 2020 §3.2), so the codebook does not collapse onto a few entries.

    Data-parallel training keeps the replicas' codebooks identical: usage counts (and the EMA sums)
    are summed over ranks, so every rank finds the same dead codes, and the restart vectors are
    rank 0's picks, broadcast.

    Args:
        codebook_size: number of codes.
        code_dim: dimension of each code.
        beta: commitment weight.
        restart_threshold: expected uses per step below which a code is dead (0 disables restarts).
        usage_decay: EMA decay of the per-code usage counts.
        ema_decay: EMA decay of the codebook itself (0 = learned by gradient, taming's way).
    """

    training_buffers = ("usage", "ema_count", "ema_sum")  # training state outside the state dict

    def __init__(self, codebook_size: int, code_dim: int, beta: float = 0.25, restart_threshold: float = 0.03,
                 usage_decay: float = 0.99, ema_decay: float = 0.0) -> None:
        super().__init__()
        self.codebook_size, self.beta = codebook_size, beta
        self.restart_threshold, self.usage_decay, self.ema_decay = restart_threshold, usage_decay, ema_decay
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        # Not persistent: taming/min-dalle checkpoints have no such buffers, and they are training state, kept in
        # Lightning checkpoints for a resume (`mmkit.tasks.model_task.training_buffers`).
        self.register_buffer("usage", torch.ones(codebook_size), persistent=False)
        if ema_decay > 0:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(codebook_size), persistent=False)
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone(), persistent=False)

    def _search_dtype(self, z: Tensor) -> torch.dtype:
        """fp32, or fp64 for a float64 model or input: the precision of the code search and the VQ loss."""
        return torch.promote_types(torch.promote_types(z.dtype, self.embedding.weight.dtype), torch.float32)

    def codes(self, z: Tensor) -> Tensor:
        """Nearest codes of latents z (B, C, h, w) → (B, h, w) int64, searched in fp32 (fp64 for a float64
        model) whatever the autocast or the model's dtype (bf16's 8-bit mantissa would turn near ties into
        wrong codes)."""
        dtype = self._search_dtype(z)
        with torch.autocast(z.device.type, enabled=False):
            flat = z.to(dtype).permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B·h·w, C)
            e = self.embedding.weight.to(dtype)
            # Same expansion as taming, so that near-ties resolve the same way.
            d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        return d.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) → quantized latents (B, C, h, w)."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """
        Returns:
            z_q (B, C, h, w) with straight-through gradients to z, the VQ loss (scalar), codes (B, h, w).
            z_q has the codebook's dtype, the model's (what `post_quant_conv` takes after `.half()`); the
            search, the loss and the EMA statistics run in fp32 (fp64 for a float64 model), so under
            bf16-mixed autocast (an fp32 model) all stay fp32.
        """
        z = z.to(self._search_dtype(z))
        codes = self.codes(z)
        z_q = self.lookup(codes).to(z.dtype)
        loss = self.beta * F.mse_loss(z, z_q.detach())
        if self.ema_decay <= 0:
            loss = loss + F.mse_loss(z_q, z.detach())
        if self.training:
            self._update(z.detach(), codes)
        return (z + (z_q - z).detach()).to(self.embedding.weight.dtype), loss, codes

    @torch.no_grad()
    def _update(self, z: Tensor, codes: Tensor) -> None:
        """EMA codebook step (if any), then dead-code restarts; identical on every data-parallel rank."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).to(self.embedding.weight.dtype)  # (N, C)
        counts = torch.bincount(codes.flatten(), minlength=self.codebook_size).to(flat.dtype)
        if self.ema_decay > 0:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, codes.flatten(), flat)
            stats = _all_reduce_sum(torch.cat([counts[:, None], sums], 1))  # one collective for both
            counts = stats[:, 0]
            self.ema_count.lerp_(counts, 1 - self.ema_decay)
            self.ema_sum.lerp_(stats[:, 1:], 1 - self.ema_decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n  # Laplace smoothing
            self.embedding.weight.copy_(self.ema_sum / smoothed[:, None])
        else:
            counts = _all_reduce_sum(counts)
        if self.restart_threshold > 0:
            self._restart_dead(flat, counts)

    def _restart_dead(self, flat: Tensor, counts: Tensor) -> None:
        # Usage per rank and step, so the threshold means the same at any world size.
        self.usage.mul_(self.usage_decay).add_(counts.to(self.usage) / _world_size(), alpha=1 - self.usage_decay)
        dead = (self.usage < self.restart_threshold).nonzero().flatten()  # the same on every rank
        if dead.numel() == 0:
            return
        pick = flat[torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)]
        pick = _broadcast_from_rank0(pick.contiguous())
        self.embedding.weight.data[dead] = pick
        self.usage[dead] = 1.0  # a grace period before a restarted code can be judged dead again
        if self.ema_decay > 0:
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = pick


class ImageTokenEmbedding(nn.Module):
    """Image codes → (B, t, dim): a code embedding plus row and column position embeddings over the
    h×w grid (DALL·E's axial image positions; DALLE-pytorch `image_pos_emb`), offset-aware so that
    a KV-cached decoder can feed one code at a time in raster order."""

    def __init__(self, codebook_size: int, grid: int, dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.embed = nn.Embedding(codebook_size, dim)
        self.row = nn.Parameter(nn.init.normal_(torch.empty(grid, dim), std=0.02))
        self.col = nn.Parameter(nn.init.normal_(torch.empty(grid, dim), std=0.02))

    def forward(self, codes: Tensor, offset: int = 0) -> Tensor:
        """codes: (B, t) ids in [0, codebook_size) at raster positions offset .. offset + t - 1."""
        last = offset + codes.shape[1] - 1
        if codes.shape[1] and last >= self.grid * self.grid:
            raise ValueError(f"image position {last} is past the {self.grid}x{self.grid} grid")
        pos = torch.arange(offset, offset + codes.shape[1], device=codes.device)
        return self.embed(codes) + self.row[pos // self.grid] + self.col[pos % self.grid]  # (B, t, dim)

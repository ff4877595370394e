"""VQGAN image tokenizer (Esser et al., "Taming Transformers for High-Resolution Image Synthesis",
2021): a convolutional encoder, a codebook and a convolutional decoder, turning an image into a
grid of discrete codes for a DALL·E-style generator and back. Layout and parameter names follow
taming-transformers' `VQModel`; imports: `from_taming` (encoder + decoder + quantizer) and
`from_min_dalle` (the decoder half of dalle-mini's f16/16384 VQGAN).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mmkit.stems.vq import ConvDecoder, ConvEncoder, VectorQuantizer, group_norm
from mmkit.weights.native import (PretrainedMixin, WeightsError, load_state_dict_strict, read_state_dict,
                                  torch_load_weights_only)

VALUE_RANGES = ("signed", "unit")


class VQGAN(PretrainedMixin, nn.Module):
    """Images in [0, 1] ⇄ code grids. Pixels are mapped to the range the network works in
    (`value_range`: "signed" = [-1, 1], taming; "unit" = [0, 1], dalle-mini/min-dalle) on the way in
    and back to [0, 1] on the way out.

    Args:
        in_channels: image channels.
        ch, ch_mult, num_res_blocks: base width, width multiplier per resolution level (the image
            shrinks by 2 between levels, so the grid is H / 2^(len(ch_mult)-1)), ResNet blocks per level.
        attn_levels: levels (0 = full resolution) whose ResNet blocks are followed by attention.
        z_channels: encoder output / decoder input channels.
        codebook_size, code_dim: the codebook (dalle-mini: 16384 × 256).
        norm_eps: GroupNorm epsilon (taming 1e-6; min-dalle 1e-5).
        norm_groups: GroupNorm groups (32 in both; fewer lets a CPU recipe use narrow layers).
        value_range: "signed" or "unit", above.
        has_encoder: False for a decoder-only import (min-dalle ships only the detokenizer).
        beta: commitment-loss weight.
        ema_decay: > 0 trains the codebook as an EMA of its assigned latents (VQ-VAE-2) instead of by gradient.
        dropout: ResNet-block dropout (training only).
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (4,),
        z_channels: int = 256,
        codebook_size: int = 16384,
        code_dim: int = 256,
        norm_eps: float = 1e-6,
        norm_groups: int = 32,
        value_range: str = "signed",
        has_encoder: bool = True,
        beta: float = 0.25,
        dropout: float = 0.0,
        ema_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range must be one of {VALUE_RANGES}, got {value_range!r}")
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.config.update(ch_mult=list(ch_mult), attn_levels=list(attn_levels))
        self.value_range, self.codebook_size = value_range, codebook_size
        self.downsample_factor = 2 ** (len(ch_mult) - 1)
        norm = group_norm(norm_eps, norm_groups)
        if has_encoder:
            self.encoder = ConvEncoder(in_channels, ch, ch_mult, num_res_blocks, attn_levels, z_channels, norm, dropout)
            self.quant_conv = nn.Conv2d(z_channels, code_dim, 1)
        self.quantize = VectorQuantizer(codebook_size, code_dim, beta, ema_decay=ema_decay)
        self.post_quant_conv = nn.Conv2d(code_dim, z_channels, 1)
        self.decoder = ConvDecoder(in_channels, ch, ch_mult, num_res_blocks, attn_levels, z_channels, norm, dropout)

    @property
    def has_encoder(self) -> bool:
        return hasattr(self, "encoder")

    def _to_net(self, images: Tensor) -> Tensor:
        return images * 2 - 1 if self.value_range == "signed" else images

    def _from_net(self, x: Tensor) -> Tensor:
        return (x + 1) / 2 if self.value_range == "signed" else x

    def _latents(self, images: Tensor) -> Tensor:
        if not self.has_encoder:
            raise ValueError("this VQGAN has no encoder (a decoder-only import such as min-dalle's detokenizer)")
        f = self.downsample_factor
        if images.shape[-2] % f or images.shape[-1] % f:  # the strided convs would drop the remainder silently
            raise ValueError(f"image height and width must be multiples of the downsample factor {f}, "
                             f"got {images.shape[-2]}x{images.shape[-1]}")
        return self.quant_conv(self.encoder(self._to_net(images)))  # (B, code_dim, h, w)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass.

        Args:
            images: (B, C, H, W) in [0, 1]; H and W divisible by `downsample_factor`.

        Returns:
            reconstruction (B, C, H, W) in [0, 1] units (not clamped, so the loss has gradients
            everywhere), the VQ loss (scalar), codes (B, h, w).
        """
        z_q, vq_loss, codes = self.quantize(self._latents(images))
        recon = self._from_net(self.decoder(self.post_quant_conv(z_q)))
        return recon, vq_loss, codes

    def encode(self, images: Tensor) -> Tensor:
        """(B, C, H, W) in [0, 1] → codes (B, H/f, W/f) int64, f = `downsample_factor`."""
        return self.quantize.codes(self._latents(images))

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) → images (B, C, h·f, w·f) in [0, 1]."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, h, w), got shape {tuple(codes.shape)}")
        if not torch.compiler.is_compiling() and codes.numel() and (
                int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):  # eager only: a graph cannot read
            raise ValueError(f"codes must be in [0, {self.codebook_size})")
        x = self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))
        return self._from_net(x).clamp(0.0, 1.0)

    @classmethod
    def from_min_dalle(cls, path: str | Path) -> "VQGAN":
        """min-dalle's `detoker.pt` (or a min-dalle root holding `vqgan/detoker.pt`): the decoder
        half of dalle-mini's VQGAN, read with `torch.load(weights_only=True)`."""
        from mmkit.weights.from_min_dalle import vqgan_from_min_dalle

        path = Path(path).expanduser()
        file = path / "vqgan" / "detoker.pt" if path.is_dir() else path
        config, state = vqgan_from_min_dalle(read_state_dict(file), str(file))
        return _build(cls, config, state, str(file))

    @classmethod
    def from_taming(cls, config_yaml: str | Path, ckpt: str | Path) -> "VQGAN":
        """A taming-transformers VQModel: its YAML config and its `.ckpt` (Lightning checkpoint with
        a `state_dict`, or a bare state dict), read with `torch.load(weights_only=True)`."""
        import yaml

        from mmkit.weights.from_taming import TAMING_VQGAN_KEYS, vqgan_config_from_taming
        from mmkit.weights.keymap import remap

        config_yaml = Path(config_yaml).expanduser()
        try:
            doc = yaml.safe_load(config_yaml.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise WeightsError(f"{config_yaml}: not a readable YAML config ({e})") from None
        # the config is judged before the checkpoint (often gigabytes) is read: a wrong YAML is one line at once
        config = vqgan_config_from_taming(doc, str(config_yaml))
        cls.check_config(config, f"{config_yaml}: imported config")
        state = remap(_read_ckpt(Path(ckpt).expanduser()), TAMING_VQGAN_KEYS, str(ckpt))
        return _build(cls, config, state, str(ckpt))


def _read_ckpt(path: Path) -> dict[str, Tensor]:
    obj = torch_load_weights_only(path)  # the shared loader: one-line refusal of pickled code
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def _build(cls: type[VQGAN], config: dict[str, Any], state: dict[str, Tensor], source: str) -> VQGAN:
    cls.check_config(config, f"{source}: imported config")  # as `from_converted` does for the other importers
    model = cls(**config)
    load_state_dict_strict(model, state, source)
    return model.eval()

"""A tiny random-init text-to-image export (DALLE + VQGAN + word tokenizer) for CLI/demo/bench tests."""
from __future__ import annotations

from pathlib import Path

import torch

from mmkit.data.dalle_shapes import caption_vocabulary
from mmkit.data.dalle_text import WordTokenizer
from mmkit.inference.text_to_image import TextToImage
from mmkit.models import DALLE, VQGAN


def tiny_text_to_image(seed: int = 0) -> TextToImage:
    torch.manual_seed(seed)
    vqgan = VQGAN(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=16, code_dim=8,
                  norm_groups=4)
    model = DALLE(text_vocab_size=32, text_len=8, codebook_size=16, image_grid=4, dim=32, depth=1, num_heads=2)
    return TextToImage(model, vqgan, WordTokenizer(caption_vocabulary(), 8))


def write_tiny_export(directory: Path) -> Path:
    return tiny_text_to_image().save_pretrained(directory)

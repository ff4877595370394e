"""DALL·E mini / Mega generator (Dayma et al., 2021; the encoder-decoder layout min-dalle ports to
PyTorch): a BART-style text encoder and an image-token decoder with cross-attention, both stacks
of `SandwichBlock`s (extra sub-layer norms, GLU feed-forward, bias-free projections), an embedding
LayerNorm before each stack and a final one after. Images come from dalle-mini's VQGAN
(`VQGAN.from_min_dalle`). `DalleBart.from_min_dalle(root)` reads min-dalle's download layout.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mmkit.core import Decoder, Encoder, GenerationOptions, KVCache, LearnedPositions, generate
from mmkit.core.blocks import layer_norm
from mmkit.core.filters import guided
from mmkit.core.heads import projection_logits
from mmkit.core.sandwich import SandwichBlock
from mmkit.weights.native import PretrainedMixin, WeightsError, config_errors, load_state_dict_strict, read_state_dict

TEXT_PAD_ID = 1  # BART's <pad>: masked out of attention


class DalleBart(PretrainedMixin, nn.Module):
    """`encode(text, mask) -> memory`; `forward(tokens, context, cache, context_mask) -> logits`.

    The decoder starts from `bos_id` and predicts `image_len` codes; logits cover
    `codebook_size + extra_tokens` ids (min-dalle: 16384 + 1, Mega 16415 + 1) but only the first
    `codebook_size` are image codes, so the others are masked to -inf.

    Args:
        text_vocab_size, text_len: BART vocabulary and text positions (mini: 50264, 64).
        codebook_size: image codes (16384).
        image_vocab_size: decoder embedding rows (codebook_size + 1 in mini; 16416 in Mega).
        image_len: image positions (256 = 16×16).
        dim, depth, num_heads, glu_dim: widths (mini: 1024, 12, 16, 2730; Mega: 2048, 24, 32, 4096).
        norm_eps: LayerNorm epsilon (torch's default in min-dalle).
        bos_id: the decoder's start token (min-dalle: 2**14 - 1).
    """

    beams_share_context = True  # beams and best-of-N rows read one context row (`core.decoding.shares_context`)

    def __init__(self, text_vocab_size: int = 50264, text_len: int = 64, codebook_size: int = 16384,
                 image_vocab_size: int = 16385, image_len: int = 256, dim: int = 1024, depth: int = 12,
                 num_heads: int = 16, glu_dim: int = 2730, norm_eps: float = 1e-5, bos_id: int = 2**14 - 1) -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.codebook_size, self.image_len, self.bos_id = codebook_size, image_len, bos_id
        norm = layer_norm(norm_eps)
        stack = partial(dict, depth=depth, num_heads=num_heads, mlp_ratio=glu_dim / dim, qkv_bias=False,
                        block=SandwichBlock, norm_layer=norm, act_layer=nn.GELU, final_norm=True)
        self.text_embed = nn.Embedding(text_vocab_size, dim)
        self.text_pos = LearnedPositions(text_len, dim)
        self.text_norm = norm(dim)
        self.encoder = Encoder(dim, **stack())
        self.image_embed = nn.Embedding(image_vocab_size, dim)
        self.image_pos = LearnedPositions(image_len, dim)
        self.image_norm = norm(dim)
        self.decoder = Decoder(dim, cross_attention=True, **stack())
        self.head = nn.Linear(dim, image_vocab_size, bias=False)

    def encode(self, text: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, S) BART ids → (B, S, dim) memory; `mask` (B, S) True = real token (default: not pad)."""
        mask = text != TEXT_PAD_ID if mask is None else mask
        x = self.text_norm(self.text_embed(text) + self.text_pos(text.shape[1]))
        return self.encoder(x, mask=mask[:, None, None, :])

    def forward(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """tokens (B, T) after `bos_id` (with a cache, only the new ones); context (B, S, dim)
        memory; context_mask (B, S) True = real text token. Returns (B, T, image_vocab_size)."""
        offset = cache.length if cache is not None else 0
        x = self.image_norm(self.image_embed(tokens) + self.image_pos(tokens.shape[1], offset))
        mask = None if context_mask is None else context_mask[:, None, None, :]
        # tied_logits is F.linear(x, head.weight), computed as (W @ xᵀ)ᵀ for the few rows of a decoding
        # step: the 16,385-row head dominates a step, and this order runs it 2-3x faster on a CPU BLAS. In fp32
        # under a bf16 autocast, as every decoder's vocabulary projection; an int8 head (--quantize) is called.
        h = self.decoder(x, context=context, context_mask=mask, cache=cache)
        head = self.head
        if isinstance(head, nn.Linear):  # a subclass (fp32 decoding on packed weights) computes it itself
            logits = projection_logits(h, head.weight, None if type(head) is nn.Linear else head)
        else:
            logits = head(h)  # int8: fp32 only
        logits[..., self.codebook_size :] = float("-inf")  # BOS and Mega's spare rows are never sampled
        return logits

    def encode_guided(self, text: Tensor, null_text: Tensor) -> tuple[Tensor, Tensor]:
        """(memory, mask) of the 2B rows [text ; null_text] that super-conditioning decodes against."""
        both = torch.cat([text, null_text])
        mask = both != TEXT_PAD_ID
        return self.encode(both, mask), mask

    def guided_logits(self, tokens: Tensor, memory: Tensor, mask: Tensor, guidance: float,
                      cache: KVCache | None = None) -> Tensor:
        """Super-conditioned logits (B, T, image_vocab_size) of `tokens` (B, T) against `encode_guided`'s 2B rows
        (`core.filters.guided`: in fp32, -inf kept)."""
        return guided(self(torch.cat([tokens, tokens]), memory, cache, mask), guidance)

    @torch.no_grad()
    def generate_codes(self, text: Tensor, options: GenerationOptions, guidance: float = 1.0,
                       null_text: Tensor | None = None, use_cache: bool = True,
                       on_step: Callable[[Tensor], None] | None = None) -> Tensor:
        """Sample (B, image_len) codes. With guidance ≠ 1 each row also runs with `null_text`
        (min-dalle's: the first and last token of the prompt, then padding) in the same batch and
        logits become uncond + guidance · (cond − uncond), dalle-mini's super-conditioning.
        `on_step` gets the (B, 1 + n) tokens after each step (`bos_id` first)."""
        B = text.shape[0]
        bos = torch.full((B, 1), self.bos_id, dtype=torch.long, device=text.device)
        if guidance == 1.0:
            mask = text != TEXT_PAD_ID
            out = generate(self, bos, self.image_len, options.strategy(text.device), context=self.encode(text, mask),
                           context_mask=mask, logit_filters=options.filters(), use_cache=use_cache, on_step=on_step)
            return out.tokens[:, 1:]
        if null_text is None:
            raise ValueError("guidance needs null_text (the unconditional prompt)")
        memory, mask = self.encode_guided(text, null_text)

        def guided(tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
            return self.guided_logits(tokens, memory, mask, guidance, cache)

        out = generate(guided, bos, self.image_len, options.strategy(text.device), logit_filters=options.filters(),
                       use_cache=use_cache, on_step=on_step)
        return out.tokens[:, 1:]

    @classmethod
    def from_min_dalle(cls, root: str | Path, mega: bool = False, num_heads: int | None = None) -> "DalleBart":
        """min-dalle's `root/dalle_bart_{mini,mega}/{encoder.pt,decoder.pt}`, read with
        `torch.load(weights_only=True)`; sizes from the tensors (a tiny random-init model imports too)
        except the head count, which min-dalle fixes at 64-wide heads (mini 16, Mega 32); `num_heads`
        overrides it for other models."""
        from mmkit.weights.from_min_dalle import dalle_bart_from_min_dalle

        folder = Path(root).expanduser() / f"dalle_bart_{'mega' if mega else 'mini'}"
        files = [folder / "encoder.pt", folder / "decoder.pt"]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"not a min-dalle download: missing {', '.join(missing)}")
        config, state = dalle_bart_from_min_dalle(read_state_dict(files[0]), read_state_dict(files[1]), str(folder))
        if num_heads is not None:
            config["num_heads"] = num_heads
        where = f"{folder}: imported config"  # sizes from the tensors, the head count from the caller
        cls.check_config(config, where)
        with config_errors(where):
            model = cls(**config)
        load_state_dict_strict(model, state, str(folder))
        return model.eval()

"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

Built from the shared core and numerically identical to timm's `VisionTransformer` for the
plain family (class token or not, token or average pooling with timm's fc_norm placement),
so timm checkpoints import with a 1:1 key map (`mmkit.weights.from_timm`). "map" pooling is
timm's `AttentionPoolLatent` (SigLIP, Zhai et al., 2023: a learned query attends over the patches).
timm's model API (`forward_head`, `reset_classifier`, `pretrained_cfg`, ...) is kept for code written for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from mmkit.core import Attention, Encoder, LayerNorm, Mlp, resample_positions
from mmkit.core.blocks import NormFactory, layer_norm
from mmkit.core.mlp import activation
from mmkit.stems import PatchEmbed
from mmkit.weights.native import PretrainedMixin


class ViT(PretrainedMixin, nn.Module):
    """ViT classifier.

    Args:
        image_size: training resolution; other sizes work by resampling positions on the fly.
        patch_size: side of the square patches.
        in_chans: image channels.
        num_classes: classifier outputs (0 = no head, `forward` returns pooled features).
        dim, depth, num_heads, mlp_ratio, qkv_bias: transformer sizes (timm's names).
        class_token: prepend a learned [CLS] token.
        global_pool: "token" (the [CLS] output), "avg" (mean of patch tokens) or "map" (attention
            pooling of the patch tokens by a learned query, `AttentionPool`; SigLIP).
        fc_norm: put the final norm after pooling; None = timm's rule (True for "avg").
        drop_path_rate: stochastic depth for training.
        pre_norm: LayerNorm after the embeddings, before the blocks (timm's `norm_pre`, CLIP's
            ln_pre); as in timm it also drops the patch-embedding bias.
        norm_eps: LayerNorm epsilon (timm ViT 1e-6; CLIP 1e-5).
        act_layer: MLP activation by name (`mmkit.core.mlp.ACTIVATIONS`; OpenAI CLIP "quick_gelu").
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        global_pool: Literal["token", "avg", "map"] = "token",
        fc_norm: bool | None = None,
        drop_path_rate: float = 0.0,
        pre_norm: bool = False,
        norm_eps: float = 1e-6,
        act_layer: str = "gelu",
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if global_pool not in ("token", "avg", "map"):
            raise ValueError(f"global_pool must be 'token', 'avg' or 'map', got {global_pool!r}")
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.num_prefix_tokens = 1 if class_token else 0
        self.num_features = self.embed_dim = dim  # timm's names for the width the head reads
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim, bias=not pre_norm)
        self.grid_size = self.patch_embed.grid(image_size, image_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        positions = torch.empty(1, num_patches + self.num_prefix_tokens, dim)
        self.pos_embed = nn.Parameter(nn.init.normal_(positions, std=0.02))
        norm = layer_norm(norm_eps)
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm_pre = norm(dim) if pre_norm else nn.Identity()
        self.encoder = Encoder(dim, depth, num_heads, mlp_ratio, qkv_bias, norm_layer=norm,
                               act_layer=activation(act_layer), final_norm=False, drop_path_rate=drop_path_rate)
        # timm: the final norm sits either before pooling (`norm`) or after it (`fc_norm`).
        self.norm = norm(dim) if not use_fc_norm else nn.Identity()
        self.attn_pool = (AttentionPool(dim, num_heads, mlp_ratio, norm, activation(act_layer))
                          if global_pool == "map" else None)
        self.fc_norm = norm(dim) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.attn_pool is not None:
            nn.init.trunc_normal_(self.attn_pool.latent, std=dim**-0.5)

    def _positions(self, grid: tuple[int, int]) -> Tensor:
        return resample_positions(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens)

    def forward_features(self, images: Tensor, keep: int | None = None) -> Tensor:
        """(B, C, H, W) -> (B, prefix + N, dim) normed tokens (before pooling); with `keep`, the
        first `keep` of them only (`Encoder`'s `keep`: the last block computes just those)."""
        grid = self.patch_embed.grid(images.shape[-2], images.shape[-1])
        x = self.patch_embed(images)  # (B, N, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm_pre(x + self._positions(grid))
        return self.norm(self.encoder(x, keep=keep))

    def pool(self, x: Tensor) -> Tensor:
        """(B, T, dim) -> (B, dim) pooled and normed features."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.attn_pool is not None:
            x = self.attn_pool(x[:, self.num_prefix_tokens :])
        else:
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        return self.fc_norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, T, dim) `forward_features` tokens -> (B, num_classes) logits, or with `pre_logits` the
        (B, dim) pooled features the head reads (timm's method)."""
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def pre_logits(self, images: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, dim) the pooled features the head reads: what a timm model made with
        `num_classes=0` returns (image features for retrieval, `mmkit embed`)."""
        return self.forward_head(self.forward_features(images, keep=self._pooled_prefix()), pre_logits=True)

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.head(self.pre_logits(images))

    def get_classifier(self) -> nn.Module:
        """The classifier head (timm's method): nn.Linear, or nn.Identity with no classes."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head of `num_classes` outputs (0: none, `forward` returns pooled
        features), as timm's method; the config follows, so `save_pretrained` / `from_pretrained` round-trip."""
        if type(num_classes) is not int or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)
        self.head.to(self.pos_embed.device, self.pos_embed.dtype)
        self.num_classes = self.config["num_classes"] = num_classes

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's data config of the model (`timm.data.resolve_data_config(model=vit)` reads it): the
        imported `preprocess` (`ViT.from_timm`: the source's pretrained_cfg), else timm's ImageNet defaults."""
        from mmkit.data.transforms import VIT_DEFAULTS

        p = {**VIT_DEFAULTS, "image_size": self.config["image_size"], **(self.preprocess or {})}
        size = p["image_size"]
        return {"input_size": (self.config.get("in_chans", 3), size, size), "interpolation": p["interpolation"],
                "mean": tuple(p["mean"]), "std": tuple(p["std"]), "crop_pct": p["crop_pct"],
                "crop_mode": "squash" if p["resize_mode"] == "squash" else "center",
                "num_classes": self.num_classes, "first_conv": "patch_embed.proj", "classifier": "head"}

    default_cfg = pretrained_cfg  # timm's older name

    def _pooled_prefix(self) -> int | None:
        """How many leading tokens pooling reads: 1 (the class token) for "token" pooling, else all."""
        return 1 if self.global_pool == "token" else None

    def adapt_state_dict(self, state: dict[str, Tensor], saved_config: dict[str, Any]) -> dict[str, Tensor]:
        """Resample saved position embeddings when this model was built at another image size."""
        if "pos_embed" in state and state["pos_embed"].shape != self.pos_embed.shape:
            old = PatchEmbed(saved_config["patch_size"]).grid(saved_config["image_size"], saved_config["image_size"])
            state = {**state, "pos_embed": resample_positions(
                state["pos_embed"], self.grid_size, old, self.num_prefix_tokens)}
        return state

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ViT":
        """Build a named size (see `mmkit.models.sizes.VIT_SIZES`), e.g. "vit_tiny_patch16_224"."""
        from mmkit.models.sizes import vit_config

        return cls(**{**vit_config(name), **overrides})

    @classmethod
    def from_timm(cls, model_or_name: nn.Module | str, checkpoint_path: str | None = None,
                  pretrained: bool = False, **timm_kwargs: Any) -> "ViT":
        """Import a timm VisionTransformer instance, or build `name` like timm.create_model and
        load timm weights from `checkpoint_path` (or the hub when `pretrained=True`)."""
        from mmkit.weights.from_timm import import_timm_vit

        converted, preprocess = import_timm_vit(model_or_name, checkpoint_path, pretrained, **timm_kwargs)
        model = cls.from_converted(converted)
        model.preprocess = preprocess  # timm's pretrained_cfg: what `save_pretrained` and `Classifier` use
        return model

    def save_timm(self, directory: str | Path, class_names: Sequence[str] | None = None) -> Path:
        """Write `directory` as a timm checkpoint folder (config.json + model.safetensors, `weights.to_timm`):
        `timm.create_model("local-dir:DIR")` builds this model, with the same logits, and its pretrained_cfg holds
        the preprocessing (`preprocess`) and `class_names` (timm's label_names). The inverse of `from_timm`.

        Raises:
            WeightsError: a setting timm's ViT cannot express (named), nothing written.
        """
        from mmkit.weights.native import write_model_files
        from mmkit.weights.to_timm import timm_vit_export

        doc, state = timm_vit_export(self.config, self.state_dict(), self.preprocess, class_names)
        return write_model_files(directory, doc, state)

    def load_metadata(self, metadata: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
        """`from_pretrained`'s hook: the export's preprocessing metadata as `preprocess` (at the `image_size`
        override, where one is given)."""
        from mmkit.data.transforms import EVAL_KEYS

        preprocess = {k: metadata[k] for k in EVAL_KEYS if k in metadata}
        if preprocess and "image_size" in overrides:  # the model's new resolution, not the export's
            preprocess["image_size"] = overrides["image_size"]
        self.preprocess = preprocess or None


class AttentionPool(nn.Module):
    """Attention pooling by a learned latent query (timm's `AttentionPoolLatent` with its defaults,
    SigLIP's "MAP" head): the query cross-attends over the tokens, then a pre-norm MLP residual.
    Parameter names are timm's but for the attention (`attn.q`, `attn.kv`, `attn.proj`: the core
    cross-attention's), so the timm key map renames three entries.

    Args:
        dim, num_heads, mlp_ratio: as the ViT's blocks (timm builds the pool with them; its q/kv
            projections always have a bias, whatever the blocks' qkv_bias).
        norm_layer, act_layer: the norm before the MLP and the MLP activation.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_layer: NormFactory,
                 act_layer: type[nn.Module]) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = Attention(dim, num_heads, qkv_bias=True, cross=True)
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) tokens -> (B, dim) pooled features."""
        x = self.attn(self.latent.expand(x.shape[0], -1, -1), context=x)  # (B, 1, dim)
        x = x + self.mlp(self.norm(x))
        return x[:, 0]


def _init_weights(module: nn.Module) -> None:
    # timm's default ViT init: truncated normal linear weights, zero biases.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class PretrainedViT(ViT):
    """A ViT built from a native checkpoint directory, for YAML recipes (`class_path`).

    Fine-tuning: when `num_classes` differs from the checkpoint's, the head is re-initialised
    (an explicit, logged replacement) and everything else is loaded strictly. `metadata`
    keeps the checkpoint's class names and eval transform.

    Args:
        checkpoint: directory written by `save_pretrained`.
        num_classes: new head size (None or 0 = keep the checkpoint's head).
        image_size: new training resolution (positions are resampled).
        drop_path_rate: stochastic depth for fine-tuning.
    """

    architecture = "ViT"

    def __init__(self, checkpoint: str, num_classes: int | None = None, image_size: int | None = None,
                 drop_path_rate: float = 0.0) -> None:
        doc = ViT.read_config(checkpoint)  # validated, and checked against the weights' header below
        saved = doc["config"]
        ViT.check_weights(checkpoint, saved)
        new_head = bool(num_classes) and num_classes != saved["num_classes"]
        super().__init__(**{**saved, "num_classes": num_classes if new_head else saved["num_classes"],
                            "image_size": image_size or saved["image_size"], "drop_path_rate": drop_path_rate})
        from mmkit.weights.native import WEIGHTS_NAME, load_state_dict_strict, read_state_dict

        path = Path(checkpoint).expanduser() / WEIGHTS_NAME
        state = self.adapt_state_dict(read_state_dict(path), saved)
        self.metadata: dict[str, Any] = dict(doc.get("metadata", {}))
        if new_head:
            import logging

            logging.getLogger(__name__).info("new %d-class head replaces the checkpoint's %d-class head",
                                             num_classes, saved["num_classes"])
            state = {**state, "head.weight": self.head.weight.detach(), "head.bias": self.head.bias.detach()}
            self.metadata.pop("class_names", None)
        load_state_dict_strict(self, state, str(path))

"""CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021), laid out like open_clip's `CLIP`: a ViT image tower and a causal text Transformer,
each ending in a bias-free projection to a joint space, and a learned temperature. Built from the
shared core (the image tower is an mmkit `ViT`) and numerically identical to open_clip
(import: `mmkit.weights.from_open_clip`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.core import Decoder, Encoder, LearnedPositions
from mmkit.core.blocks import layer_norm
from mmkit.core.mlp import activation
from mmkit.models.vit import ViT
from mmkit.weights.native import PretrainedMixin

# OpenAI CLIP's pixel statistics over 0..1 RGB (timm.data.OPENAI_CLIP_MEAN/STD, not imported from
# there: importing timm costs a command-line start about a second).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_VOCAB_SIZE = 49408  # CLIP's byte-level BPE, <end_of_text> its last id


class CLIPVisionTower(ViT):
    """CLIP's image tower: a ViT with a LayerNorm before the blocks (open_clip's ln_pre, here
    `norm_pre`), the final norm before [CLS] pooling (ln_post, here `norm`), no patch bias, and a
    bias-free projection `proj` to the joint space. SigLIP's tower (open_clip's timm trunk
    `vit_*_siglip_*`) is a plain timm ViT instead: `global_pool="map"` (attention pooling, no class
    token), `pre_norm=False` (patch bias, no ln_pre) and `proj=False` (its pooled features are the
    embedding).

    Args:
        embed_dim: joint embedding width (projection output; with `proj=False` it must equal `dim`).
        image_size: input resolution; other sizes work by resampling positions on the fly.
        patch_size: side of the square patches.
        dim, depth, num_heads, mlp_ratio: transformer sizes (open_clip: width, layers, width / 64).
        act_layer: MLP activation, "gelu" or "quick_gelu" (OpenAI's checkpoints).
        norm_eps: LayerNorm epsilon (CLIP: 1e-5; SigLIP: 1e-6).
        drop_path_rate: stochastic depth for training (not in CLIP; 0 keeps it exact).
        global_pool: "token" (a class token, CLIP) or "map" (attention pooling, SigLIP; no class token).
        pre_norm: LayerNorm after the embeddings and no patch bias (CLIP), or neither (SigLIP).
        proj: a bias-free linear projection to `embed_dim` (CLIP), or none (SigLIP).
    """

    def __init__(
        self,
        embed_dim: int = 512,
        image_size: int = 224,
        patch_size: int = 32,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        act_layer: str = "gelu",
        norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        global_pool: Literal["token", "map"] = "token",
        pre_norm: bool = True,
        proj: bool = True,
    ) -> None:
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if global_pool not in ("token", "map"):
            raise ValueError(f"global_pool must be 'token' or 'map', got {global_pool!r}")
        if not proj and embed_dim != dim:
            raise ValueError(f"proj=False needs embed_dim == dim, got {embed_dim} and {dim}")
        super().__init__(image_size=image_size, patch_size=patch_size, num_classes=0, dim=dim, depth=depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, class_token=global_pool == "token",
                         global_pool=global_pool, fc_norm=False, drop_path_rate=drop_path_rate, pre_norm=pre_norm,
                         norm_eps=norm_eps, act_layer=act_layer)
        self.config: dict[str, Any] = config  # the tower's own arguments rebuild it, not ViT's
        self.embed_dim = embed_dim
        self.proj = nn.Linear(dim, embed_dim, bias=False) if proj else nn.Identity()
        if global_pool == "token":  # SigLIP's towers keep timm's init
            # open_clip's init of CLIP's own parameters: N(0, width^-1/2); the blocks keep timm's init.
            for p in (self.cls_token, self.pos_embed, *self.proj.parameters()):
                nn.init.normal_(p, std=dim**-0.5)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, embed_dim) unnormalised image embeddings."""
        return self.proj(self.pool(self.forward_features(images, keep=self._pooled_prefix())))


class CLIPTextTower(PretrainedMixin, nn.Module):
    """CLIP's text tower: token + learned positions, a causal pre-norm `Decoder` whose final norm
    is open_clip's ln_final, the features at the end-of-text token, and a bias-free projection.

    The end-of-text token is taken to be the largest id in each row (open_clip's default 'argmax'
    text pooling), which holds for CLIP's BPE: <end_of_text> is its last vocabulary entry. With
    causal attention nothing after it (padding) can change the result.

    SigLIP's text tower (open_clip's `no_causal_mask`, `pool_type="last"`, `proj_bias`) attends
    both ways and reads the last position, padding included: its embedding depends on the whole
    padded row, so callers must pass rows at the full context length (see `padding_is_inert`).

    Args:
        embed_dim: joint embedding width (projection output).
        vocab_size: token ids are in [0, vocab_size) (CLIP's BPE: 49408; SigLIP's: 32000).
        max_len: longest token sequence (open_clip's context_length, 77; SigLIP 64).
        dim, depth, num_heads, mlp_ratio: transformer sizes (open_clip: width, layers, heads).
        act_layer: MLP activation, "gelu" or "quick_gelu" (OpenAI's checkpoints).
        norm_eps: LayerNorm epsilon (CLIP: 1e-5; SigLIP: 1e-6).
        drop_path_rate: stochastic depth for training (not in CLIP; 0 keeps it exact).
        causal: causal attention (CLIP) or bidirectional (SigLIP).
        pool: "argmax" (the largest id's position: <end_of_text> in CLIP's BPE) or "last" (the
            last position).
        proj_bias: a bias on the projection (SigLIP).
    """

    def __init__(
        self,
        embed_dim: int = 512,
        vocab_size: int = CLIP_VOCAB_SIZE,
        max_len: int = 77,
        dim: int = 512,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        act_layer: str = "gelu",
        norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        causal: bool = True,
        pool: Literal["argmax", "last"] = "argmax",
        proj_bias: bool = False,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if pool not in ("argmax", "last"):
            raise ValueError(f"pool must be 'argmax' or 'last', got {pool!r}")
        self.embed_dim, self.vocab_size, self.max_len = embed_dim, vocab_size, max_len
        self.causal, self.pool = causal, pool
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = LearnedPositions(max_len, dim)
        # Named `decoder` either way: the parameter names stay those of CLIP checkpoints.
        self.decoder = (Decoder if causal else Encoder)(
            dim, depth, num_heads, mlp_ratio, qkv_bias=True, norm_layer=layer_norm(norm_eps),
            act_layer=activation(act_layer), final_norm=True, drop_path_rate=drop_path_rate)
        self.proj = nn.Linear(dim, embed_dim, bias=proj_bias)
        self._init_weights(dim, depth)

    @property
    def padding_is_inert(self) -> bool:
        """True when positions after <end_of_text> cannot change the embedding (causal attention
        read at <end_of_text>), so rows may be cut after it; False for SigLIP-style towers."""
        return self.causal and self.pool == "argmax"

    def _init_weights(self, dim: int, depth: int) -> None:
        # open_clip's TextTransformer init (GPT-2-like, residual projections scaled by depth).
        attn_std, proj_std, fc_std = dim**-0.5, dim**-0.5 * (2 * depth) ** -0.5, (2 * dim) ** -0.5
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.01)
        for blk in self.decoder.blocks:
            for layer, std in ((blk.attn.qkv, attn_std), (blk.attn.proj, proj_std),
                               (blk.mlp.fc1, fc_std), (blk.mlp.fc2, proj_std)):
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)
        nn.init.normal_(self.proj.weight, std=dim**-0.5)
        if self.proj.bias is not None:
            nn.init.zeros_(self.proj.bias)

    def forward_features(self, token_ids: Tensor) -> Tensor:
        """(B, T) int64 ids, T <= max_len -> (B, T, dim) normed token features."""
        x = self.tok_embed(token_ids) + self.pos_embed(token_ids.shape[1])  # (B, T, dim)
        return self.decoder(x)

    def forward(self, token_ids: Tensor) -> Tensor:
        """(B, T) int64 ids -> (B, embed_dim) unnormalised text embeddings."""
        x = self.forward_features(token_ids)
        if self.pool == "last":
            return self.proj(x[:, -1])
        eot = token_ids.argmax(dim=-1)  # (B,) position of <end_of_text>
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])  # (B, embed_dim)


class CLIP(PretrainedMixin, nn.Module):
    """Contrastive image-text model over two already-built towers (torchmultimodal's layout): each
    tower keeps its own ten typed arguments, instead of one constructor with twenty, and a YAML
    recipe configures them by class path.

    `forward` follows open_clip's tuple convention: (image_features, text_features, logit_scale
    exp'd[, logit_bias]) with L2-normalised features, so losses written for open_clip apply.
    `self.config` nests the towers' constructor arguments; `from_config` and `from_pretrained`
    rebuild both towers from it.

    Args:
        visual: image tower.
        text: text tower; its `embed_dim` must equal the image tower's.
        init_logit_scale: initial log inverse temperature (CLIP: log(1 / 0.07)).
        init_logit_bias: initial logit bias; None = no bias (CLIP), a float adds a learned one
            (SigLIP-style, e.g. -10).
    """

    init_free_load = True  # every tensor is in its checkpoints: from_pretrained/from_converted skip the random init

    def __init__(
        self,
        visual: CLIPVisionTower,
        text: CLIPTextTower,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: float | None = None,
    ) -> None:
        super().__init__()
        if visual.embed_dim != text.embed_dim:
            raise ValueError(f"image tower embed_dim {visual.embed_dim} != text tower embed_dim {text.embed_dim}")
        self.config: dict[str, Any] = {
            "visual": dict(visual.config), "text": dict(text.config),
            "init_logit_scale": init_logit_scale, "init_logit_bias": init_logit_bias,
        }
        self.embed_dim = visual.embed_dim
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        if init_logit_bias is None:
            self.register_parameter("logit_bias", None)
        else:
            self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    @property
    def context_length(self) -> int:
        """Token sequence length the text tower accepts (tokenize to this)."""
        return self.text.max_len

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """(B, 3, H, W) -> (B, embed_dim) image embeddings, L2-normalised if `normalize`."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, token_ids: Tensor, normalize: bool = False) -> Tensor:
        """(B, T) int64 token ids -> (B, embed_dim) text embeddings, L2-normalised if `normalize`."""
        x = self.text(token_ids)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, images: Tensor | None = None, token_ids: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor | None, Tensor] | tuple[Tensor | None, Tensor | None, Tensor, Tensor]:
        """
        Args:
            images: (B, 3, H, W) or None.
            token_ids: (B', T) int64 or None.

        Returns:
            (B, embed_dim) normalised image features (or None), (B', embed_dim) normalised text
            features (or None), logit_scale.exp() (a 0-d tensor), and logit_bias when the model has one.
        """
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(token_ids, normalize=True) if token_ids is not None else None
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()

    def get_logits(self, images: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled cosine similarities: (B, B') logits per image and their transpose, per text."""
        image_features, text_features = self.encode_image(images, True), self.encode_text(token_ids, True)
        logits = self.logit_scale.exp() * image_features @ text_features.T  # (B, B')
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CLIP":
        """Build from `{"visual": {...}, "text": {...}, **CLIP arguments}` (the shape of `self.config`
        and of `mmkit.models.sizes.CLIP_CONFIGS`)."""
        config = dict(config)
        visual, text = CLIPVisionTower(**config.pop("visual")), CLIPTextTower(**config.pop("text"))
        return cls(visual, text, **config)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "CLIP":
        """A named configuration (`mmkit.models.sizes.CLIP_CONFIGS`: "ViT-B-32", ...), random init."""
        from mmkit.models.sizes import clip_config

        return cls.from_config({**clip_config(name), **overrides})

    @classmethod
    def build(cls, config: dict[str, Any]) -> "CLIP":
        return cls.from_config(config)

    @classmethod
    def check_config(cls, config: Any, where: str) -> None:
        """Each tower's arguments against its constructor, then CLIP's own (one line per defect)."""
        from mmkit.weights.config_check import check_arguments

        check_arguments(cls.__init__, config, where, nested={"visual": CLIPVisionTower, "text": CLIPTextTower})

    @classmethod
    def with_overrides(cls, saved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """`from_pretrained` overrides: a dict for "visual"/"text" updates that tower's saved arguments,
        e.g. `visual={"image_size": 336}` (positions are resampled)."""
        return {**saved, **overrides, **{t: {**saved[t], **overrides.get(t, {})} for t in ("visual", "text")}}

    def load_metadata(self, metadata: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
        """`from_pretrained`'s hook (and `load_clip`'s): the export's preprocessing metadata and the open_clip
        architecture whose tokenizer it uses as `preprocess`, for a caller's own scorer and kept by a
        `save_pretrained` of the model (at the `visual={"image_size": ...}` override, where one is given)."""
        from mmkit.data.transforms import EVAL_KEYS

        keys = (*EVAL_KEYS, "open_clip_tokenizer")
        preprocess = {k: metadata[k] for k in keys if metadata.get(k) is not None}
        if "image_size" in preprocess and "image_size" in overrides.get("visual", {}):  # the new resolution
            preprocess["image_size"] = overrides["visual"]["image_size"]
        self.preprocess = preprocess or None

    def adapt_state_dict(self, state: dict[str, Tensor], saved_config: dict[str, Any]) -> dict[str, Tensor]:
        """Let the image tower resample saved positions when built at another image size."""
        visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        visual = self.visual.adapt_state_dict(visual, saved_config["visual"])
        return {**state, **{f"visual.{k}": v for k, v in visual.items()}}

    @classmethod
    def from_open_clip(cls, model_or_arch: nn.Module | str, pretrained: str | Path | None = None) -> "CLIP":
        """Import an open_clip `CLIP` instance (or a SigLIP `CustomTextCLIP`), or build open_clip
        architecture `arch` ("ViT-B-32", "ViT-B-16-SigLIP", ...) with `pretrained` = None (random
        init), a local checkpoint file (open_clip or OpenAI layout, OpenAI's TorchScript archives
        included) or an open_clip pretrained tag (needs the network).
        The weights' preprocessing (SigLIP: mean/std 0.5, squash) is kept as `preprocess`, which
        `ZeroShotClassifier` and `save_pretrained` use. See `mmkit.weights.from_open_clip.import_open_clip`."""
        from mmkit.weights.from_open_clip import import_open_clip

        converted, preprocess = import_open_clip(model_or_arch, pretrained)
        # CLIP has no non-persistent buffers: the strict load overwrites every tensor, so skip the init.
        model = cls.from_converted(converted)
        model.preprocess = preprocess
        return model

    def save_open_clip(self, directory: str | Path) -> Path:
        """Write `directory` as an open_clip model folder (open_clip_config.json + open_clip_model.safetensors,
        `weights.to_open_clip`): `open_clip.create_model_and_transforms("local-dir:DIR")` builds this model, with
        the same embeddings, its eval transform the preprocessing (`preprocess`), and
        `open_clip.get_tokenizer("local-dir:DIR")` CLIP's BPE at this context length. The inverse of
        `from_open_clip` for the CLIP layout.

        Raises:
            WeightsError: a layout open_clip's CLIP does not build (named), nothing written.
        """
        from mmkit.weights.native import write_model_files
        from mmkit.weights.to_open_clip import OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME, open_clip_export

        doc, state = open_clip_export(self.config, self.state_dict(), self.preprocess)
        return write_model_files(directory, doc, state, OPEN_CLIP_CONFIG_NAME, OPEN_CLIP_WEIGHTS_NAME)


class PretrainedCLIP(CLIP):
    """A CLIP built from a native checkpoint directory, for YAML recipes (`class_path`) to fine-tune it:
    a run's export, or an imported model saved with `save_pretrained` (`CLIP.from_open_clip(...)`: OpenAI-BPE
    CLIP models, whose tokenizer the CLIP recipes' data modules use). Every tensor is loaded strictly and the
    export's preprocessing kept as `preprocess` (a run's export records its data module's eval transform, what
    the run trained with). Saved and rebuilt as a plain CLIP (`architecture`): the folder is read once, here.

    Args:
        checkpoint: directory written by `save_pretrained`.
        image_size: new training resolution of the image tower (its positions are resampled).
    """

    architecture = "CLIP"

    def __init__(self, checkpoint: str, image_size: int | None = None) -> None:
        from mmkit.weights.native import load_state_dict_strict, read_state_dict

        doc = CLIP.read_config(checkpoint)  # validated, and checked against the weights' header below
        saved = doc["config"]
        path = CLIP.check_weights(checkpoint, saved)
        overrides = {"visual": {"image_size": image_size}} if image_size else {}
        config = CLIP.with_overrides(saved, overrides)
        if overrides:
            CLIP.check_config(config, f"{checkpoint}: config with image_size {image_size}")
        super().__init__(CLIPVisionTower(**config["visual"]), CLIPTextTower(**config["text"]),
                         config["init_logit_scale"], config["init_logit_bias"])
        load_state_dict_strict(self, self.adapt_state_dict(read_state_dict(path), saved), str(path))
        self.load_metadata(doc.get("metadata", {}), overrides)

    @classmethod
    def check_config(cls, config: Any, where: str) -> None:
        """A recipe's arguments against this constructor (a folder and a size; the towers are the folder's)."""
        from mmkit.weights.config_check import check_arguments

        check_arguments(cls.__init__, config, where)

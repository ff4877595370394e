"""The CLIP "--model NAME" resolver: a native checkpoint directory, or an open_clip architecture
with `--pretrained FILE_OR_TAG` -> (CLIP in eval mode, its tokenizer, its eval transform), as open_clip's
`create_model_and_transforms` + `get_tokenizer` would give, without building an open_clip model for
architectures mmkit knows by name. The preprocessing is read from configuration alone, so image
decoding can start before the weights load.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from mmkit.data.transforms import CLIP_DEFAULTS, EVAL_KEYS, EvalTransform, eval_transform
from mmkit.inference.prompts import Tokenizer
from mmkit.models.clip import CLIP, CLIP_VOCAB_SIZE

log = logging.getLogger(__name__)


class _StandaloneBPE:
    """open_clip's SimpleTokenizer as a Tokenizer (int64 ids) that knows its context length."""

    def __init__(self, bpe: Any, context_length: int) -> None:
        self.bpe, self.context_length = bpe, context_length

    def __call__(self, texts: Sequence[str]) -> Tensor:
        return self.bpe(list(texts)).long()


def _clip_bpe(context_length: int) -> Tokenizer:
    """CLIP's BPE tokenizer. Loaded from open_clip's `tokenizer.py` alone when open_clip is not
    imported yet: the package import pulls in transformers, torchvision and torch._dynamo (~5 s of
    CPU), for a module that needs only ftfy and regex. Falls back to `CLIPTokenizer`."""
    if "open_clip" not in sys.modules:
        try:
            spec = importlib.util.find_spec("open_clip")
            source = Path(spec.origin).with_name("tokenizer.py")  # type: ignore[union-attr, arg-type]
            module_spec = importlib.util.spec_from_file_location("mmkit._open_clip_tokenizer", source)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
            # the module builds a default SimpleTokenizer as it loads (~0.15 s of BPE tables): reuse it
            # when the context length is its own rather than building a second one
            default = getattr(module, "_tokenizer", None)
            bpe = default if getattr(default, "context_length", None) == context_length else \
                module.SimpleTokenizer(context_length=context_length)
            return _StandaloneBPE(bpe, context_length)
        except Exception as e:  # noqa: BLE001 - any surprise: take the regular route
            log.debug("standalone open_clip tokenizer unavailable (%s); importing open_clip", e)
    from mmkit.data.text import CLIPTokenizer

    return CLIPTokenizer(context_length=context_length)


def _build_and_load(config: dict[str, Any], state: dict[str, Tensor], source: str) -> CLIP:
    """`CLIP.from_config(config)` with `state` loaded strictly, without a random init first (every
    tensor is overwritten by the load: CLIP has no non-persistent buffers) and taking the freshly read
    tensors instead of copying them; in eval mode."""
    from mmkit.weights.native import Converted

    return CLIP.from_converted(Converted(config, state, source, training=False), assign=True)


def clip_eval_transform(model: str, pretrained: str | None = None, exact_decode: bool = False) -> EvalTransform:
    """The preprocessing of `model` (a checkpoint directory or an open_clip architecture), read
    from configuration only, so image decoding can start before the weights are loaded."""
    fields: dict[str, Any] = {}
    if Path(model).expanduser().is_dir():
        doc = CLIP.read_config(model)
        meta = doc.get("metadata", {})
        # the metadata's keys over the image tower's size, as `ZeroShotClassifier.from_pretrained` reads them: a
        # run trained at --data.init_args.image_size 48 on a 32-pixel tower (positions resampled) records 48, and
        # was validated and scored by `ZeroShotEvaluation` at 48; taking the tower's size, `mmkit label` alone
        # preprocessed at 32
        fields["image_size"] = doc["config"]["visual"]["image_size"]
        fields.update({k: meta[k] for k in EVAL_KEYS if k in meta})
    else:
        from mmkit.models.sizes import CLIP_CONFIGS

        if model in CLIP_CONFIGS and pretrained and Path(pretrained).expanduser().is_file():
            # open_clip's defaults for these architectures: OpenAI mean/std, bicubic, short side.
            fields["image_size"] = CLIP_CONFIGS[model]["visual"]["image_size"]
        else:
            from mmkit.weights.from_open_clip import open_clip_preprocess

            fields.update(open_clip_preprocess(model, pretrained))
    try:
        return eval_transform(fields, CLIP_DEFAULTS, draft=not exact_decode)
    except (ValueError, TypeError) as e:  # a tampered checkpoint: name it, in one line, before any decoding
        from mmkit.weights.native import WeightsError

        source = Path(model).expanduser() / "config.json" if Path(model).expanduser().is_dir() else model
        raise WeightsError(f"{source}: bad preprocessing metadata: {e}") from None


def load_clip(model: str, pretrained: str | None = None) -> tuple[CLIP, Tokenizer]:
    """A CLIP in eval mode and its tokenizer from a native checkpoint directory, or from an
    open_clip architecture with `pretrained` (a local file or a pretrained tag). A directory's
    tokenizer is CLIP's BPE unless its metadata names an open_clip architecture whose tokenizer it
    uses (`"open_clip_tokenizer": "ViT-B-16-SigLIP"`).

    Architectures in `mmkit.models.sizes.CLIP_CONFIGS` with a local file are read without
    building an open_clip model (same key map and strict load as `CLIP.from_open_clip`).
    """
    from mmkit.weights.native import WeightsError, read_state_dict

    path = Path(model).expanduser()
    bpe = True  # CLIP's BPE tokenizer (vs. an architecture's own, e.g. SigLIP's)
    if path.is_dir():
        doc = CLIP.read_config(path)
        meta = doc.get("metadata", {})
        weights = CLIP.check_weights(path, doc["config"])  # before a tensor is read or a layer built
        clip = _build_and_load(doc["config"], read_state_dict(weights), str(weights))
        clip.load_metadata(meta, {})  # its preprocessing, as `CLIP.from_pretrained` keeps it
        context = meta.get("context_length") or clip.context_length
        if meta.get("open_clip_tokenizer"):  # another architecture's tokenizer, e.g. "ViT-B-16-SigLIP"
            from mmkit.data.text import CLIPTokenizer, open_clip_tokenizer

            tokenizer = open_clip_tokenizer(meta["open_clip_tokenizer"], context_length=context)
            bpe = isinstance(tokenizer, CLIPTokenizer)
        else:
            tokenizer = _clip_bpe(context)
    else:
        if not pretrained:
            raise WeightsError(f"--model {model} is an architecture: name its weights with --pretrained FILE_OR_TAG")
        from mmkit.models.sizes import CLIP_CONFIGS

        if model in CLIP_CONFIGS and Path(pretrained).expanduser().is_file():
            from mmkit.models.sizes import clip_config
            from mmkit.weights.from_open_clip import CLIP_KEYS, TRANSFORMS, read_open_clip_checkpoint
            from mmkit.weights.keymap import remap

            state = remap(read_open_clip_checkpoint(pretrained), CLIP_KEYS, str(pretrained), TRANSFORMS)
            clip = _build_and_load(clip_config(model), state, str(pretrained))
            tokenizer = _clip_bpe(clip.context_length)
        else:
            from mmkit.data.text import CLIPTokenizer, open_clip_tokenizer

            clip = CLIP.from_open_clip(model, pretrained).eval()
            tokenizer = open_clip_tokenizer(model, context_length=clip.context_length)
            bpe = isinstance(tokenizer, CLIPTokenizer)
    if bpe and clip.text.vocab_size != CLIP_VOCAB_SIZE:
        raise WeightsError(f"{model}: text tower has {clip.text.vocab_size} token ids; CLIP's BPE needs "
                           f"{CLIP_VOCAB_SIZE} (a checkpoint directory of another tokenizer names its open_clip "
                           "architecture in its metadata: save_pretrained(dir, metadata={'open_clip_tokenizer': "
                           "'ViT-B-16-SigLIP', 'mean': ..., 'std': ..., 'resize_mode': ...}))")
    if not bpe and clip.text.pool == "argmax":
        raise WeightsError(f"{model}: text tower pools at the largest token id, which is <end_of_text> in CLIP's "
                           "BPE only, not in this architecture's tokenizer")
    return clip, tokenizer

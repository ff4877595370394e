"""Import openai-whisper checkpoints (the `.pt` files `whisper.load_model` reads; Radford et al.,
2022, github.com/openai/whisper) into the config and state dict of `mmkit.models.Whisper` (built
by `Whisper.from_openai`; this converter never imports mmkit.models).

Such a file is `torch.save({"dims": asdict(ModelDimensions), "model_state_dict": ...})`, read here
with `torch.load(weights_only=True)` only. `dims` become constructor arguments; a declarative key
map moves each tensor to its mmkit name, and q/k/v are fused by the shared
`hf.fuse_projections` (openai's `key` has no bias either: a zero slice, which softmax cancels).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from mmkit.weights.hf import fuse_projections
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError, summarise_keys, torch_load_weights_only

log = logging.getLogger(__name__)

# openai/whisper's `ResidualAttentionBlock` serves both stacks; only the decoder's has
# cross-attention. q/k/v land on staged names (`attn.qkv.q.weight`) that `fuse_projections` fuses.
_BLOCK_KEYS = [
    ("attn_ln.{p}", "norm1.{p}"),
    ("attn.query.{p}", "attn.qkv.q.{p}"),
    ("attn.key.weight", "attn.qkv.k.weight"),
    ("attn.value.{p}", "attn.qkv.v.{p}"),
    ("attn.out.{p}", "attn.proj.{p}"),
    ("mlp_ln.{p}", "norm2.{p}"),
    ("mlp.0.{p}", "mlp.fc1.{p}"),
    ("mlp.2.{p}", "mlp.fc2.{p}"),
]
_CROSS_KEYS = [
    ("cross_attn_ln.{p}", "norm_cross.{p}"),
    ("cross_attn.query.{p}", "cross_attn.q.{p}"),
    ("cross_attn.key.weight", "cross_attn.kv.k.weight"),
    ("cross_attn.value.{p}", "cross_attn.kv.v.{p}"),
    ("cross_attn.out.{p}", "cross_attn.proj.{p}"),
]
OPENAI_WHISPER_KEYS = [
    ("encoder.conv1.{p}", "stem.conv1.{p}"),
    ("encoder.conv2.{p}", "stem.conv2.{p}"),
    ("encoder.positional_embedding", "stem.pos_embed"),
    *[("encoder.blocks.{i}." + src, "encoder.blocks.{i}." + dst) for src, dst in _BLOCK_KEYS],
    ("encoder.ln_post.{p}", "encoder.norm.{p}"),
    ("decoder.token_embedding.weight", "tok_embed.weight"),  # also the (tied) output projection
    ("decoder.positional_embedding", "pos_embed.weight"),
    *[("decoder.blocks.{i}." + src, "decoder.blocks.{i}." + dst) for src, dst in _BLOCK_KEYS + _CROSS_KEYS],
    ("decoder.ln.{p}", "decoder.norm.{p}"),
]
# openai `ModelDimensions` field -> Whisper argument. mmkit's Whisper has one width and one head
# count for both stacks, so the two fields of such a pair must agree.
DIMS_TO_ARGS = {
    "n_mels": "n_mels", "n_audio_ctx": "n_audio_ctx", "n_audio_state": "dim", "n_audio_head": "num_heads",
    "n_audio_layer": "encoder_depth", "n_vocab": "vocab_size", "n_text_ctx": "n_text_ctx",
    "n_text_state": "dim", "n_text_head": "num_heads", "n_text_layer": "decoder_depth",
}
_MLP_RATIO = 4.0  # openai/whisper hard-codes n_mlp = 4 * n_state


def whisper_args(dims: Mapping[str, Any], source: str) -> dict[str, Any]:
    """`Whisper(...)` arguments of openai-whisper `ModelDimensions` (as a dict)."""
    missing = [k for k in DIMS_TO_ARGS if k not in dims]
    unknown = sorted(str(k) for k in dims if k not in DIMS_TO_ARGS)
    if missing or unknown:
        raise WeightsError(f"{source}: 'dims' are not openai-whisper ModelDimensions (missing: "
                           f"{', '.join(missing) or '-'}; unknown: {', '.join(unknown) or '-'})")
    bad = [f"{k}={v!r}" for k, v in dims.items() if type(v) is not int or v <= 0]
    if bad:
        raise WeightsError(f"{source}: 'dims' must be positive integers: {', '.join(bad)}")
    args: dict[str, Any] = {}
    named: dict[str, str] = {}  # argument -> the dims field it was taken from
    conflicts = []
    for field, arg in DIMS_TO_ARGS.items():
        if arg in args and args[arg] != dims[field]:
            conflicts.append(f"{named[arg]}={args[arg]} != {field}={dims[field]}")
        args.setdefault(arg, dims[field])
        named.setdefault(arg, field)
    if conflicts:
        raise WeightsError(f"{source}: mmkit's Whisper shares one width and one head count between encoder "
                           f"and decoder, this checkpoint has {'; '.join(conflicts)}")
    return {**args, "mlp_ratio": _MLP_RATIO}


def _depth(state: Mapping[str, Tensor], stack: str) -> int:
    # max index + 1, not a count: a gap in the numbering then surfaces as missing keys.
    found = (re.match(rf"{stack}\.blocks\.(\d+)\.", k) for k in state)
    return 1 + max((int(m[1]) for m in found if m), default=-1)


def infer_dims(state: Mapping[str, Tensor], source: str,
               sizes: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """`ModelDimensions` of a bare openai-layout state dict. Shapes give every field but the head
    counts; those come from the published size of the same width and depths (`sizes`: the
    caller passes `mmkit.models.sizes.WHISPER_SIZES`), and any other shape is refused rather
    than guessed."""
    needed = ["encoder.conv1.weight", "encoder.positional_embedding", "decoder.token_embedding.weight",
              "decoder.positional_embedding"]
    absent = [k for k in needed if k not in state]
    if absent:
        raise WeightsError(f"{source}: a state dict without 'dims' must hold {', '.join(absent)} to infer them")
    n_state, n_mels = state["encoder.conv1.weight"].shape[:2]
    enc, dec = _depth(state, "encoder"), _depth(state, "decoder")
    heads = {cfg["num_heads"] for cfg in sizes.values()
             if (cfg["dim"], cfg["encoder_depth"], cfg["decoder_depth"]) == (n_state, enc, dec)}
    if len(heads) != 1:
        raise WeightsError(
            f"{source}: a bare state dict (no 'dims') of width {n_state} with {enc}+{dec} layers is no published "
            "Whisper size, and its number of attention heads cannot be read from tensor shapes; save it as "
            "{'dims': dataclasses.asdict(model.dims), 'model_state_dict': model.state_dict()}")
    (n_head,) = heads
    n_vocab, n_text_state = state["decoder.token_embedding.weight"].shape
    return dict(n_mels=n_mels, n_audio_ctx=state["encoder.positional_embedding"].shape[0], n_audio_state=n_state,
                n_audio_head=n_head, n_audio_layer=enc, n_vocab=n_vocab,
                n_text_ctx=state["decoder.positional_embedding"].shape[0], n_text_state=n_text_state,
                n_text_head=n_head, n_text_layer=dec)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def read_openai_checkpoint(path: str | Path, sizes: Mapping[str, Mapping[str, Any]]
                           ) -> tuple[dict[str, int], dict[str, Tensor], str]:
    """`dims`, state dict and source name of an openai-whisper checkpoint file, or of a bare
    state dict in its layout whose dims `infer_dims` can determine. Nothing but tensors and plain
    containers is unpickled (`native.torch_load_weights_only`); `sizes` as in `infer_dims`."""
    source = str(Path(path).expanduser())
    obj = torch_load_weights_only(path)
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        extra = sorted(str(k) for k in obj if k not in ("dims", "model_state_dict"))
        if extra:
            raise WeightsError(f"{source}: entries besides 'dims' and 'model_state_dict': {summarise_keys(extra)}")
        state, dims = obj["model_state_dict"], obj.get("dims")
    elif _is_state_dict(obj):
        state, dims = obj, None
    else:
        found = (f"a dict with keys {summarise_keys(sorted(map(str, obj)))}" if isinstance(obj, Mapping)
                 else type(obj).__name__)
        raise WeightsError(f"{source}: not an openai-whisper checkpoint ({{'dims': ..., 'model_state_dict': ...}} "
                           f"or a state dict of tensors); found {found}")
    if not _is_state_dict(state):
        raise WeightsError(f"{source}: 'model_state_dict' is not a dict of tensors")
    if dims is None:
        dims = infer_dims(state, source, sizes)
        log.info("%s: no 'dims'; inferred %s from the tensor shapes", source, dims)
    elif not isinstance(dims, Mapping):
        raise WeightsError(f"{source}: 'dims' is a {type(dims).__name__}, not a dict of ModelDimensions fields")
    return dict(dims), dict(state), source


def whisper_from_openai(path: str | Path, sizes: Mapping[str, Mapping[str, Any]]) -> Converted:
    """Convert an openai-whisper checkpoint file (`tiny.pt`, `large-v3.pt`, or one saved the same
    way) for `mmkit.models.Whisper` (see `Whisper.from_openai`); `sizes` as in `infer_dims`.

    Returns:
        Whisper config and state dict (eval mode): the loaded model has the encoder outputs and
        logits of openai/whisper's (fp16 tensors of the published files upcast exactly on load).

    Raises:
        WeightsError: unreadable or unsafe files, dims mmkit's Whisper cannot express, and
            missing, unexpected or wrongly shaped tensors (the message names the file and the keys).
    """
    dims, state, source = read_openai_checkpoint(path, sizes)
    config = whisper_args(dims, source)
    mapped = fuse_projections(remap(state, OPENAI_WHISPER_KEYS, source), source)
    log.info("imported Whisper (%s+%s layers, dim %s, %s Mel bins) from %s", dims["n_audio_layer"],
             dims["n_text_layer"], dims["n_audio_state"], dims["n_mels"], source)
    return Converted(config, mapped, source, False)

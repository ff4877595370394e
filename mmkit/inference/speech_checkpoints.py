"""What `--model NAME` means for speech: the one resolver from a name to (Whisper, tokenizer),
used by `mmkit transcribe`, the Python API, `mmkit demo speech` and `SpeechRecognizer`'s
fine-tuning, and the one writer of speech checkpoints. Each format declares itself (file suffix
or config.json), nothing else is guessed (openai/whisper `load_model`; transformers
`WhisperForConditionalGeneration.from_pretrained`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import torch

from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.data.tiktoken_files import OPENAI_MULTILINGUAL_VOCAB
from mmkit.data.whisper_tokenizer import GENERATION_CONFIG, WhisperTokenizer, check_generation_config
from mmkit.inference.model_dir import read_model_dir
from mmkit.models.whisper import Whisper
from mmkit.weights.config_check import read_json_object

SpeechTokenizer = Union[WhisperTokenizer, CharTokenizer]
OPENAI_SUFFIXES = (".pt", ".pth")  # openai-whisper's checkpoint files
CT2_WEIGHTS = "model.bin"  # a CTranslate2 folder's weights (Hugging Face names its pickles pytorch_model.bin)


def load_speech_model(name: str | Path, device: str | torch.device = "cpu",
                      tokenizer: str | Path | None = None) -> tuple[Whisper, SpeechTokenizer]:
    """(eval-mode Whisper, tokenizer) for a `--model` name:

    * a Hugging Face Whisper directory (config.json with model_type "whisper" + weights) or an
      mmkit one (`save_speech_checkpoint`), each with its tokenizer files (and optionally
      generation_config.json) next to the weights;
    * an mmkit model trained with a character/BPE tokenizer (`SpeechRecognizer`'s export,
      config.json metadata `"tokenizer": "char" | "bpe"`: no language, task or timestamp tokens);
    * a CTranslate2 Whisper folder (model.bin, as faster-whisper reads it, + tokenizer.json; the
      suppressed tokens from its config.json unless a generation_config.json is there);
    * an openai-whisper checkpoint file (`.pt` / `.pth`), with openai's tokenizer for its
      vocabulary size.

    Args:
        name: checkpoint directory or openai-whisper file.
        device: where the model goes.
        tokenizer: a tokenizer directory or `.tiktoken` file to use instead (None: the checkpoint's).

    Raises:
        mmkit.weights.WeightsError / mmkit.data.whisper_tokenizer.TokenizerError: unusable files.
        ValueError: a device this machine does not have (`check_device`).
    """
    from mmkit.inference.precision import check_device
    from mmkit.weights import WeightsError

    device = check_device(str(device))  # before any weights are read: an absent GPU is one line
    path = Path(name).expanduser()
    if path.suffix in OPENAI_SUFFIXES:
        model = Whisper.from_openai(path)
        tok = (load_tokenizer(tokenizer, model.vocab_size) if tokenizer is not None
               else WhisperTokenizer.from_openai(model.vocab_size))
    else:
        model = _load_directory(path)
        if tokenizer is None and data_tokenizer_kind(path):
            chars = CharTokenizer.from_dir(path)
            if chars.vocab_size != model.vocab_size:
                raise WeightsError(f"{path}: tokenizer.json has {chars.vocab_size} tokens, the model "
                                   f"{model.vocab_size}")
            return model.to(device).eval(), chars
        tok = (_directory_tokenizer(path, model.vocab_size) if tokenizer is None
               else load_tokenizer(tokenizer, model.vocab_size))
    if tok.timestamp_end > model.vocab_size:
        raise WeightsError(f"{path}: the tokenizer's ids reach {tok.timestamp_end - 1}, beyond the "
                           f"model's vocab_size {model.vocab_size}")
    return model.to(device).eval(), tok


def data_tokenizer_kind(directory: Path) -> str | None:
    """"char" or "bpe" for a checkpoint trained with a tokenizer built from its transcripts
    (`save_speech_checkpoint` records it in the config.json metadata); None otherwise."""
    try:
        meta = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return None
    kind = meta.get("tokenizer") if isinstance(meta, dict) else None
    return kind if kind in ("char", "bpe") else None


def _load_directory(directory: Path) -> Whisper:
    from mmkit.weights import WeightsError

    if (directory / CT2_WEIGHTS).is_file():  # CTranslate2's file name; its header names the spec (checked)
        return Whisper.from_ctranslate2(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{directory}: not a checkpoint directory (no config.json); --model takes a local "
                           "Hugging Face Whisper directory, an mmkit Whisper checkpoint, a CTranslate2 Whisper "
                           "folder (model.bin) or an openai-whisper .pt file")
    _, config = read_model_dir(directory)  # a JSON object of a format this mmkit reads, or one line
    if "architecture" in config:  # mmkit's native layout
        return Whisper.from_pretrained(directory)
    if "format_version" in config or "model_type" not in config:  # neither layout can be told apart
        field = "'architecture'" if "format_version" in config else "'architecture' or 'model_type'"
        raise WeightsError(f"{config_path}: missing field {field}: cannot tell which model it holds")
    return Whisper.from_hf(directory)


def _directory_tokenizer(directory: Path, vocab_size: int) -> WhisperTokenizer:
    """The tokenizer beside a checkpoint's weights. A CTranslate2 folder has no generation_config.json:
    its config.json lists the suppressed tokens (`suppress_ids`, `suppress_ids_begin`) that
    faster-whisper applies, and the model is multilingual by openai's and CTranslate2's rule
    (vocab_size >= 51865; an English-only tokenizer.json lists the language tokens too)."""
    tok = WhisperTokenizer.from_dir(directory)
    if not (directory / CT2_WEIGHTS).is_file() or (directory / GENERATION_CONFIG).is_file():
        return tok
    # older exports have no config.json: openai's default suppressed tokens, as faster-whisper's
    config = read_json_object(directory / "config.json") if (directory / "config.json").is_file() else {}
    keys = {"suppress_tokens": "suppress_ids", "begin_suppress_tokens": "suppress_ids_begin"}
    generation = {ours: config[theirs] for ours, theirs in keys.items() if isinstance(config.get(theirs), list)}
    check_generation_config(generation, f"{directory / 'config.json'}: suppress_ids(_begin)", tok.id_count)
    generation["is_multilingual"] = vocab_size >= OPENAI_MULTILINGUAL_VOCAB
    return WhisperTokenizer(tok.backend, generation, source=directory)


def load_tokenizer(source: str | Path, vocab_size: int) -> WhisperTokenizer:
    """A tokenizer directory (`WhisperTokenizer.from_dir`) or a `.tiktoken` file read openai's
    way for a model of `vocab_size` ids (`WhisperTokenizer.from_tiktoken`)."""
    source = Path(source).expanduser()
    if source.suffix == ".tiktoken":
        return WhisperTokenizer.from_tiktoken(source, vocab_size)
    return WhisperTokenizer.from_dir(source)


def save_speech_checkpoint(model: Whisper, tokenizer: SpeechTokenizer, directory: str | Path,
                           metadata: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint `load_speech_model` reads back: config.json + model.safetensors (native
    `save_pretrained`) with the tokenizer beside it: a `CharTokenizer`'s tokenizer.json (its kind
    recorded in the metadata), or a Whisper tokenizer's files and generation_config.json."""
    if isinstance(tokenizer, CharTokenizer):
        directory = model.save_pretrained(directory, metadata={**(metadata or {}), "tokenizer": tokenizer.kind})
    else:
        directory = model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory

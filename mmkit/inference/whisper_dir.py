"""Saving an mmkit Whisper (Radford et al., 2022) as a transformers Whisper directory: config.json,
model.safetensors, generation_config.json, the tokenizer files (tokenizer.json, tokenizer_config.json) and
preprocessor_config.json, the layout `WhisperForConditionalGeneration.from_pretrained` and
`WhisperProcessor` / `AutoProcessor.from_pretrained` read, with the same logits, features, token ids and greedy
`generate()` tokens; and as a CTranslate2 Whisper folder (model.bin, as faster-whisper reads it), converted from
that directory by CTranslate2's own converter. The inverse of `speech_checkpoints.load_speech_model`'s transformers
and CTranslate2 reading; the weights go through `weights.to_hf_whisper.whisper_to_hf`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mmkit.audio.features import HOP_LENGTH, N_FFT, SAMPLE_RATE
from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.data.tiktoken_files import OPENAI_MULTILINGUAL_VOCAB
from mmkit.inference.ct2_dir import check_ctranslate2, save_ct2_dir
from mmkit.inference.gpt2_dir import GENERATION_CONFIG_NAME, SPECIAL_TOKENS_NAME, TOKENIZER_CONFIG_NAME
from mmkit.inference.model_dir import check_export_dir, export_folder
from mmkit.inference.quantize import check_exportable
from mmkit.weights.native import CONFIG_NAME, WEIGHTS_NAME, WeightsError, save_weights, write_json
from mmkit.weights.to_hf_whisper import whisper_to_hf

if TYPE_CHECKING:
    from mmkit.inference.speech_checkpoints import SpeechTokenizer
    from mmkit.models.whisper import Whisper

PREPROCESSOR_NAME = "preprocessor_config.json"
ENCODER_STRIDE = 2  # Mel frames per encoder position (the stem's second conv has stride 2)


def save_whisper_dir(model: Whisper, tokenizer: SpeechTokenizer, directory: str | Path) -> Path:
    """Save `model` and `tokenizer` as a transformers Whisper directory, for Hugging Face users.

    `WhisperForConditionalGeneration.from_pretrained` loads it with the same logits; `WhisperProcessor` /
    `AutoProcessor.from_pretrained` read its tokenizer (the ids `tokenizer.encode` gives) and a
    `WhisperFeatureExtractor` of the model's Mel bins and window (the features `mmkit.audio.log_mel_spectrogram`
    gives); generation_config.json is the tokenizer's with the suppressed tokens mmkit applies and the model's
    alignment heads (`whisper_generation_config`), so that greedy `generate(input_features)` without decoding
    arguments gives the tokens of mmkit's greedy decoding of each window without timestamps (`Transcriber` with one
    temperature, no silence skip, no repetition guard), the language detected alike. `load_speech_model` reads it
    back with the same logits, tokenizer and decoding settings. `directory` must be new or empty; it is written
    whole or not at all (`model_dir.export_folder`).

    A model trained from scratch with a `CharTokenizer` (no language, task or timestamp tokens) is exported too,
    since transformers' Whisper `generate()` runs it: of a short-form window without timestamps it reads only the
    start, end and <|notimestamps|> ids, is_multilingual (false) and the suppressed tokens, and its prompt is then
    mmkit's (<|startoftranscript|><|notimestamps|>). Its tokenizer.json is read as it is by `AutoTokenizer` (the
    generic fast tokenizer: the CharTokenizer's normaliser and word marks, not Whisper's byte-level BPE), and
    config.json names it (metadata "tokenizer", as `save_speech_checkpoint` does) for `load_speech_model`.
    `generate(return_timestamps=True)` cannot run there: the vocabulary has no timestamp tokens.

    Returns:
        `directory`, expanded.

    Raises:
        WeightsError: an int8 model (export the fp32 one: int8 is applied at load), a model transformers' Whisper
            cannot express (`to_hf_whisper.check_expressible`), an encoder window that is not whole seconds
            (WhisperFeatureExtractor's chunk_length), or a folder that holds files; nothing written.
        OSError: a folder that cannot be written, or a write failing midway (a full disk: `WriteFailed`), one
            line; nothing left in the folder.
    """
    write = _transformers_writer(model, tokenizer)  # everything refused before anything is written
    directory = check_export_dir(directory)
    with export_folder(directory) as stage:
        write(stage)
    return directory


def save_ct2_whisper_dir(model: Whisper, tokenizer: SpeechTokenizer, directory: str | Path,
                         quantization: str | None = None) -> Path:
    """Save `model` and `tokenizer` as a CTranslate2 Whisper folder, the layout `ctranslate2.models.Whisper` and
    faster-whisper's `WhisperModel` read: model.bin and CTranslate2's config.json (suppress_ids, suppress_ids_begin,
    lang_ids, alignment_heads: the model's, else CTranslate2's default, the last half of the decoder's layers, which
    is mmkit's default too), converted by CTranslate2's own converter from the transformers directory
    `save_whisper_dir` writes (`ct2_dir.save_ct2_dir`), with that directory's tokenizer.json,
    preprocessor_config.json (the model's Mel bins and window) and generation_config.json (which `load_speech_model`
    reads for the tokenizer) beside it. `quantization`: the weights' type in model.bin (`ct2_dir.QUANTIZATIONS`;
    None: float32, which faster-whisper quantizes at load with `compute_type`). `directory` must be new or empty; it
    is written whole or not at all.

    `ctranslate2.models.Whisper.generate` of a window's features with mmkit's prompt, greedy (max_length the text
    context, of which CTranslate2 decodes half, as mmkit), gives mmkit's tokens, and detects the same language;
    `load_speech_model` reads the folder back with the same logits and tokenizer. faster-whisper's `transcribe`
    (greedy, one temperature, no silence skip or fallback thresholds) writes mmkit's tokens and text for whole 30 s
    windows; what it does otherwise than mmkit, whatever the folder holds: it runs only 30 s windows (it pads every
    window's features to 3000 frames; CTranslate2 itself runs a model of shorter windows), it computes the features
    of shorter audio unpadded and pads them with zeros (openai and mmkit pad the audio), and its max_length is
    openai's 448 whatever the model's text context (set `WhisperModel.max_length` for a shorter one).

    Raises:
        WeightsError: what `save_whisper_dir` refuses; ctranslate2 not installed or a quantization it has not; a
            model trained with a `CharTokenizer` (faster-whisper's prompts need Whisper's task, previous-text and
            timestamp tokens); a tokenizer whose language layout CTranslate2 would read otherwise (it takes a
            vocabulary of 51,865 ids or more for multilingual, fewer for English-only, openai's rule); nothing
            written.
        OSError: a folder that cannot be written, or a write failing midway (`WriteFailed`); nothing left.
    """
    check_ctranslate2(quantization)
    if isinstance(tokenizer, CharTokenizer):
        raise WeightsError(f"a model trained with a {tokenizer.kind} tokenizer is not saved for CTranslate2: "
                           "faster-whisper's prompts need Whisper's task, <|startofprev|> and timestamp tokens, "
                           "which it has not (save it as a transformers folder instead)")
    kind = "multilingual" if tokenizer.is_multilingual else "English-only"
    if tokenizer.is_multilingual != (model.vocab_size >= OPENAI_MULTILINGUAL_VOCAB):
        raise WeightsError(f"a Whisper of {model.vocab_size} ids with a {kind} tokenizer is not saved for "
                           f"CTranslate2: it reads a vocabulary of {OPENAI_MULTILINGUAL_VOCAB} ids or more as "
                           "multilingual, fewer as English-only, and would prompt this model otherwise than mmkit does")
    return save_ct2_dir(_transformers_writer(model, tokenizer), directory, quantization=quantization)


def _transformers_writer(model: Whisper, tokenizer: SpeechTokenizer) -> Callable[[Path], None]:
    """What writes the transformers directory of `model` and `tokenizer` into a folder (made if absent), its files
    made here first: what transformers cannot hold is refused now, before anything is written.

    Raises:
        WeightsError: an int8 model, one transformers' Whisper cannot express, or a window of part seconds.
    """
    check_exportable(model, WeightsError)
    config, state = whisper_to_hf(model.config, model.state_dict(), tokenizer.sot, tokenizer.eot, tokenizer.eot)
    if isinstance(tokenizer, CharTokenizer):  # `speech_checkpoints.data_tokenizer_kind` reads it
        config["metadata"] = {"tokenizer": tokenizer.kind}
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    docs = {GENERATION_CONFIG_NAME: whisper_generation_config(model, tokenizer),
            PREPROCESSOR_NAME: feature_extractor_config(model.n_mels, model.n_audio_ctx),
            **whisper_tokenizer_config(tokenizer, model.n_text_ctx), CONFIG_NAME: config}

    def write(folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(folder / WEIGHTS_NAME, weights, {"format": "pt"})  # transformers reads "format"
        # tokenizer.json (beside it a Whisper tokenizer's source files: vocab.json, merges.txt, normalizer.json);
        # its tokenizer and generation configs are written over from `docs`
        tokenizer.save(folder)
        for name, doc in docs.items():
            write_json(folder / name, doc)

    return write


def whisper_generation_config(model: Whisper, tokenizer: SpeechTokenizer) -> dict[str, Any]:
    """transformers' generation_config.json for `model` and `tokenizer`, which makes greedy `generate()` without
    decoding arguments decode a window as mmkit's transcriber does without timestamps:

    - the tokenizer's (a `WhisperTokenizer`'s generation config over its defaults: start, end, padding, language,
      task and <|notimestamps|> ids);
    - on a multilingual model task "transcribe" (without it transformers follows a detected language with no task
      token); on an English-only one no lang_to_id (with it transformers would detect a language and prompt with it:
      tiny.en's config has none);
    - the suppressed tokens resolved as mmkit applies them (openai's non-speech symbols and the control tokens, no
      "-1");
    - max_length the tokens mmkit decodes per window (`_max_new_tokens`; transformers counts it after the prompt);
    - the model's alignment heads where it names them (none else: the tokenizer's, read from another checkpoint,
      would not be this model's).
    """
    if isinstance(tokenizer, CharTokenizer):  # what transformers' Whisper generate() reads of a short-form window
        gen: dict[str, Any] = {
            "decoder_start_token_id": tokenizer.sot, "bos_token_id": tokenizer.eot, "eos_token_id": tokenizer.eot,
            "pad_token_id": tokenizer.eot, "no_timestamps_token_id": tokenizer.no_timestamps,
            "is_multilingual": False, "return_timestamps": False}
    else:
        gen = {**tokenizer.default_generation_config(), **tokenizer.generation_config}
    # another checkpoint's heads, a language or task pinned by a fine-tuned source (mmkit detects and transcribes)
    for stale in ("alignment_heads", "forced_decoder_ids", "language", "task", "transformers_version"):
        gen.pop(stale, None)
    if tokenizer.is_multilingual:  # the task token after a detected language, as mmkit's (transformers: none)
        gen["task"] = "transcribe"
    else:  # transformers detects a language wherever lang_to_id is (tiny.en's config has none)
        gen.pop("lang_to_id", None)
        gen.pop("task_to_id", None)
    gen.update(suppress_tokens=list(tokenizer.suppress_tokens), max_length=_max_new_tokens(model, tokenizer),
               begin_suppress_tokens=list(tokenizer.begin_suppress_tokens))
    if model.alignment_heads is not None:
        gen["alignment_heads"] = [list(p) for p in model.alignment_heads]
    return gen


def _max_new_tokens(model: Whisper, tokenizer: SpeechTokenizer) -> int:
    """The tokens mmkit's transcriber decodes per window by default: half the text context (openai's sample_len,
    224), or with a character tokenizer the rest of the context after <|startoftranscript|><|notimestamps|>."""
    if isinstance(tokenizer, CharTokenizer):
        return model.n_text_ctx - len(tokenizer.sot_sequence(without_timestamps=True))
    return model.n_text_ctx // 2


def feature_extractor_config(n_mels: int, n_audio_ctx: int) -> dict[str, Any]:
    """preprocessor_config.json of a `WhisperFeatureExtractor` for a model of `n_mels` bins and `n_audio_ctx`
    encoder positions (2·n_audio_ctx Mel frames: 1500 positions are 30 s).

    Raises:
        WeightsError: a window that is not whole seconds: WhisperFeatureExtractor pads to chunk_length seconds.
    """
    samples = n_audio_ctx * ENCODER_STRIDE * HOP_LENGTH
    if samples % SAMPLE_RATE:
        raise WeightsError(f"an encoder of {n_audio_ctx} positions reads {samples / SAMPLE_RATE:g} s windows, where "
                           "WhisperFeatureExtractor's chunk_length is whole seconds (positions a multiple of "
                           f"{SAMPLE_RATE // (ENCODER_STRIDE * HOP_LENGTH)})")
    chunk = samples // SAMPLE_RATE
    return {"feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
            "feature_size": n_mels, "sampling_rate": SAMPLE_RATE, "hop_length": HOP_LENGTH, "chunk_length": chunk,
            "n_fft": N_FFT, "n_samples": samples, "nb_max_frames": samples // HOP_LENGTH, "padding_value": 0.0,
            "padding_side": "right", "return_attention_mask": False, "dither": 0.0}


def whisper_tokenizer_config(tokenizer: SpeechTokenizer, max_len: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json for `tokenizer`'s tokenizer.json: transformers'
    WhisperTokenizer (<|endoftext|> its bos, eos, unk and pad token, no prefix space, no language or task set: ids
    as `tokenizer.encode` gives them) or, for a `CharTokenizer`, the generic PreTrainedTokenizerFast over its
    tokenizer.json as it is."""
    eot = "<|endoftext|>"
    special = {"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot}
    if isinstance(tokenizer, CharTokenizer):
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eot, "pad_token": "<|pad|>",
                  "model_max_length": max_len, "clean_up_tokenization_spaces": False}
        return {TOKENIZER_CONFIG_NAME: config, SPECIAL_TOKENS_NAME: {"eos_token": eot, "pad_token": "<|pad|>"}}
    config = {"tokenizer_class": "WhisperTokenizer", **special, "model_max_length": max_len,
              "add_prefix_space": False, "errors": "replace", "clean_up_tokenization_spaces": False,
              "processor_class": "WhisperProcessor"}
    return {TOKENIZER_CONFIG_NAME: config, SPECIAL_TOKENS_NAME: special}


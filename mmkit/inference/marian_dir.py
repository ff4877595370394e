"""Saving an mmkit translator (Seq2Seq, "Attention Is All You Need" / MarianMT) as a transformers MarianMT directory:
config.json, model.safetensors, generation_config.json and MarianTokenizer's files (source.spm, target.spm,
vocab.json, tokenizer_config.json, special_tokens_map.json), the layout `MarianMTModel.from_pretrained` and
`MarianTokenizer.from_pretrained` / `AutoTokenizer` read, with the same logits, token ids and default `generate()`
decoding. The inverse of `translator._load_hf`; the weights go through `weights.to_hf_marian.marian_from_mmkit`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmkit.inference.generation_config import transformers_generation_config
from mmkit.inference.gpt2_dir import GENERATION_CONFIG_NAME, SPECIAL_TOKENS_NAME, TOKENIZER_CONFIG_NAME
from mmkit.inference.model_dir import check_export_dir, export_folder
from mmkit.inference.quantize import check_exportable
from mmkit.weights.native import CONFIG_NAME, WEIGHTS_NAME, WeightsError, save_weights, write_json
from mmkit.weights.to_hf_marian import marian_from_mmkit

if TYPE_CHECKING:
    from mmkit.inference.translator import Translator

SOURCE_SPM, TARGET_SPM, VOCAB_NAME = "source.spm", "target.spm", "vocab.json"
_SPECIAL = ("eos_token", "unk_token", "pad_token")


def save_marian_dir(translator: Translator, directory: str | Path) -> Path:
    """Save `translator` (a Seq2Seq: a native export, or an imported MarianMT) as a transformers MarianMT directory,
    for Hugging Face users: `MarianMTModel.from_pretrained` loads it with the same logits, `MarianTokenizer` /
    `AutoTokenizer` encode sources to the ids `translator.encode_source` gives and decode target ids (with
    skip_special_tokens=True) as `translator.codec` does, and `generate()` without decoding arguments decodes as
    `translator.translate` does without options (`marian_generation_config`). `load_translator` reads it back with
    the same ids, defaults and translations. `directory` must be new or empty; it is written whole or not at all
    (`model_dir.export_folder`).

    What transformers cannot carry (mmkit's own export, `Translator.export`, keeps it):
    - the length rule: transformers has none relative to the source (length_ratio · source tokens +
      length_offset); `generate()` runs to EOS or max_length (the translator's max_target_tokens + the start token);
      max_source_tokens and max_target_tokens come back as the positions' bounds;
    - a native model's sampling fallbacks (none: a sampling run samples among all tokens): transformers' top_k 50
      applies to a sampling run asked of it, and comes back (as `gpt2_dir.save_gpt2_dir` says);
    - MarianTokenizer's own rules: a source beginning ">>xx<<" is read as a language code, and decoded text is
      stripped (a translation ending in a lone "▁" piece loses its trailing space).

    Returns:
        `directory`, expanded.

    Raises:
        WeightsError: an int8 model (export the fp32 one: int8 is applied at load), a T5 model or a source prefix
            (T5's task prefix: MarianTokenizer puts nothing before a source), a model MarianMT cannot express
            (`to_hf_marian.check_expressible`), a tokenizer that cannot be saved or is not SentencePiece / Marian's,
            or a folder that holds files; nothing written.
        OSError: a folder that cannot be written, or a write failing midway (a full disk: `WriteFailed`), one
            line; nothing left in the folder.
    """
    from mmkit.models import Seq2Seq

    model, codec = translator.model, translator.codec
    if not isinstance(model, Seq2Seq):
        raise WeightsError(f"a {type(model).__name__} translator has no MarianMT layout: only Seq2Seq (MarianMT) "
                           "models are saved as transformers MarianMT directories")
    if translator.prefix:
        raise WeightsError(f"a translator with the source prefix {translator.prefix!r} is not saved as MarianMT: "
                           "MarianTokenizer puts nothing before a source")
    check_exportable(model, WeightsError)
    if codec.save is None:
        raise WeightsError("this translator's tokenizer cannot be saved")
    directory = check_export_dir(directory)
    config, state = marian_from_mmkit(model.config, model.state_dict(), codec.start_id, codec.eos_id, codec.pad_id,
                                      translator.forced_eos_id)
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    docs = {GENERATION_CONFIG_NAME: marian_generation_config(translator), CONFIG_NAME: config}
    with export_folder(directory) as stage:
        save_weights(stage / WEIGHTS_NAME, weights, {"format": "pt"})  # transformers reads "format"
        docs.update(_save_tokenizer(translator, stage))
        for name, doc in docs.items():
            write_json(stage / name, doc)
    return directory


def marian_generation_config(translator: Translator) -> dict[str, Any]:
    """A transformers generation config (generation_config.json) that makes `generate()` without decoding arguments
    decode as `translator.translate` without options does: the decoder's start, end and padding ids, the forced
    EOS, the codec's suppressed ids as single-token bad_words_ids (opus-mt's <pad> ban), max_length (the
    translator's max_target_tokens after the start token), and the model's own settings (`default_options`) under
    transformers' names, only those that are on (`generation_config.transformers_generation_config`: beams,
    repetition rules, min_new_tokens, sampling, do_sample false too), with the translator's own: renormalize_logits and the source's
    repetition rules, which `load_translator` reads back."""
    codec, options = translator.codec, translator.default_options()
    gen = transformers_generation_config(options, codec.eos_id)  # bos = eos, as opus-mt's configs have it
    gen.update(decoder_start_token_id=codec.start_id, pad_token_id=codec.pad_id,
               max_length=min(translator.max_target_tokens + 1, translator.model.max_len))
    if translator.forced_eos_id is not None:
        gen["forced_eos_token_id"] = translator.forced_eos_id
    if codec.suppress:
        gen["bad_words_ids"] = [[i] for i in codec.suppress]
    if options.renormalize_logits:
        gen["renormalize_logits"] = True
    if options.encoder_repetition_penalty != 1.0:
        gen["encoder_repetition_penalty"] = options.encoder_repetition_penalty
    if options.encoder_no_repeat_ngram_size:
        gen["encoder_no_repeat_ngram_size"] = options.encoder_no_repeat_ngram_size
    return gen


def marian_tokenizer_config(pieces: dict[str, str], max_len: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json of a MarianTokenizer over one SentencePiece model whose
    vocab.json lists its own pieces at its own ids: `pieces` the eos, unk and pad tokens' pieces, no clean-up of
    spaces at decoding (it would drop the space before punctuation, which SentencePiece keeps), and special tokens'
    text in a source split as any text (`split_special_tokens`: SentencePiece never reads "</s>" as its EOS)."""
    return {TOKENIZER_CONFIG_NAME: {"tokenizer_class": "MarianTokenizer", **pieces, "model_max_length": max_len,
                                    "separate_vocabs": False, "source_lang": None, "target_lang": None,
                                    "sp_model_kwargs": {}, "clean_up_tokenization_spaces": False,
                                    "split_special_tokens": True},
            SPECIAL_TOKENS_NAME: dict(pieces)}


def _save_tokenizer(translator: Translator, stage: Path) -> dict[str, dict[str, Any]]:
    """Write MarianTokenizer's files into `stage` and return the JSON documents still to write. An imported MarianMT's
    tokenizer is saved as transformers saves it (with a special_tokens_map.json where transformers 5 writes none);
    a native SentencePiece model becomes both source.spm and target.spm (one shared vocabulary), with a vocab.json
    of its pieces at their own ids, so that Marian's piece lookup gives SentencePiece's ids."""
    from mmkit.data.spm_tokenizer import SentencePieceTokenizer
    from mmkit.inference.translator import TRANSFORMERS_TOKENIZER

    codec = translator.codec
    name = codec.save(stage)
    if name == TRANSFORMERS_TOKENIZER:
        path = stage / TOKENIZER_CONFIG_NAME
        config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        if config.get("tokenizer_class") != "MarianTokenizer":
            raise WeightsError(f"the translator's tokenizer is a {config.get('tokenizer_class')}, not the "
                               "MarianTokenizer a MarianMT directory needs")
        if (stage / SPECIAL_TOKENS_NAME).is_file():
            return {}
        return {SPECIAL_TOKENS_NAME: {k: config[k] for k in _SPECIAL if isinstance(config.get(k), str)}}
    path = stage / name
    try:
        tok = SentencePieceTokenizer.load(path)
    except ValueError as e:  # names the file
        raise WeightsError(f"the translator's tokenizer is not a SentencePiece model MarianTokenizer reads ({e})") \
            from None
    path.unlink()
    for spm_name in (SOURCE_SPM, TARGET_SPM):
        (stage / spm_name).write_bytes(tok.proto)
    vocab = {tok.sp.id_to_piece(i): i for i in range(len(tok))}
    write_json(stage / VOCAB_NAME, vocab)
    ids = {"eos_token": codec.eos_id, "unk_token": tok.unk_id, "pad_token": codec.pad_id}
    return marian_tokenizer_config({k: tok.sp.id_to_piece(i) for k, i in ids.items()}, translator.max_source_tokens)

"""Tiny translation model directories for the translator, CLI, demo and bench tests: an mmkit
export (random-init Seq2Seq + a SentencePiece model trained on a few phrases) and a transformers
MarianMT directory with its SentencePiece tokenizer files (source.spm, target.spm, vocab.json)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from mmkit.data.number_phrases import make_pairs
from mmkit.data.spm_tokenizer import SentencePieceTokenizer
from mmkit.models import Seq2Seq


@functools.lru_cache(maxsize=None)
def _phrases(n: int) -> tuple[str, ...]:
    return tuple(t for pair in make_pairs("train", n) for t in pair)


def phrases(n: int = 300) -> list[str]:
    return list(_phrases(n))


def write_native_export(directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    tok = SentencePieceTokenizer.train(phrases(), 120)
    model = Seq2Seq(vocab_size=len(tok), max_len=48, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                    mlp_ratio=2.0, dropout=0.0)
    model.save_pretrained(directory, metadata={"task": "translation", "tokenizer": "spm.model", "start_id": 2,
                                               "eos_id": 3, "pad_id": 0})
    tok.save(directory)
    return directory


def write_marian_dir(directory: Path, seed: int = 0, forced_eos: bool = False, eos_bias: float | None = None,
                     pad_bias: float | None = None) -> Path:
    """opus-mt layout: vocabulary = the SentencePiece pieces, then <pad> last (decoder start).
    `forced_eos`: the config says forced_eos_token_id 0 (as opus-mt's) and EOS is unlikely, so
    rows run to their length limit. `eos_bias`: EOS's output bias instead (higher: EOS sooner). `pad_bias`: <pad>'s
    output bias (higher: the banned <pad> holds much of each step's mass, which renormalising shares out)."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tok = SentencePieceTokenizer.train(phrases(), 120)
    (directory / "source.spm").write_bytes(tok.proto)
    (directory / "target.spm").write_bytes(tok.proto)
    pieces = [tok.sp.id_to_piece(i) for i in range(len(tok))]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces[4:])}}
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"), str(directory / "vocab.json")) \
        .save_pretrained(directory)
    torch.manual_seed(seed)
    pad = vocab["<pad>"]
    cfg = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                       max_position_embeddings=64, activation_function="swish", scale_embedding=True,
                       pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0,
                       forced_eos_token_id=0 if forced_eos else None)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
        # EOS after a few tokens (or hardly ever)
        model.final_logits_bias[0, 0] = eos_bias if eos_bias is not None else -5.0 if forced_eos else 1.5
        if pad_bias is not None:
            model.final_logits_bias[0, pad] = pad_bias
    model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "bad_words_ids": [[pad]]}))  # as opus-mt's
    return directory


def write_t5_dir(directory: Path, seed: int = 0, eos_scale: float = 3.0) -> Path:
    """A Flan-T5-style directory: gated-GELU T5 + a T5 tokenizer.json over a trained unigram
    vocabulary (pad 0, eos 1, unk 2, as T5's). `eos_scale`: EOS's output weights scaled by it (higher: EOS
    sooner)."""
    import io

    import sentencepiece as spm
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(phrases() + ["translate English to German:"]),
                                   model_writer=out, vocab_size=120, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=out.getvalue())
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())], extra_ids=0)
    tok.save_pretrained(directory)
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                   decoder_start_token_id=0, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    model = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[1] *= eos_scale  # EOS within a few tokens
    model.save_pretrained(directory)
    return directory


def write_rule_dir(directory: Path, kind: str, ending: str) -> Path:
    """A MarianMT (`kind` "marian") or T5 ("t5") directory on which the repetition rules and the minimum length
    change the translations: `ending` "late" (its rows run to their limit repeating tokens: the n-gram ban and the
    repetition penalty change them) or "early" (EOS comes within a token or two: a minimum length changes them).
    The seeds and EOS strengths were picked for that, greedy and with 3 beams."""
    if kind == "marian":
        return write_marian_dir(directory, seed=1, eos_bias=4.0 if ending == "early" else None)
    return write_t5_dir(directory, seed=4 if ending == "early" else 2, eos_scale=8.0 if ending == "early" else 5.0)


def write_renormalize_dir(directory: Path, renormalize: bool = True) -> Path:
    """A MarianMT directory whose generation_config.json is opus-mt's kind (3 beams, <pad> banned by bad_words_ids,
    `renormalize` its renormalize_logits) and whose <pad> is likely, EOS fairly so: banning <pad> and renormalising
    changes which beams win (the seed and biases were picked for that, with the default length rule)."""
    directory = write_marian_dir(directory, seed=0, eos_bias=3.0, pad_bias=7.0)
    config = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps(
        {**config, "num_beams": 3, "bad_words_ids": [[config["pad_token_id"]]], "renormalize_logits": renormalize}))
    return directory

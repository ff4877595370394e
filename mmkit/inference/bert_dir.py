"""Saving an mmkit BERT encoder as a transformers directory (Devlin et al., 2019; RoBERTa: Liu et al., 2019):
config.json, model.safetensors and the tokenizer files, the layout `AutoModel`, `BertForMaskedLM` /
`BertForSequenceClassification` (or the Roberta classes) and `AutoTokenizer.from_pretrained` read, with the same
hidden states, logits, labels and token ids. The inverse of `encoder.load_encoder`'s transformers reading; the
weights go through `weights.to_hf_bert.hf_bert_export`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmkit.inference.model_dir import check_export_dir, export_folder
from mmkit.inference.quantize import check_exportable
from mmkit.weights.native import CONFIG_NAME, WEIGHTS_NAME, WeightsError, save_weights, write_json
from mmkit.weights.to_hf_bert import hf_bert_export

if TYPE_CHECKING:
    from mmkit.data.bert_tokenizer import EncoderTokenizer
    from mmkit.inference.encoder import LoadedEncoder

TOKENIZER_CONFIG_NAME, SPECIAL_TOKENS_NAME = "tokenizer_config.json", "special_tokens_map.json"
# The tokenizer class that loads tokenizer.json as it is, whatever its pipeline (transformers 4 and 5 alike)
VERBATIM_TOKENIZER = "PreTrainedTokenizerFast"
# BertTokenizer's / RobertaTokenizer's fixed WordPiece and BPE settings: where a tokenizer.json has other ones,
# transformers 5 (which rebuilds those classes' pipeline from the vocabulary) would tokenize otherwise
_WORDPIECE = {"continuing_subword_prefix": "##", "max_input_chars_per_word": 100}
_BPE = {"dropout": None, "continuing_subword_prefix": (None, ""), "end_of_word_suffix": (None, ""), "fuse_unk": False,
        "byte_fallback": False, "ignore_merges": False}


def save_bert_dir(encoder: LoadedEncoder, directory: str | Path) -> Path:
    """Save `encoder` (an mmkit export or an imported transformers BERT/RoBERTa, `load_encoder`'s) as a
    transformers directory, for Hugging Face users: config.json names the class its heads make
    (`to_hf_bert.architecture`: *ForSequenceClassification with id2label, label2id, num_labels and problem_type
    for a classifier, *ForMaskedLM for an MLM head, else *Model; Roberta* for RoBERTa positions), which
    `from_pretrained` loads with the same outputs in fp32; model.safetensors; and tokenizer.json, vocab.txt (or
    vocab.json + merges.txt), tokenizer_config.json and special_tokens_map.json, with which
    `AutoTokenizer.from_pretrained` gives `encoder.tokenizer`'s ids. `load_encoder` reads it back with the same
    outputs, class names and problem type. `directory` must be new or empty; it is written whole or not at all
    (`model_dir.export_folder`).

    What transformers' classes cannot carry:
    - mmkit's dropout after the feed-forward activation (`activation_dropout`, on in the native recipes): training
      only, transformers' BERT has none; inference is the same;
    - a pooler beside an MLM head: saved (as bert-base-uncased's), `AutoModel` uses it, *ForMaskedLM leaves it;
      a missing pooler is one `AutoModel` (BertModel) initialises at random, `last_hidden_state` unchanged;
    - the pair template of a RoBERTa BPE read from vocab.json + merges.txt (<s> A </s> B </s>): RobertaTokenizer
      joins pairs with </s></s>; single texts are the same.

    Returns:
        `directory`, expanded.

    Raises:
        WeightsError: an int8 model (export the fp32 one: int8 is applied at load), a layout transformers cannot
            build (the "mean" classifier head; a head of the other layout), repeated class names, or a folder
            that holds files; nothing written.
        OSError: a folder that cannot be written, or a write failing midway (a full disk: `WriteFailed`), one
            line; nothing left in the folder.
    """
    model, tokenizer = encoder.model, encoder.tokenizer
    check_exportable(model, WeightsError)
    directory = check_export_dir(directory)
    config, state = hf_bert_export(model.config, model.state_dict(), encoder.class_names or None,
                                   encoder.problem_type)
    if config["model_type"] == "roberta":  # RobertaConfig's defaults (0, 2) are roberta-base's ids
        config.update(bos_token_id=tokenizer.cls_id, eos_token_id=tokenizer.sep_id)
    docs = {CONFIG_NAME: config, **bert_tokenizer_config(tokenizer, model.max_len)}
    weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with export_folder(directory) as stage:
        save_weights(stage / WEIGHTS_NAME, weights, {"format": "pt"})  # transformers reads "format"
        tokenizer.save(stage)  # tokenizer.json, and vocab.txt for WordPiece
        if type(tokenizer.hf.model).__name__ == "BPE":  # what RobertaTokenizer reads without tokenizer.json
            tokenizer.hf.model.save(str(stage))  # vocab.json + merges.txt
        for name, doc in docs.items():
            write_json(stage / name, doc)
    return directory


def tokenizer_class(tokenizer: EncoderTokenizer) -> tuple[str, dict[str, Any]]:
    """The transformers tokenizer class whose `from_pretrained` gives `tokenizer`'s ids, and its settings:
    BertTokenizer (do_lower_case, strip_accents, tokenize_chinese_chars: its normalizer's) for BERT's WordPiece
    pipeline, RobertaTokenizer (add_prefix_space) for a byte-level BPE one; else `VERBATIM_TOKENIZER`, which loads
    tokenizer.json as it is (transformers 5 rebuilds the named classes' pipeline from the vocabulary and these
    settings, so another normalizer, pre-tokenizer or model setting would be lost)."""
    doc = json.loads(tokenizer.hf.to_str())
    model, norm, pre = doc.get("model") or {}, doc.get("normalizer") or {}, doc.get("pre_tokenizer") or {}
    # both classes frame a text as cls text sep (the post-processor transformers 5 puts back)
    framed = tokenizer.hf.encode("", add_special_tokens=True).ids == [tokenizer.cls_id, tokenizer.sep_id]
    if (framed and model.get("type") == "WordPiece" and all(model.get(k) == v for k, v in _WORDPIECE.items())
            and norm.get("type") == "BertNormalizer" and norm.get("clean_text") is True
            and pre.get("type") == "BertPreTokenizer" and tokenizer.unk_id is not None):
        return "BertTokenizer", {"do_lower_case": bool(norm.get("lowercase")),
                                 "strip_accents": norm.get("strip_accents"),
                                 "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars"))}
    if (framed and model.get("type") == "BPE" and not norm and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) is True
            and all(model.get(k) in (v if isinstance(v, tuple) else (v,)) for k, v in _BPE.items())):
        return "RobertaTokenizer", {"add_prefix_space": bool(pre.get("add_prefix_space")),
                                    "trim_offsets": bool(pre.get("trim_offsets", True)), "errors": "replace"}
    return VERBATIM_TOKENIZER, {}


def bert_tokenizer_config(tokenizer: EncoderTokenizer, max_len: int) -> dict[str, dict[str, Any]]:
    """tokenizer_config.json and special_tokens_map.json for `tokenizer` (`tokenizer_class`) beside its
    tokenizer.json: its special tokens under transformers' role names (cls, sep, pad, unk, mask; a RoBERTa BPE's
    <s> and </s> as bos and eos too), every added token as it matches in raw text (`added_tokens_decoder`), and
    the model's context (`max_len` tokens)."""
    name, settings = tokenizer_class(tokenizer)
    roles = {"cls_token": tokenizer.cls_id, "sep_token": tokenizer.sep_id, "pad_token": tokenizer.pad_id,
             "unk_token": tokenizer.unk_id, "mask_token": tokenizer.mask_id}
    if name == "RobertaTokenizer":
        roles.update(bos_token=tokenizer.cls_id, eos_token=tokenizer.sep_id)
    special = {role: tokenizer.hf.id_to_token(i) for role, i in roles.items() if i is not None}
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(tokenizer.hf.get_added_tokens_decoder().items())}
    wordpiece = type(tokenizer.hf.model).__name__ == "WordPiece"
    config = {"tokenizer_class": name, **settings, **special, "model_max_length": max_len,
              # BERT's decoding joins "do , n't" as "do, n't" (its WordPiece decoder's clean-up); byte-level BPE
              # decodes the bytes as they were
              "clean_up_tokenization_spaces": wordpiece, "added_tokens_decoder": added}
    return {TOKENIZER_CONFIG_NAME: config, SPECIAL_TOKENS_NAME: special}

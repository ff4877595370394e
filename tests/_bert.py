"""Tiny offline BERT fixtures: a WordPiece trained on the tiny grammar corpus of tests/_gpt.py in
well under a second, and random-init transformers BERT models saved with its vocab.txt (what
`mmkit embed/fill-mask/classify-text --model DIR` read from the hub, without the hub)."""
from __future__ import annotations

from pathlib import Path

from _gpt import tiny_corpus

MAX_POSITIONS = 32


def tiny_wordpiece(vocab_size: int = 200):
    from mmkit.data.bert_tokenizer import EncoderTokenizer

    return EncoderTokenizer.train(tiny_corpus(), vocab_size)


def write_tiny_bert(directory: Path, kind: str = "mlm", seed: int = 0, num_labels: int = 3):
    """A random-init transformers BertForMaskedLM ("mlm"), BertModel ("base") or
    BertForSequenceClassification ("classify") + vocab.txt in `directory`; returns (model in eval
    mode, EncoderTokenizer)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

    tok = tiny_wordpiece()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=MAX_POSITIONS, attn_implementation="eager",
                     num_labels=num_labels, id2label={i: f"class{i}" for i in range(num_labels)},
                     label2id={f"class{i}": i for i in range(num_labels)}, initializer_range=0.2)
    model = {"mlm": BertForMaskedLM, "base": BertModel, "classify": BertForSequenceClassification}[kind](cfg).eval()
    model.save_pretrained(directory)
    tok.save(directory)
    (Path(directory) / "tokenizer.json").unlink()  # a hub BERT directory: vocab.txt only
    return model, tok


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as in roberta-base


def write_tiny_roberta_classifier(directory: Path, seed: int = 0, num_labels: int = 3):
    """A random-init transformers RobertaForSequenceClassification + a byte-level BPE (vocab.json +
    merges.txt, the files of a hub RoBERTa directory) learned from the tiny corpus; returns (model in
    eval mode, transformers RobertaTokenizer of those files)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(tiny_corpus(), vocab_size=300, special_tokens=ROBERTA_SPECIALS, show_progress=False)
    Path(directory).mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(directory))
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                        attn_implementation="eager", num_labels=num_labels, initializer_range=0.2,
                        id2label={i: f"class{i}" for i in range(num_labels)},
                        label2id={f"class{i}": i for i in range(num_labels)})
    model = RobertaForSequenceClassification(cfg).eval()
    model.save_pretrained(directory)
    return model, RobertaTokenizer(str(Path(directory) / "vocab.json"), str(Path(directory) / "merges.txt"))


# A random tiny BERT's top two candidates for a mask are about 0.3% apart (int8 swaps them); its MLM head's LayerNorm
# gain scaled by this gives each mask a clear best candidate, as a trained model's usually does
PEAK = 8.0


def write_peaked_mlm(directory: Path) -> Path:
    """A tiny BERT masked-LM export (in `directory`/peaked) whose masks each have a clear best candidate (`PEAK`)."""
    import torch

    from mmkit.inference.encoder import load_encoder

    write_tiny_bert(directory / "hf", "mlm")
    encoder = load_encoder(directory / "hf")
    with torch.no_grad():
        encoder.model.mlm_head.norm.weight.mul_(PEAK)
    return encoder.save_pretrained(directory / "peaked")

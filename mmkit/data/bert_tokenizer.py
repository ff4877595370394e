"""Tokenizers of BERT-family encoders on Hugging Face `tokenizers`: BERT's WordPiece (Wu et al.,
2016; Devlin et al., 2019) read from a checkpoint's `tokenizer.json` or `vocab.txt`, RoBERTa's
byte-level BPE from `tokenizer.json` or `vocab.json` + `merges.txt`, or a WordPiece learned from a
training corpus and saved with the export. Inputs are framed [CLS] text [SEP] (<s> text </s>).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

TOKENIZER_FILE, WORDPIECE_VOCAB, BPE_VOCAB, BPE_MERGES = "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt"
TOKENIZER_FILES = (TOKENIZER_FILE, WORDPIECE_VOCAB, BPE_VOCAB, BPE_MERGES)  # any of them: a folder holds a tokenizer
TOKENIZER_CONFIG = "tokenizer_config.json"
# (BERT, RoBERTa) spellings of each special token.
SPECIALS = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
            "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>")}
BERT_SPECIALS = [names[0] for names in SPECIALS.values()]  # ids 0..4 of a trained vocabulary


class EncoderTokenizer:
    """Text <-> ids for BERT-family encoders. Build with `from_dir(dir)` or `train(texts, vocab_size)`;
    `save(dir)` writes tokenizer.json (and vocab.txt for WordPiece), which transformers also reads.

    Args:
        tokenizer: a `tokenizers.Tokenizer` whose post-processor adds [CLS]/[SEP] (or <s>/</s>).
    """

    def __init__(self, tokenizer: "tokenizers.Tokenizer") -> None:  # noqa: F821
        self.hf = tokenizer
        ids = {}
        for role, names in SPECIALS.items():
            ids[role] = next((i for i in map(tokenizer.token_to_id, names) if i is not None), None)
        missing = [SPECIALS[r][0] for r in ("pad", "cls", "sep", "mask") if ids[r] is None]
        if missing:
            raise ValueError(f"the tokenizer has no {', '.join(missing)} token")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            ids["pad"], ids["unk"], ids["cls"], ids["sep"], ids["mask"])
        self.mask_token = tokenizer.id_to_token(self.mask_id)
        self.special_ids = frozenset(i for i in ids.values() if i is not None)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    # --- building, saving, loading ---------------------------------------------------------------

    @staticmethod
    def _wordpiece(vocab: dict[str, int] | None, lowercase: bool) -> "tokenizers.Tokenizer":  # noqa: F821
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

        tok = Tokenizer(models.WordPiece(vocab or {"[UNK]": 0}, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return tok

    @staticmethod
    def _frame(tok: "tokenizers.Tokenizer", cls: str, sep: str) -> None:  # noqa: F821
        from tokenizers import processors

        if tok.token_to_id(cls) is None or tok.token_to_id(sep) is None:
            return  # refused with the list of missing special tokens by the constructor
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True) -> "EncoderTokenizer":
        """Learn an (uncased) WordPiece vocabulary of `vocab_size` tokens, BERT's five special
        tokens first ([PAD] = 0, as in bert-base-uncased). The same texts give the same vocabulary.

        tokenizers' trainer alone does not (huggingface/tokenizers#1794: every call, even in one
        process, could pick other merges): it numbers the "##c" continuation pieces in hash-map order,
        and those numbers break ties between equally frequent pairs. Here every piece is numbered
        first, in sorted order, so ties break the same way each time; the pieces are then plain
        vocabulary entries of a tokenizer rebuilt from the learned vocabulary."""
        from tokenizers import AddedToken, trainers

        texts = list(texts)
        tok = cls._wordpiece(None, lowercase)
        chars = sorted({c for text in texts for c in tok.normalizer.normalize_str(text) if not c.isspace()})
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS + [
            "##" + c for c in chars], show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        tok = cls._wordpiece(tok.get_vocab(), lowercase)
        tok.add_special_tokens([AddedToken(s, special=True) for s in BERT_SPECIALS])
        cls._frame(tok, "[CLS]", "[SEP]")
        return cls(tok)

    @classmethod
    def from_dir(cls, directory: str | Path) -> "EncoderTokenizer":
        """Read tokenizer.json, else vocab.txt (WordPiece; lower-cased unless tokenizer_config.json
        says do_lower_case false), else vocab.json + merges.txt (RoBERTa) from a checkpoint directory.

        Raises:
            FileNotFoundError: none of those files is there.
            ValueError: unreadable files, or a vocabulary without the special tokens.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        directory = Path(directory).expanduser()
        try:
            if (directory / TOKENIZER_FILE).is_file():
                tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
            elif (directory / WORDPIECE_VOCAB).is_file():
                lines = _read_utf8(directory / WORDPIECE_VOCAB).splitlines()
                tok = cls._wordpiece({t: i for i, t in enumerate(lines)}, _lowercase(directory))
                tok.add_special_tokens([t for t in BERT_SPECIALS if tok.token_to_id(t) is not None])
                cls._frame(tok, "[CLS]", "[SEP]")
            elif (directory / BPE_VOCAB).is_file() and (directory / BPE_MERGES).is_file():
                tok = Tokenizer(models.BPE.from_file(str(directory / BPE_VOCAB), str(directory / BPE_MERGES)))
                tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                tok.decoder = decoders.ByteLevel()
                tok.add_special_tokens([t for names in SPECIALS.values() for t in names[1:]
                                        if tok.token_to_id(t) is not None])
                cls._frame(tok, "<s>", "</s>")
            else:
                raise FileNotFoundError(f"{directory}: no tokenizer ({TOKENIZER_FILE}, {WORDPIECE_VOCAB}, "
                                        f"or {BPE_VOCAB} + {BPE_MERGES})")
        except (FileNotFoundError, ValueError):
            raise
        except Exception as e:  # tokenizers raises its own Exception type on malformed files
            raise ValueError(f"{directory}: unreadable tokenizer files ({e})") from None
        try:
            return cls(tok)
        except ValueError as e:
            raise ValueError(f"{directory}: {e}") from None

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json (and vocab.txt for a WordPiece vocabulary) into `directory`."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / TOKENIZER_FILE))
        if type(self.hf.model).__name__ == "WordPiece":
            vocab = self.hf.get_vocab(with_added_tokens=True)
            (directory / WORDPIECE_VOCAB).write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)),
                                                     encoding="utf-8")
        return directory

    # --- text <-> ids ----------------------------------------------------------------------------

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """[CLS] text [SEP] ids, cut to `max_len` (keeping the final [SEP])."""
        return self.encode_batch([text], max_len)[0]

    def encode_batch(self, texts: Sequence[str], max_len: int | None = None) -> list[list[int]]:
        out = [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=True)]
        if max_len is not None:
            out = [ids if len(ids) <= max_len else ids[: max_len - 1] + [ids[-1]] for ids in out]
        return out

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The token string of each id ("[CLS]", "play", "##ing")."""
        return [self.hf.id_to_token(i) or "" for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _read_utf8(path: Path) -> str:
    """The text of `path`; a ValueError naming the file if it is not UTF-8 (a message of its own: the
    bare UnicodeDecodeError says neither which file nor that it is a tokenizer's)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); a vocabulary is one UTF-8 token a line") \
            from None


def _lowercase(directory: Path) -> bool:
    path = directory / TOKENIZER_CONFIG
    if not path.is_file():
        return True
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("do_lower_case", True))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return True

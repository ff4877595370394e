"""GPT-2's byte-level BPE tokenizer (Radford et al., 2019; BPE: Sennrich et al., 2016) on Hugging
Face `tokenizers`: read from a checkpoint's `tokenizer.json` or `vocab.json` + `merges.txt`, or
learned from a training corpus and saved with the export. Byte-level means every string encodes
(no unknown token) and decoding inverts encoding exactly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

EOS_TOKEN = "<|endoftext|>"  # GPT-2's only special token: document separator and end of text
TOKENIZER_FILE, VOCAB_FILE, MERGES_FILE = "tokenizer.json", "vocab.json", "merges.txt"


class ByteBPETokenizer:
    """Text <-> GPT-2 token ids. Build with `from_dir(dir)` (a checkpoint's tokenizer files) or
    `train(texts, vocab_size)`; `save(dir)` writes all three files, so transformers'
    `AutoTokenizer` and GPT-2's original code read the directory too.

    Args:
        tokenizer: a byte-level BPE `tokenizers.Tokenizer`.
        eos_token: the end-of-text token (None: the vocabulary has none).
    """

    def __init__(self, tokenizer: "tokenizers.Tokenizer", eos_token: str | None = EOS_TOKEN) -> None:  # noqa: F821
        self.hf = tokenizer
        self.eos_id = tokenizer.token_to_id(eos_token) if eos_token else None
        if eos_token and self.eos_id is None:
            raise ValueError(f"the tokenizer has no end-of-text token {eos_token!r}")
        self.eos_token = eos_token if self.eos_id is not None else None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteBPETokenizer) and self.hf.to_str() == other.hf.to_str()

    # --- building, saving, loading ---------------------------------------------------------------

    @staticmethod
    def _byte_level(model: "tokenizers.models.BPE") -> "tokenizers.Tokenizer":  # noqa: F821
        from tokenizers import Tokenizer, decoders, pre_tokenizers, processors

        tok = Tokenizer(model)
        # GPT-2's settings: its regex split, no prefix space, offsets kept on the spaces.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> "ByteBPETokenizer":
        """Learn a byte-level BPE with `vocab_size` tokens in all: the 256 bytes, the merges, and
        <|endoftext|> last (GPT-2's layout, where it is id 50256)."""
        from tokenizers import models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"vocab_size must be >= 257 (256 bytes + {EOS_TOKEN}), got {vocab_size}")
        tok = cls._byte_level(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        tok.add_special_tokens([EOS_TOKEN])
        return cls(tok)

    @classmethod
    def from_dir(cls, directory: str | Path, eos_token: str | None = EOS_TOKEN) -> "ByteBPETokenizer":
        """Read `tokenizer.json`, else `vocab.json` + `merges.txt`, from a checkpoint directory.

        Raises:
            FileNotFoundError: neither is there.
            ValueError: the files are not a byte-level BPE tokenizer.
        """
        from tokenizers import Tokenizer, models

        directory = Path(directory).expanduser()
        try:
            if (directory / TOKENIZER_FILE).is_file():
                tok = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
                if type(tok.model).__name__ != "BPE" or type(tok.decoder).__name__ != "ByteLevel":
                    raise ValueError(f"{directory / TOKENIZER_FILE}: not a GPT-2-style byte-level BPE tokenizer")
            elif (directory / VOCAB_FILE).is_file() and (directory / MERGES_FILE).is_file():
                tok = cls._byte_level(models.BPE.from_file(str(directory / VOCAB_FILE), str(directory / MERGES_FILE)))
                if eos_token and tok.token_to_id(eos_token) is not None:
                    tok.add_special_tokens([eos_token])  # in vocab.json already: marks it special
            else:
                raise FileNotFoundError(f"{directory}: no tokenizer ({TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE})")
        except Exception as e:  # tokenizers raises its own Exception type on malformed files
            if isinstance(e, (FileNotFoundError, ValueError)):
                raise
            raise ValueError(f"{directory}: unreadable tokenizer files ({e})") from None
        return cls(tok, eos_token if eos_token and tok.token_to_id(eos_token) is not None else None)

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json, vocab.json and merges.txt into `directory`."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / TOKENIZER_FILE))
        self.hf.model.save(str(directory))  # vocab.json + merges.txt
        # vocab.json from the BPE model lacks added tokens; GPT-2's includes <|endoftext|>.
        vocab = json.loads((directory / VOCAB_FILE).read_text(encoding="utf-8"))
        vocab.update({t: i for t, i in self.hf.get_vocab(with_added_tokens=True).items() if t not in vocab})
        (directory / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        return directory

    # --- text <-> ids ----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

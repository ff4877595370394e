"""Small tokenizers for speech models trained from scratch: characters, or a BPE (Sennrich et al.,
2016) learned from the training transcripts, on Hugging Face `tokenizers` and saved as its
`tokenizer.json`. Words are marked SentencePiece-style ("▁the"), so text round-trips exactly.

Ids follow Whisper's layout, so decoding code written for `WhisperTokenizer` (the shared loop,
`mmkit.inference.Transcriber`) runs unchanged: text tokens first, then
<|endoftext|> (eot), <|startoftranscript|> (sot), <|pad|>, <|nospeech|>, <|notimestamps|>.
There are no timestamp tokens (`timestamp_begin == vocab_size`): decode without timestamps.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ("<|endoftext|>", "<|startoftranscript|>", "<|pad|>", "<|nospeech|>", "<|notimestamps|>")
WORD_MARK = "▁"  # U+2581, SentencePiece's word-start marker
DEFAULT_CHARSET = "a-z0-9' "  # what English transcripts are reduced to (a regex character class body)
_SPACES = re.compile(r"\s+")


def normalize_text(text: str, charset: str | None = DEFAULT_CHARSET) -> str:
    """Lowercase, replace characters outside `charset` by spaces, collapse spaces (None: keep all
    characters). Transcripts and hypotheses are compared after this (WER, CER)."""
    import unicodedata

    text = unicodedata.normalize("NFKC", text).lower()
    if charset is not None:
        text = re.sub(f"[^{charset}]", " ", text)
    return _SPACES.sub(" ", text).strip()


class CharTokenizer:
    """Text <-> ids with Whisper-style special tokens; see the module docstring for the layout.

    Build one with `CharTokenizer.build(transcripts, kind="char" | "bpe")`, save it with `save(dir)`
    (writes `dir/tokenizer.json`) and load it with `CharTokenizer.from_dir(dir)`. Text is
    normalised by the tokenizer itself (lowercase, `charset`), and `encode` refuses characters that
    are outside the alphabet learned from the transcripts rather than dropping them.

    Args:
        tokenizer: a `tokenizers.Tokenizer` with the special tokens appended after the text tokens.
    """

    def __init__(self, tokenizer: "tokenizers.Tokenizer") -> None:  # noqa: F821
        self.hf = tokenizer
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
            raise ValueError(f"not an mmkit character/BPE tokenizer: no {', '.join(missing)}")
        self.eot, self.sot, self.pad, self.no_speech, self.no_timestamps = ids
        if ids != list(range(self.eot, self.eot + len(SPECIAL_TOKENS))) or self.eot + len(ids) != self.vocab_size:
            raise ValueError("the special tokens must be the last ids, in the order " + " ".join(SPECIAL_TOKENS))
        vocab = tokenizer.get_vocab()
        self.alphabet = {t for t, i in vocab.items() if i < self.eot and len(t) == 1}
        self.kind = "char" if all(len(t) == 1 for t, i in vocab.items() if i < self.eot) else "bpe"

    # --- building, saving, loading ---------------------------------------------------------------

    @classmethod
    def build(cls, texts: Iterable[str], kind: str = "char", vocab_size: int = 256,
              charset: str | None = DEFAULT_CHARSET) -> "CharTokenizer":
        """Learn a tokenizer from transcripts.

        Args:
            texts: training transcripts (normalised with `normalize_text(text, charset)` first).
            kind: "char" (one token per character, plus the word marker) or "bpe".
            vocab_size: BPE only: text tokens to learn (characters included; the specials are added).
            charset: regex character class body of the characters kept (None: all).
        """
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

        if kind not in ("char", "bpe"):
            raise ValueError(f"kind must be 'char' or 'bpe', got {kind!r}")
        steps = [normalizers.NFKC(), normalizers.Lowercase()]
        if charset is not None:
            steps.append(normalizers.Replace(Regex(f"[^{charset}]"), " "))
        steps += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
        texts = [normalize_text(t, charset) for t in texts]
        chars = sorted({c for t in texts for c in t.replace(" ", "")})
        if not chars:
            raise ValueError("no characters to build a tokenizer from (empty transcripts?)")
        if kind == "char":  # a BPE without merges is a character tokenizer
            tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate([WORD_MARK] + chars)}, merges=[]))
        else:
            tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_MARK, prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement=WORD_MARK, prepend_scheme="always")
        if kind == "bpe":
            from tokenizers.trainers import BpeTrainer

            trainer = BpeTrainer(vocab_size=vocab_size, initial_alphabet=[WORD_MARK] + chars, show_progress=False,
                                 special_tokens=[])
            tok.train_from_iterator(texts, trainer)
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # appended after the text tokens
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "CharTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(path).expanduser())))

    @classmethod
    def from_dir(cls, directory: str | Path) -> "CharTokenizer":
        """Load `directory/tokenizer.json`."""
        path = Path(directory).expanduser() / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer file")
        return cls.from_file(path)

    def save(self, directory: str | Path) -> Path:
        """Write `directory/tokenizer.json`; returns its path."""
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        self.hf.save(str(path))
        return path

    def to_str(self) -> str:
        return self.hf.to_str()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.hf.get_vocab() == other.hf.get_vocab()

    # --- text ------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def normalize(self, text: str) -> str:
        return self.hf.normalizer.normalize_str(text) if self.hf.normalizer is not None else text

    def lost_chars(self, text: str) -> str:
        """The letters and digits of `text` that normalisation removes (outside the `charset` the
        tokenizer was built with, e.g. 'é' of 'café' for the English default), sorted; dropping
        punctuation and symbols is normal and not listed. `encode` refuses only characters the
        charset keeps but the alphabet lacks, so this is how to tell that a transcript is mangled."""
        import unicodedata

        kept = set(self.normalize(text))
        folded = unicodedata.normalize("NFKC", text).lower()
        return "".join(sorted({c for c in folded if unicodedata.category(c)[0] in "LN" and c not in kept}))

    def encode(self, text: str) -> list[int]:
        """Text ids of `text` (normalised first; no special tokens).

        Raises:
            ValueError: the normalised text has characters the tokenizer was not built with.
        """
        unknown = set(self.normalize(text).replace(" ", "")) - self.alphabet
        if unknown:
            raise ValueError(f"characters outside the tokenizer's alphabet: {''.join(sorted(unknown))!r}")
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the text tokens in `ids` (special tokens dropped)."""
        return self.hf.decode([int(i) for i in ids if int(i) < self.eot])

    # --- what Whisper-style decoding reads (`WhisperTokenizer`'s interface) -----------------------

    is_multilingual = False
    language_ids: dict[str, int] = {}
    max_initial_timestamp_index = None

    @property
    def timestamp_begin(self) -> int:
        """No timestamp tokens: the first id past the vocabulary."""
        return self.vocab_size

    @property
    def timestamp_end(self) -> int:
        return self.vocab_size

    def sot_sequence(self, language: str | None = None, task: str = "transcribe",
                     without_timestamps: bool = False) -> list[int]:
        """The decoder prompt: <|startoftranscript|> [<|notimestamps|>] (no language or task tokens)."""
        if task != "transcribe":
            raise ValueError(f"a character/BPE tokenizer model only transcribes, not {task!r}")
        return [self.sot] + ([self.no_timestamps] if without_timestamps else [])

    @property
    def suppress_tokens(self) -> list[int]:
        """Never generated: every special token except <|endoftext|>."""
        return [self.sot, self.pad, self.no_speech, self.no_timestamps]

    @property
    def begin_suppress_tokens(self) -> list[int]:
        """Not generated first: <|endoftext|> (no empty transcripts)."""
        return [self.eot]

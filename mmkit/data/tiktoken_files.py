"""openai-whisper's `.tiktoken` vocabularies (whisper/assets/gpt2.tiktoken, multilingual.tiktoken:
a base64 token and its BPE rank per line) as a `tokenizers` byte-level BPE that splits as tiktoken
does (transformers' `TikTokenConverter` idea), found in the installed openai-whisper package
without importing it; GPT-2's byte -> character table (Radford et al., 2019) for the BPE alphabet.
"""
from __future__ import annotations

import base64
import importlib.util
from pathlib import Path
from typing import Any

# openai-whisper vocabulary size -> its `.tiktoken` file (whisper/assets/); the number of language
# tokens is what is left of the size after the BPE ranks and the other special tokens.
OPENAI_ENCODINGS = {51864: "gpt2", 51865: "multilingual", 51866: "multilingual"}
OPENAI_MULTILINGUAL_VOCAB = 51865  # openai `Whisper.is_multilingual`: n_vocab >= 51865
# openai/whisper `get_encoding`'s pre-tokenizer split (GPT-2's), used with both .tiktoken files.
OPENAI_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerError(ValueError):
    """A checkpoint directory without usable Whisper tokenizer files."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE's base alphabet)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def openai_tiktoken_file(vocab_size: int) -> Path:
    """Path of the `.tiktoken` file openai-whisper uses for `vocab_size`, found in the installed
    package without importing it (importing whisper takes seconds)."""
    name = OPENAI_ENCODINGS.get(vocab_size)
    if name is None:
        raise TokenizerError(
            f"no openai-whisper tokenizer has {vocab_size} ids (51864: English-only, 51865: multilingual, "
            "51866: multilingual with Cantonese); pass the tokenizer with --tokenizer")
    spec = importlib.util.find_spec("whisper")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / "assets" / f"{name}.tiktoken" if locations else None
    if path is None or not path.is_file():
        raise TokenizerError(
            f"openai-whisper checkpoints take their tokenizer from the openai-whisper package ({name}.tiktoken), "
            "which is not installed: `pip install openai-whisper`, or pass --tokenizer (a tokenizer directory "
            "or a .tiktoken file)")
    return path


def read_tiktoken(path: Path) -> dict[bytes, int]:
    """{token bytes: rank} of a `.tiktoken` file; ranks must be the ids 0..n-1."""
    try:
        ranks = {base64.b64decode(token): int(rank) for token, rank in
                 (line.split() for line in path.read_text(encoding="ascii").splitlines() if line)}
    except (OSError, UnicodeDecodeError, ValueError) as e:  # binascii.Error is a ValueError
        raise TokenizerError(f"{path}: not a readable .tiktoken file ({type(e).__name__}: {e})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: the ranks of a .tiktoken file must be 0..{len(ranks) - 1}, each once")
    return ranks


def bpe_from_ranks(ranks: dict[bytes, int]) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` that splits as tiktoken does with `ranks`.

    tiktoken repeatedly merges the adjacent pair whose concatenation has the lowest rank; as a
    merge list (transformers' `TikTokenConverter`) that is every split of each token into two
    known halves, ordered by the rank of the result. `ignore_merges` then takes a pre-token
    that is itself in the vocabulary whole, as tiktoken does.
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    chars = bytes_to_unicode()
    table = [chars[b] for b in range(256)]

    def text(token: bytes) -> str:
        return "".join(table[b] for b in token)

    merges = []  # (rank of the merged token, rank of the left half, right half, left, right)
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort(key=lambda m: m[:3])
    backend = Tokenizer(BPE({text(t): r for t, r in ranks.items()}, [(text(m[3]), text(m[4])) for m in merges],
                            fuse_unk=False, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(OPENAI_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    return backend

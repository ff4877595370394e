"""A self-made Whisper tokenizer for offline tests and benchmarks: a byte-level BPE (GPT-2's byte
alphabet plus whole-word merges) with Whisper's exact special-token layout (openai/whisper
`tokenizer.py`: <|endoftext|>, <|startoftranscript|>, languages, tasks, timestamps), so token ids
match the real multilingual vocabulary when it has 50257 text tokens.
"""
from __future__ import annotations

from pathlib import Path

from mmkit.data.tiktoken_files import bytes_to_unicode
from mmkit.data.whisper_tokenizer import LANGUAGE_CODES, N_TIMESTAMPS, TIME_PRECISION, WhisperTokenizer

_TOY_WORDS = (
    " the and of to a in is that it was he for on are as with his they at be this from have or by one had not "
    "but what all were when we there can an your which their said if do will each about how up out them then "
    "she many some so these would other into has more her two like him see time could no make than first been "
    "its who now people my made over did down only way find use may water long little very after words called "
    "just where most know hello world speech audio test sound music"
).split()


def _toy_vocab(n_text_tokens: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(byte_chars)}
    merges: list[tuple[str, str]] = []

    def merge(a: str, b: str) -> None:
        if a + b not in vocab and len(vocab) < n_text_tokens:
            merges.append((a, b))
            vocab[a + b] = len(vocab)

    space = bytes_to_unicode()[ord(" ")]
    for word in _TOY_WORDS:  # left-to-right merges make each listed word (with its space) one token
        chars = space + word
        for i in range(1, len(chars)):
            merge(chars[:i], chars[i])
    for a in byte_chars:  # filler up to the requested size: pairs of byte characters
        for b in byte_chars:
            if len(vocab) >= n_text_tokens:
                return vocab, merges
            merge(a, b)
    return vocab, merges


def write_toy_tokenizer(directory: str | Path, n_text_tokens: int = 400, multilingual: bool = True) -> WhisperTokenizer:
    """Write a self-made Whisper tokenizer (tokenizer files + generation_config.json) to `directory`.

    Byte-level BPE over 256 byte tokens plus whole-word merges for a few common English words,
    padded with byte-pair merges to `n_text_tokens` text tokens; then Whisper's special tokens in
    Whisper's order (<|endoftext|>, <|startoftranscript|>, 99 language tokens,
    <|translate|>, <|transcribe|>, <|startoflm|>, <|startofprev|>, <|nospeech|>,
    <|notimestamps|>, <|0.00|> .. <|30.00|>). With `n_text_tokens=50257` the ids equal those of
    the real multilingual vocabulary (vocab size 51865); `multilingual=False` marks it English-only
in generation_config.json (prompts without language and task tokens). For tests and benchmarks only.

    Returns:
        the tokenizer, loaded back from `directory`.
    """
    from transformers import WhisperTokenizer as HFWhisperTokenizer

    if n_text_tokens < 256:
        raise ValueError("a byte-level vocabulary needs at least 256 text tokens")
    vocab, merges = _toy_vocab(n_text_tokens)
    vocab["<|endoftext|>"] = len(vocab)
    hf = HFWhisperTokenizer(vocab=vocab, merges=merges)
    langs = [f"<|{c}|>" for c in LANGUAGE_CODES[:99]]  # English-only vocabularies have them too
    specials = (["<|startoftranscript|>"] + langs + ["<|translate|>", "<|transcribe|>", "<|startoflm|>",
                "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"])
    hf.add_special_tokens({"additional_special_tokens": specials})
    hf.add_tokens([f"<|{i * TIME_PRECISION:.2f}|>" for i in range(N_TIMESTAMPS)])
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(directory))  # tokenizer.json + tokenizer_config.json
    tokenizer = WhisperTokenizer(hf.backend_tokenizer, {"is_multilingual": multilingual}, source=directory)
    tokenizer.generation_config = {**tokenizer.default_generation_config(), "is_multilingual": multilingual}
    tokenizer.save(directory)
    return WhisperTokenizer.from_dir(directory)

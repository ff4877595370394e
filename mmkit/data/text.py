"""CLIP's byte-level BPE tokenizer (Radford et al., 2021; Sennrich et al., 2016), through
open_clip: its vocabulary file ships inside the open_clip package, so tokenizing works offline.
Other open_clip architectures' tokenizers (SigLIP's SentencePiece) come from the Hugging Face hub
through `open_clip_tokenizer`.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor


class CLIPTokenizer:
    """Texts -> (B, context_length) int64 ids: <start_of_text>, BPE tokens, <end_of_text>, zero
    padding; longer texts are truncated with <end_of_text> kept last (open_clip's `tokenize`).

    Only CLIP's BPE is accepted: mmkit's CLIP finds the end-of-text token as the largest id in a
    row, which holds for this vocabulary (<end_of_text> is its last entry) and not in general.

    Args:
        context_length: padded length; must not exceed the text tower's `max_len`
            (None = the architecture's, 77 for CLIP).
        arch: open_clip architecture whose tokenizer settings to use (None = plain CLIP BPE).
    """

    def __init__(self, context_length: int | None = None, arch: str | None = None) -> None:
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer

        if arch is None:
            tokenizer = SimpleTokenizer(context_length=context_length or 77)
        else:
            config = open_clip.get_model_config(arch)
            if config is None:
                raise ValueError(f"unknown open_clip architecture {arch!r}")
            # Refuse before open_clip builds it: the other tokenizers come from the Hugging Face hub.
            other = config["text_cfg"].get("hf_tokenizer_name") or ("SigLIP" if "siglip" in arch.lower() else None)
            if other:
                raise ValueError(f"{arch} uses the {other} tokenizer, not CLIP's BPE, which mmkit's CLIP "
                                 "(end-of-text pooling by largest id) needs")
            tokenizer = open_clip.get_tokenizer(arch, context_length=context_length)
            if type(tokenizer) is not SimpleTokenizer:
                raise ValueError(f"{arch} uses {type(tokenizer).__name__}, not CLIP's BPE tokenizer")
        self._tokenizer = tokenizer

    @property
    def context_length(self) -> int:
        return int(self._tokenizer.context_length)

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.vocab_size)

    @property
    def sot_token_id(self) -> int:
        return int(self._tokenizer.sot_token_id)

    @property
    def eot_token_id(self) -> int:
        return int(self._tokenizer.eot_token_id)

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        """One text or a list of B texts -> (B, context_length) int64 token ids."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self._tokenizer(batch).long()

    def decode(self, token_ids: Tensor | Sequence[int]) -> str:
        """One row of ids -> text between <start_of_text> and <end_of_text> (the padding after it
        is id 0, which is also a real token, "!", so it is cut by position, not by value)."""
        ids = token_ids.tolist() if isinstance(token_ids, Tensor) else list(token_ids)
        if ids and ids[0] == self.sot_token_id:
            ids = ids[1:]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        return self._tokenizer.decode(ids).strip()


def uses_clip_bpe(arch: str) -> bool:
    """Whether open_clip architecture `arch` tokenizes with CLIP's BPE (else its own: a Hugging Face
    tokenizer, or SigLIP's), read from its configuration alone.

    Raises:
        ValueError: unknown architecture.
    """
    import open_clip

    config = open_clip.get_model_config(arch)
    if config is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}")
    return not config["text_cfg"].get("hf_tokenizer_name") and "siglip" not in arch.lower()


def open_clip_tokenizer(arch: str, context_length: int | None = None) -> Callable[[Sequence[str]], Tensor]:
    """The tokenizer of open_clip architecture `arch` as a `texts -> (B, context_length) int64 ids`
    callable: a `CLIPTokenizer` for CLIP's BPE, else open_clip's own (SigLIP's is downloaded from the
    Hugging Face hub: it needs the network once, or a filled hub cache).

    Raises:
        ValueError: unknown architecture.
        OSError: the hub tokenizer could not be loaded (offline), in one line.
    """
    import open_clip

    if uses_clip_bpe(arch):
        return CLIPTokenizer(context_length=context_length, arch=arch)
    name = open_clip.get_model_config(arch)["text_cfg"].get("hf_tokenizer_name")
    from mmkit.weights.hub import failure, hub_access

    with hub_access() as offline:
        try:
            tokenizer = open_clip.get_tokenizer(arch, context_length=context_length)
        except Exception as e:  # noqa: BLE001 - hub and network failures come as many exception types
            raise OSError(f"{arch} needs its tokenizer {name or ''} from the Hugging Face hub, which could not be "
                          f"loaded ({failure(e, offline)}); connect once to fill the hub cache") from None
    return lambda texts: tokenizer([texts] if isinstance(texts, str) else list(texts)).long()

"""A tiny random-init model in min-dalle's download layout (`dalle_bart_mini/{encoder.pt, decoder.pt,
vocab.json, merges.txt}`, `vqgan/detoker.pt`) for the text-to-image, CLI and tokenizer tests.

The encoder/decoder are min-dalle's own modules; the BPE files are a small byte-level vocabulary
(every printable ASCII character, with and without the word marker, plus merges spelling a few
words); the detokenizer is a narrow mmkit VQGAN saved under min-dalle's keys (min-dalle's
`VQGanDetokenizer` has fixed full-size shapes, too slow for a CLI test).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmkit.cli.bench.common import torch_threads
from mmkit.cli.bench.generate import min_dalle_reference
from mmkit.models import VQGAN

WORDS = ["a", "red", "circle", "on", "the", "left", "blue", "star", "avocado", "armchair"]
MARK = "\u0120"  # "Ġ"
SIZES = dict(dim=64, depth=2, num_heads=1, glu_dim=96)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Import into a test module to run it on one torch thread."""
    # 256 steps of small matrices: on a shared 2-core CPU, two OpenMP threads wait on each other at
    # every op (measured 10x slower under load); one thread keeps the module to seconds.
    with torch_threads(1):
        yield


def bpe_files() -> tuple[dict[str, int], list[str]]:
    """vocab.json contents and merges.txt lines (header first) of a small byte-level BPE."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in map(chr, range(33, 127)):
        for piece in (c, MARK + c):
            vocab.setdefault(piece, len(vocab))
    merges = [f"{MARK} {c}" for c in map(chr, range(33, 127))]  # as in BART: a marked piece per character
    for word in WORDS:  # merge left to right: Ġ+r, Ġr+e, Ġre+d
        parts = [MARK] + list(word)
        while len(parts) > 1:
            line = f"{parts[0]} {parts[1]}"
            if line not in merges:
                merges.append(line)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    merges.append("i r")  # an in-word merge, so ranks decide between competing pairs
    vocab.setdefault("ir", len(vocab))
    return vocab, ["#version: 0.2"] + merges


def write_min_dalle_root(root: Path, seed: int = 0) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """Write the layout under `root`; returns root and min-dalle's encoder and decoder modules."""
    vocab, merges = bpe_files()
    encoder, decoder = min_dalle_reference(text_vocab_size=len(vocab) + 3, seed=seed, **SIZES)
    folder = root / "dalle_bart_mini"
    folder.mkdir(parents=True)
    torch.save(encoder.state_dict(), folder / "encoder.pt")
    torch.save(decoder.state_dict(), folder / "decoder.pt")
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf8")
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf8")
    torch.manual_seed(seed)
    vqgan = VQGAN(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_levels=(), z_channels=4, codebook_size=2**14,
                  code_dim=4, norm_eps=1e-5, value_range="unit", has_encoder=False)
    state = {("embedding.weight" if k == "quantize.embedding.weight" else k): v for k, v in vqgan.state_dict().items()}
    (root / "vqgan").mkdir()
    torch.save(state, root / "vqgan" / "detoker.pt")
    return root, encoder, decoder

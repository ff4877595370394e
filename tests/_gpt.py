"""Tiny offline GPT fixtures for the text tests: a small English corpus made here, a byte-level BPE
trained on it in well under a second, and a random-init transformers GPT-2 saved with that
tokenizer (what `mmkit generate-text --model DIR` reads from the hub, without the hub)."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher", "our neighbour"]
VERBS = ["sees", "likes", "follows", "finds", "draws", "calls", "remembers"]
OBJECTS = ["the river", "a red ball", "the green house", "an apple", "the long road", "a quiet song", "the moon"]


def tiny_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """n short documents of two or three sentences from a fixed grammar (so a model can learn it)."""
    rng = random.Random(seed)
    sentences = [f"{s} {v} {o}." for s, v, o in itertools.product(SUBJECTS, VERBS, OBJECTS)]
    return [" ".join(rng.choice(sentences).capitalize() for _ in range(rng.randint(2, 3))) for _ in range(n)]


def tiny_tokenizer(vocab_size: int = 300):
    from mmkit.data.gpt_tokenizer import ByteBPETokenizer

    return ByteBPETokenizer.train(tiny_corpus(), vocab_size)


def write_tiny_gpt2(directory: Path, seed: int = 0, n_positions: int = 64, initializer_range: float = 0.3):
    """A random-init transformers GPT2LMHeadModel + tokenizer files in `directory`; returns
    (model in eval mode, ByteBPETokenizer). A wide init makes greedy continuations vary, so a
    token-by-token comparison means something."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=4,
                     initializer_range=initializer_range, bos_token_id=tok.eos_id, eos_token_id=tok.eos_id,
                     attn_implementation="eager")
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(directory)
    tok.save(directory)
    return model, tok

"""Bounded memory for causal-LM corpora: `TextBlocksDataModule.setup` on a corpus of tens of MB, in a
fresh process, grows its peak resident memory by a small fraction of the corpus's size. The whole-file
algorithm it replaced needed about 10x the corpus (text, Python strings, ids and int64 blocks): +500 MB
for a 50 MB corpus, where the streaming one needs +8 MB (the tokenizer's caches and thread arenas)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from _gpt import OBJECTS, SUBJECTS, VERBS, tiny_tokenizer
from tests._memory import PEAK_KIB

CORPUS_MB = 16  # tokenising dominates the run time: ~1 s a MB on two busy cores

SETUP = textwrap.dedent("""
    import functools, json, sys, time
    from mmkit.data.gpt_tokenizer import ByteBPETokenizer
    from mmkit.data.text_blocks import TextBlocksDataModule

    # One tokenizer object for both runs: its word cache (10k words, some MB, filled by any corpus, and
    # not all given back when a tokenizer is dropped) is then paid in the warm-up, not charged to the corpus.
    ByteBPETokenizer.from_dir = functools.lru_cache(ByteBPETokenizer.from_dir)

    def data(path):
        return TextBlocksDataModule(files=[path], tokenizer=sys.argv[3], block_size=64, num_workers=2, batch_size=8)

    data(sys.argv[1]).setup("fit")  # what any corpus costs: libraries, the tokenizer, its threads and cache
    dm = data(sys.argv[2])
    before = peak_kib() * 1024
    start = time.perf_counter()
    dm.setup("fit")
    seconds = time.perf_counter() - start
    peak = peak_kib() * 1024
    batch = next(iter(dm.train_dataloader()))  # read back through the memmap, in worker processes
    print(json.dumps({"growth": peak - before, "seconds": seconds, "train_blocks": len(dm.train_set),
                      "val_blocks": len(dm.val_set), "tokens": dm.train_set.num_tokens + dm.val_set.num_tokens,
                      "batch": list(batch["tokens"].shape)}))
""")


def write_corpus(path, megabytes: float) -> int:
    """Numbered paragraphs of sentences from the tiny grammar, written a MB at a time; returns the size."""
    sentences = [f"{s.capitalize()} {v} {o}." for s in SUBJECTS for v in VERBS for o in OBJECTS]
    n = 0
    with open(path, "w") as f:
        while f.tell() < megabytes * (1 << 20):
            chunk = []
            for _ in range(10_000):
                n += 1
                chunk.append(f"Story {n}. " + " ".join(sentences[(n * k) % len(sentences)] for k in (1, 3, 7))
                             + ("\n" if n % 3 else "\nThe end.\n") + "\n")
            f.write("".join(chunk))
        return f.tell()


@pytest.mark.slow
def test_setup_memory_grows_by_a_small_fraction_of_the_corpus(tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "corpus.txt"
    write_corpus(small, 1.5)  # > 10k distinct words: fills the BPE word cache, as any real corpus does
    size = write_corpus(big, CORPUS_MB)
    tiny_tokenizer(1000).save(tmp_path / "tok")  # trained on the grammar: few tokens a word, quick to run
    env = {**os.environ, "MMKIT_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PEAK_KIB + SETUP, str(small), str(big), str(tmp_path / "tok")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"corpus {size / 1e6:.0f} MB, {got['tokens'] / 1e6:.1f}M tokens: peak RSS +{got['growth'] / 1e6:.1f} MB, "
          f"setup {got['seconds']:.1f} s")
    assert got["batch"] == [8, 64] and got["train_blocks"] > 10 * got["val_blocks"] > 0
    assert got["tokens"] > size / 8  # the whole corpus went through
    assert got["growth"] < size / 4, got  # the whole-file algorithm: about 10 * size
    assert not list((tmp_path / "text_blocks").iterdir())  # the token files went with the process

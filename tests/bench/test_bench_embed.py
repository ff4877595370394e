"""Smoke test of `mmkit bench embed` at a tiny size: both implementations give the same embeddings
and the report holds together. Never timings."""
from __future__ import annotations

from mmkit.cli.bench.embed import format_report, main, run_embed_bench


def test_bench_embeds_the_same_vectors_on_both_sides():
    result = run_embed_bench(dim=32, depth=2, num_heads=4, vocab_size=300, n_sentences=40, batch_size=8,
                             rounds=2, warmup=0, threads=1)
    assert result["max_abs_diff"] <= 1e-5
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds"].values())
    assert result["ratio"] == result["sentences_per_s"]["mmkit"] / result["sentences_per_s"]["transformers"]
    assert "40 sentences" in format_report(result) and "batch 8" in format_report(result)


def test_impossible_sizes_exit_2(capsys):
    assert main(["--sizes", "wordnet", "--sentences", "0"]) == 2
    assert capsys.readouterr().err.startswith("mmkit bench embed: ")

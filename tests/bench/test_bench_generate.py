"""Smoke test of `mmkit bench generate` at a tiny size: cached and recomputed sampling give the same
codes and the report holds together. Never timings."""
from __future__ import annotations

from mmkit.cli.bench.generate import format_report, main, run_generate_bench


def test_cached_and_recomputed_give_the_same_codes():
    result = run_generate_bench(grid=3, text_len=4, dim=16, depth=1, num_heads=2, codebook_size=12, rounds=2,
                                warmup=0, threads=1)
    assert result["same_codes"] is True
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds"].values())
    assert result["ratio"] == result["tokens_per_s"]["cached"] / result["tokens_per_s"]["recompute"]
    assert "3x3 grid (9 image tokens)" in format_report(result) and "same codes         yes" in format_report(result)


def test_impossible_sizes_exit_2(capsys):
    assert main(["--grid", "0"]) == 2
    assert capsys.readouterr().err.startswith("mmkit bench generate: ")

"""Smoke test of `mmkit bench text` at a tiny size: both implementations generate the same greedy
tokens and the report holds together. Never timings."""
from __future__ import annotations

from mmkit.cli.bench.text import format_report, main, run_text_bench


def test_bench_generates_the_same_tokens_on_both_sides():
    result = run_text_bench(dim=32, depth=2, num_heads=4, vocab_size=300, batch_size=2, prompt_tokens=5,
                            new_tokens=12, rounds=2, warmup=0, threads=1)
    assert result["same_tokens"] is True
    assert set(result["seconds"]) == {"mmkit", "transformers"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds"].values())
    assert result["ratio"] == result["tokens_per_s"]["mmkit"] / result["tokens_per_s"]["transformers"]
    report = format_report(result)
    assert "same tokens                     yes" in report and "batch 2, 5 prompt + 12 new tokens" in report


def test_impossible_sizes_exit_2(capsys):
    assert main(["--sizes", "fortunes", "--new-tokens", "0"]) == 2
    assert capsys.readouterr().err.startswith("mmkit bench text: ")

"""Smoke test of `mmkit bench translate` at a tiny size: both implementations produce the same
greedy and beam tokens in every cell and the report holds together. Never timings."""
from __future__ import annotations

from mmkit.cli.bench.translate import format_report, main, run_translate_bench


def test_bench_translates_to_the_same_tokens_in_every_cell():
    result = run_translate_bench(dim=32, layers=1, heads=4, ffn=64, vocab_size=300, batch_sizes=(1, 3), beams=(1, 2),
                                 source_tokens=6, new_tokens=8, rounds=1, warmup=0, threads=1)
    cells = result["cells"]
    assert [(c["beams"], c["batch_size"]) for c in cells] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(c["same_tokens"] is True for c in cells)
    assert all(c["ratio"] == c["tokens_per_s"]["mmkit"] / c["tokens_per_s"]["transformers"] for c in cells)
    report = format_report(result)
    assert report.count("yes") == 4 and "beam 2        3" in report


def test_impossible_sizes_exit_2(capsys):
    assert main(["--dim", "32", "--layers", "1", "--heads", "4", "--ffn", "64", "--vocab-size", "100",
                 "--new-tokens", "0"]) == 2
    assert capsys.readouterr().err.startswith("mmkit bench translate: ")

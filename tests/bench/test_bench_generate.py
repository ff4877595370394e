"""Smoke test of `mmkit bench generate` at a tiny size: cached and recomputed sampling give the same
codes, so do mmkit's DalleBart and min-dalle's sampler, and the reports hold together. Never timings."""
from __future__ import annotations

import pytest

from mmkit.cli.bench.generate import (format_bart_report, format_report, main, run_encoder_decoder_bench,
                                       run_generate_bench)


def test_cached_and_recomputed_give_the_same_codes():
    result = run_generate_bench(grid=3, text_len=4, dim=16, depth=1, num_heads=2, codebook_size=12, rounds=2,
                                warmup=0, threads=1)
    assert result["same_codes"] is True
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds"].values())
    assert result["ratio"] == result["tokens_per_s"]["cached"] / result["tokens_per_s"]["recompute"]
    assert "3x3 grid (9 image tokens)" in format_report(result) and "same codes         yes" in format_report(result)


def test_impossible_sizes_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:  # a count below 1: argparse's usage error
        main(["--grid", "0"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "mmkit bench generate: error: argument --grid: must be >= 1, got 0"
    assert main(["--dim", "30", "--num-heads", "8"]) == 2  # counts fine, shapes impossible together
    assert capsys.readouterr().err.startswith("mmkit bench generate: ")


def test_encoder_decoder_against_min_dalle_gives_the_same_codes():
    result = run_encoder_decoder_bench(dim=64, depth=1, num_heads=1, rounds=1, warmup=0, threads=1)
    assert result["same_codes"] is True and result["distinct_codes"] > 3
    assert result["ratio"] == result["tokens_per_s"]["mmkit"] / result["tokens_per_s"]["min-dalle"]
    report = format_bart_report(result)
    assert "DalleBart 64d x 1 layers" in report and "same codes         yes" in report


def test_encoder_decoder_bench_times_the_int8_and_bf16_paths_too():
    # bf16 is emulated where the CPU lacks it: slow, still correct, and this model is tiny
    result = run_encoder_decoder_bench(dim=64, depth=1, num_heads=1, rounds=1, warmup=0, threads=1, int8=True,
                                       bf16=True)
    for kind in ("int8", "bf16"):
        assert result[f"{kind}_ratio"] == result["tokens_per_s"][f"mmkit {kind}"] / result["tokens_per_s"]["min-dalle"]
        assert all(0.0 <= share <= 1.0 for share in result[f"{kind}_agreement"].values())
    report = format_bart_report(result)
    assert "mmkit --quantize int8" in report and "mmkit bf16 / min-dalle fp32" in report
    assert "teacher-forced" in report and "of codes equal" in report and "transformers" not in report

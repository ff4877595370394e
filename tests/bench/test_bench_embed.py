"""Smoke test of `mmkit bench embed` at a tiny size: both implementations give the same embeddings
and the report holds together. Never timings."""
from __future__ import annotations

import pytest
import torch

from mmkit.cli.bench.embed import _agreement, format_report, main, run_embed_bench


def test_bench_embeds_the_same_vectors_on_both_sides():
    result = run_embed_bench(dim=32, depth=2, num_heads=4, vocab_size=300, n_sentences=40, batch_size=8,
                             rounds=2, warmup=0, threads=1, texts="synthetic")
    assert result["max_abs_diff"] <= 1e-5
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds"].values())
    assert result["ratio"] == result["sentences_per_s"]["mmkit"] / result["sentences_per_s"]["transformers"]
    assert "40 synthetic sentences" in format_report(result) and "batch 8" in format_report(result)
    assert result["int8_ratio"] == result["sentences_per_s"]["mmkit int8"] / result["sentences_per_s"]["transformers"]
    assert 0.9 < result["int8_agreement"]["cosine_min"] <= result["int8_agreement"]["cosine_mean"] < 1.0 + 1e-6
    assert "same nearest neighbour" in format_report(result) and "bf16" not in format_report(result)


def test_bench_adds_a_bf16_row_with_its_agreement():
    """bf16 is emulated (slowly) where the CPU lacks it: a tiny model, agreement only."""
    result = run_embed_bench(dim=32, depth=2, num_heads=4, vocab_size=300, n_sentences=16, batch_size=8,
                             rounds=1, warmup=0, threads=1, texts="synthetic", int8=False, bf16=True)
    assert "int8_ratio" not in result and result["bf16_ratio"] > 0
    assert 0.99 < result["bf16_agreement"]["cosine_min"] <= result["bf16_agreement"]["cosine_mean"] < 1.0 + 1e-6
    assert "mmkit embed --precision bf16" in format_report(result)


def test_agreement_of_known_vectors():
    reference = torch.eye(4)  # every text's nearest other text: the first one (ties -> lowest index)
    vectors = torch.nn.functional.normalize(torch.eye(4) + torch.tensor([[0, 0, 0, 0.0], [0, 0, 0.5, 0],
                                                                          [0, 0, 0, 0], [0, 0, 0, 0]]), dim=-1)
    agreement = _agreement(vectors, reference)
    assert agreement["cosine_min"] == pytest.approx(1 / 1.25 ** 0.5) and agreement["cosine_mean"] < 1
    assert agreement["neighbour"] == 0.5  # texts 1 and 2 became each other's nearest (0 before)


def test_impossible_sizes_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:  # a count below 1: argparse's usage error
        main(["--sizes", "wordnet", "--sentences", "0"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "mmkit bench embed: error: argument --sentences: must be >= 1, got 0"

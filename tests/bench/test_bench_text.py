"""Smoke test of `mmkit bench text` at a tiny size: both implementations generate the same greedy
tokens and the report holds together. Never timings."""
from __future__ import annotations

import contextlib

import pytest
import torch

from mmkit.cli.bench.text import _agreement, format_report, main, run_text_bench
from mmkit.models import GPT


def test_bench_generates_the_same_tokens_on_both_sides():
    result = run_text_bench(dim=32, depth=2, num_heads=4, vocab_size=300, batch_size=2, prompt_tokens=5,
                            new_tokens=12, rounds=2, warmup=0, threads=1)
    assert result["same_tokens"] is True
    assert set(result["seconds"]) == {"mmkit", "transformers", "mmkit int8"}
    assert result["int8_ratio"] == result["tokens_per_s"]["mmkit int8"] / result["tokens_per_s"]["transformers"]
    assert all(len(v) == 2 and min(v) > 0 for v in result["seconds"].values())
    assert result["ratio"] == result["tokens_per_s"]["mmkit"] / result["tokens_per_s"]["transformers"]
    report = format_report(result)
    assert "same tokens                     yes" in report and "batch 2, 5 prompt + 12 new tokens" in report
    assert "same top-1 (teacher-forced)" in report
    assert "mmkit int8" not in format_report({k: v for k, v in result.items() if not k.startswith("int8")})


def test_agreement_counts_generated_positions_only():
    model = GPT(vocab_size=50, max_len=16, dim=16, depth=1, num_heads=2).eval()
    reference = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    other = reference.clone()
    other[0, 0] = (other[0, 0] + 1) % 50  # a prompt position: not counted
    other[1, 5:] = (other[1, 5:] + 1) % 50  # 3 of the 10 generated positions (3 prompt tokens)
    agreement = _agreement(model, model, contextlib.nullcontext, other, reference, prompt_tokens=3)
    assert agreement == {"token": pytest.approx(0.7), "top1": 1.0}  # the same model predicts the same top-1 everywhere


def test_bench_adds_a_bf16_row_with_its_agreement():
    """bf16 is emulated (slowly) where the CPU lacks it: a tiny model, agreement only."""
    result = run_text_bench(dim=32, depth=2, num_heads=4, vocab_size=300, batch_size=1, prompt_tokens=4,
                            new_tokens=6, rounds=1, warmup=0, threads=1, int8=False, bf16=True)
    assert set(result["seconds"]) == {"mmkit", "transformers", "mmkit bf16"} and "int8_ratio" not in result
    assert 0.0 <= result["bf16_agreement"]["token"] <= 1.0 and 0.0 <= result["bf16_agreement"]["top1"] <= 1.0
    assert "mmkit bf16 (--precision bf16" in format_report(result)


def test_impossible_sizes_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:  # a count below 1: argparse's usage error
        main(["--sizes", "fortunes", "--new-tokens", "0"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "mmkit bench text: error: argument --new-tokens: must be >= 1, got 0"


def test_a_model_that_is_neither_export_nor_transformers_gpt2_exits_2(tmp_path, capsys):
    """transformers would load any other config.json as a default, random GPT-2."""
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither an mmkit GPT export nor a transformers GPT-2" in err
    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert "no readable config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("[1]")  # was an AttributeError traceback
    assert main(["--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("config.json holds a list, not an object")


def test_an_mmkit_export_runs_against_its_transformers_twin(tmp_path):
    torch.manual_seed(0)
    GPT(vocab_size=300, max_len=32, dim=32, depth=2, num_heads=4, mlp_ratio=3.0).save_pretrained(tmp_path)
    result = run_text_bench(str(tmp_path), batch_size=2, prompt_tokens=5, new_tokens=10, rounds=1, warmup=0,
                            threads=1)
    assert result["same_tokens"] is True and result["model"] == str(tmp_path)
    assert result["params"] == sum(p.numel() for p in GPT.from_pretrained(tmp_path).parameters())


def test_sizes_beside_model_is_a_usage_error(tmp_path, capsys):
    """--model DIR ran that checkpoint and silently ignored --sizes."""
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path), "--sizes", "fortunes"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("mmkit bench text: error: --sizes: not taken with --model, which times that checkpoint "
                       "instead of random-weight shapes")


def test_reduced_rows_line_up_without_a_stray_space():
    """`mmkit int8 (--quantize int8 )`: the option was padded inside the parentheses."""
    rates = {"mmkit": 100.0, "transformers": 50.0, "mmkit int8": 200.0, "mmkit bf16": 150.0}
    agreement = {"token": 1.0, "top1": 1.0}
    result = dict(model="m", params=1e6, batch_size=1, prompt_tokens=2, new_tokens=3, threads=1, rounds=1,
                  tokens_per_s=rates, ratio=2.0, same_tokens=True, int8_ratio=4.0, int8_agreement=agreement,
                  bf16_ratio=3.0, bf16_agreement=agreement)
    lines = format_report(result).splitlines()
    assert "  mmkit (shared loop, KV cache)      100.0 tokens/s" in lines
    assert "  mmkit int8 (--quantize int8)       200.0 tokens/s" in lines  # the same column
    assert "  mmkit bf16 (--precision bf16)      150.0 tokens/s" in lines


def test_ragged_prompts_generate_transformers_tokens_on_both_sides():
    """Prompts of 3 to 12 tokens left-padded: mmkit's KVCache.padding against transformers' attention_mask give the
    same greedy tokens (and int8 agrees, teacher-forced through the same padding)."""
    result = run_text_bench(dim=32, depth=2, num_heads=4, vocab_size=300, batch_size=4, prompt_tokens=12,
                            new_tokens=12, rounds=1, warmup=0, threads=1, ragged=True)
    assert result["same_tokens"] is True and result["ragged"] is True
    assert result["int8_agreement"]["top1"] > 0.9
    assert "batch 4, 3 to 12 prompt tokens (left-padded) + 12 new tokens" in format_report(result)


@pytest.mark.parametrize("ragged", [False, True], ids=["equal-prompts", "ragged-prompts"])
def test_bench_adds_ctranslate2_rows_with_the_same_tokens(ragged):
    """CTranslate2's Generator per compute type on the same weights: float32 continues every prompt (without its
    left padding) to transformers' greedy tokens, int8 reports its agreement, and the report compares mmkit's
    fastest path with CTranslate2's."""
    pytest.importorskip("ctranslate2")
    result = run_text_bench(dim=32, depth=2, num_heads=4, vocab_size=300, batch_size=3, prompt_tokens=8,
                            new_tokens=10, rounds=1, warmup=0, threads=1, int8=False, ragged=ragged,
                            ctranslate2=("int8", "float32"))
    assert set(result["ct2_ratio"]) == {"ctranslate2 int8", "ctranslate2 float32"}
    assert result["ct2_agreement"]["ctranslate2 float32"] == 1.0
    assert 0.0 <= result["ct2_agreement"]["ctranslate2 int8"] <= 1.0
    report = format_report(result)
    assert "ctranslate2 float32" in report and "mmkit's fastest vs CTranslate2's fastest: " in report

"""Smoke test of the ViT benchmark: structure and sanity of the numbers, never timings."""
from __future__ import annotations

import json
import math

import pytest

from mmkit.cli.bench.vit import format_rows, main, run_vit_bench

TINY = dict(depth=1, num_classes=10)


def test_run_vit_bench_rows():
    rows = run_vit_bench(models=("vit_tiny_patch16_224",), batch_size=2, image_size=32, steps=1, warmup=0,
                         threads=1, timm_kwargs=TINY)
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == "vit_tiny_patch16_224"
    assert (row["batch_size"], row["image_size"], row["precision"], row["threads"]) == (2, 32, "fp32", 1)
    assert row["max_abs_diff"] <= 1e-4  # the two timed models compute the same function
    assert row["params"] == 192 * 3 * 16 * 16 + 192 + 192 + 5 * 192 + 12 * 192 * 192 + 13 * 192 + 2 * 192 + 1930
    for mode in ("infer", "train"):
        for key in (f"{mode}_mmkit_ips", f"{mode}_timm_ips", f"{mode}_ratio"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
        assert row[f"{mode}_ratio"] == pytest.approx(row[f"{mode}_mmkit_ips"] / row[f"{mode}_timm_ips"])
        assert row[f"{mode}_spread"] == 0.0  # one round: no spread
        assert {k: len(v) for k, v in row[f"{mode}_seconds"].items()} == {"mmkit": 1, "timm": 1}
        assert row[f"{mode}_mmkit_ips"] == pytest.approx(2 / row[f"{mode}_seconds"]["mmkit"][0])
    lines = format_rows(rows)
    assert [line[:3] for line in lines[1:]] == [["vit_tiny_patch16_224", "fp32", "inference"],
                                                ["vit_tiny_patch16_224", "fp32", "train step"]]


def test_bad_arguments_fail_before_building():
    with pytest.raises(ValueError, match="precision must be one of"):
        run_vit_bench(precision="fp8")
    with pytest.raises(ValueError, match="need steps >= 1"):
        run_vit_bench(steps=0)
    with pytest.raises(ValueError, match="not timm model names: vit_nonexistent"):
        run_vit_bench(["vit_tiny_patch16_224", "vit_nonexistent"])
    with pytest.raises(ValueError, match="not plain timm ViTs: resnet18"):
        run_vit_bench(["resnet18"])


def test_main_writes_json(tmp_path, capsys, monkeypatch):
    import mmkit.cli.bench.vit as bench

    real = bench.run_vit_bench
    seen = {}

    def tiny(models, **kw):  # main's arguments, on a model small enough for a unit test
        seen.update(kw, models=models)
        return real(models, **{**kw, "timm_kwargs": TINY})

    monkeypatch.setattr(bench, "run_vit_bench", tiny)
    out = tmp_path / "bench.json"
    monkeypatch.setattr("mmkit.inference.precision.cpu_has_bf16", lambda: False)
    assert main(["--models", "vit_tiny_patch16_224", "--batch-size", "2", "--image-size", "32", "--steps", "1",
                 "--warmup", "0", "--precision", "fp32", "bf16", "--threads", "1", "--json", str(out)]) == 0
    assert seen == dict(models=["vit_tiny_patch16_224"], batch_size=2, image_size=32, steps=1, warmup=0,
                        threads=1, precision="bf16", device="cpu", peak_tflops=None,
                        compile_backend=None, grad_checkpointing=False)  # the last of the two runs
    rows = json.loads(out.read_text())
    assert len(rows[0]["train_seconds"]["timm"]) == 1
    assert [(r["precision"], r["native"]) for r in rows] == [("fp32", True), ("bf16", False)]
    assert all(r["infer_ratio"] > 0 for r in rows)
    assert rows[1]["max_abs_diff"] < 0.1  # both models under the same bf16 autocast
    printed = capsys.readouterr().out
    assert "vit_tiny_patch16_224" in printed and "mmkit/timm" in printed and "bf16 (emulated)" in printed


def test_spread_is_relative_interquartile_range():
    from mmkit.cli.bench.vit import _spread

    assert _spread([2.0]) == 0.0
    assert _spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert _spread([1.0, 1.0, 2.0, 2.0]) == pytest.approx((2.0 - 1.0) / 1.5)  # q1=1, q3=2, median 1.5


def test_flops_and_mfu_columns():
    """FLOPs per image are counted once, on timm's standard ViT, for both sides; MFU needs a peak."""
    rows = run_vit_bench(models=("vit_tiny_patch16_224",), batch_size=2, image_size=32, steps=1, warmup=0,
                         threads=1, timm_kwargs=TINY, peak_tflops=0.5)
    row = rows[0]
    # one block on 4 patches + the class token: mostly the 2 * params * tokens of the Linear layers
    linear = 12 * 192 * 192 * 5 + 192 * 3 * 16 * 16 * 4
    assert 2 * linear <= row["infer_flops_per_image"] <= 2 * linear * 1.1
    assert 2.5 * row["infer_flops_per_image"] <= row["train_flops_per_image"] <= 3.5 * row["infer_flops_per_image"]
    for mode in ("infer", "train"):
        for impl in ("mmkit", "timm"):
            assert row[f"{mode}_{impl}_mfu"] == pytest.approx(
                row[f"{mode}_flops_per_image"] * row[f"{mode}_{impl}_ips"] / 0.5e12)
    assert format_rows(rows)[1][8].endswith("%")  # the MFU columns: 8 and 9
    unpeaked = run_vit_bench(models=("vit_tiny_patch16_224",), batch_size=2, image_size=32, steps=1, warmup=0,
                             threads=1, timm_kwargs=TINY)[0]
    assert unpeaked["infer_mmkit_mfu"] is None and format_rows([unpeaked])[1][8:10] == ["-", "-"]


def test_the_title_names_each_precisions_peak():
    """A GPU's bf16 and fp32 peaks differ ~15x (tensor cores or not): the title names the one each row divides by."""
    from mmkit.cli.bench.vit import _peaks

    rows = [{"precision": "bf16", "peak_tflops": 989.4}, {"precision": "fp32", "peak_tflops": 66.9}]
    assert _peaks(rows) == "; MFU against the dense peak: bf16 989.4, fp32 66.9 TFLOP/s"
    assert _peaks([{"precision": "fp32", "peak_tflops": None}]) == ""


@pytest.mark.parametrize("device", ["cuda", "banana"])
def test_a_device_this_machine_lacks_is_one_line(device, capsys):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["--models", "vit_tiny_patch16_224", "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmkit bench vit: error: --device") and err.count("\n") == 1


def test_compiled_and_checkpointed_rows_time_the_same_function():
    """`--compile aot_eager` (inductor's tracing without its code generation, for speed here) and
    `--grad-checkpointing`: both models compiled in the warmup round, the same logits, the row and the table
    say so, and checkpointing keeps less for the backward pass in both; no warmup is refused."""
    kw = dict(models=("vit_tiny_patch16_224",), batch_size=2, image_size=32, steps=1, warmup=1, threads=1,
              timm_kwargs={**TINY, "depth": 3})
    (plain,) = run_vit_bench(**kw)
    rows = run_vit_bench(**kw, compile_backend="aot_eager", grad_checkpointing=True)
    (row,) = rows
    assert row["compiled"] == "aot_eager" and row["grad_checkpointing"] and row["max_abs_diff"] <= 1e-4
    assert all(row[f"{mode}_ratio"] > 0 for mode in ("infer", "train"))
    assert format_rows(rows)[1][1] == "fp32, compiled (aot_eager), grad ckpt"
    for impl in ("mmkit", "timm"):
        assert 0 < row[f"train_{impl}_activation_mb"] < plain[f"train_{impl}_activation_mb"] / 2, impl
    with pytest.raises(ValueError, match="^--compile needs --warmup >= 1"):
        run_vit_bench(warmup=0, compile_backend="inductor")

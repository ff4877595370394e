"""Shared bench timing helpers: alternating order, warm-up excluded, thread count restored."""
import argparse
import json

import pytest
import torch

from mmkit.cli.bench.common import add_run_options, add_sizes_option, interleaved, torch_threads, write_json


def test_interleaved_alternates_order_and_skips_warmup():
    calls = []
    runs = {"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b") or len(calls)}
    seconds, outputs = interleaved(runs, rounds=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in seconds.items()} == {"a": 2, "b": 2}
    assert outputs == {"a": 5, "b": 6}


def test_interleaved_can_keep_gradients_and_synchronise_around_each_call():
    events = []
    runs = {"a": lambda: events.append(("a", torch.is_grad_enabled()))}
    seconds, _ = interleaved(runs, rounds=2, warmup=0, no_grad=False, sync=lambda: events.append("sync"))
    assert events == ["sync", ("a", True), "sync"] * 2 and len(seconds["a"]) == 2
    interleaved(runs, rounds=1, warmup=0)
    assert events[-1] == ("a", False)  # the default: no gradients, as the tools run


def test_torch_threads_restores_the_count_after_an_error():
    before = torch.get_num_threads()
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise ValueError
    except ValueError:
        pass
    assert torch.get_num_threads() == before


def test_shared_options_and_json_output(tmp_path):
    p = argparse.ArgumentParser()
    add_sizes_option(p, {"tiny": (8, 1, 2, 50), "big": (16, 2, 4, 90)})
    add_run_options(p)
    args = p.parse_args(["--sizes", "big", "--rounds", "5", "--json", str(tmp_path / "r.json")])
    assert (args.sizes, args.rounds, args.warmup, args.threads) == (["big"], 5, 1, None)
    assert p.parse_args([]).sizes == ["tiny", "big"]
    write_json(args.json, [{"ratio": 1.5}])
    assert json.loads((tmp_path / "r.json").read_text()) == [{"ratio": 1.5}]
    write_json(None, [1])  # no --json: nothing written, no error


def test_bench_quantize_defaults_per_device_and_keeps_int8_on_the_cpu():
    from mmkit.cli.bench.common import bench_quantize

    assert bench_quantize(None, "cpu") == ["none", "int8"] and bench_quantize(None, "cuda:1") == ["none"]
    assert bench_quantize(["int8"], "cpu") == ["int8"] and bench_quantize(["none"], "cuda") == ["none"]
    with pytest.raises(ValueError, match="--quantize int8 runs on the CPU.*--device cuda:1"):
        bench_quantize(["none", "int8"], "cuda:1")


@pytest.mark.parametrize("bench, bad", [
    ("vit", ["--batch-size", "0"]), ("vit", ["--threads", "0"]), ("text", ["--threads", "0"]),
    ("embed", ["--rounds", "0"]), ("translate", ["--warmup", "-1"]), ("generate", ["--grid", "x"]),
    ("transcribe", ["--rounds", "0"]), ("transcribe", ["--hf-batch-sizes", "8", "0"]),
    ("label", ["--num-workers", "-1"]),
])
def test_every_bench_refuses_a_bad_count_as_a_usage_error(bench, bad, capsys):
    from mmkit.cli.bench import main

    with pytest.raises(SystemExit) as exit_:
        main([bench, *bad])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"argument {bad[0]}: " in err.splitlines()[-1] and ("must be >= " in err or "not an integer" in err)

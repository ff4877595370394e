"""Shared bench timing helpers: alternating order, warm-up excluded, thread count restored."""
import argparse
import json

import pytest
import torch

from mmkit.cli.bench import StepFailed
from mmkit.cli.bench import main as bench_main
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


def _usage_error(argv: list[str], capsys) -> str:
    """The last stderr line of `mmkit bench ARGV`, which must be argparse's usage error (exit 2)."""
    from mmkit.cli.bench import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err.splitlines()[-1]


BENCHES = ("vit", "transcribe", "label", "text", "translate", "generate", "embed")


@pytest.mark.parametrize("bench", BENCHES)
def test_every_bench_refuses_an_unwritable_json_before_any_work(bench, tmp_path, capsys):
    """--json used to be opened after the whole run (`bench vit --json /proc/x.json`: a traceback, results lost)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for path, message in ((blocker / "r.json", f"{blocker}: a file, not a folder"), (tmp_path, "is a folder"),
                          ("/proc/r.json", "/proc: cannot write there")):
        assert message in _usage_error([bench, "--json", str(path)], capsys)
    assert blocker.read_text() == ""


@pytest.mark.parametrize("bench", ["vit", "transcribe", "text", "translate", "generate", "embed"])
def test_every_bench_bounds_threads_by_the_machine(bench, capsys):
    """`--threads 100000` crashed torch (bench transcribe: a RuntimeError traceback from its processes)."""
    import os

    assert f"argument --threads: must be <= {os.cpu_count() or 1}, got 100000" in _usage_error(
        [bench, "--threads", "100000"], capsys)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--guidance", "nan"], "argument --guidance: must be finite, got nan"),
    (["generate", "--guidance", "-1"], "argument --guidance: must be >= 0, got -1.0"),  # as `mmkit generate`
    (["vit", "--peak-tflops", "nan"], "argument --peak-tflops: must be finite, got nan"),
    (["vit", "--peak-tflops", "0"], "argument --peak-tflops: must be >= 0.001, got 0.0"),
    (["translate", "--beams", "1", "100000"], "argument --beams: must be <= 32, got 100000"),
    (["label", "--precision", "bogus"], "argument --precision: invalid choice: 'bogus'"),  # the child's, after work
])
def test_benches_refuse_impossible_values_as_usage_errors(argv, message, capsys):
    assert message in _usage_error(argv, capsys)


def test_write_json_replaces_a_file_only_with_a_complete_one(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(TypeError):
        write_json(str(out), {"not json": object()})
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left
    write_json(str(out), {"ratio": 2.0})
    assert json.loads(out.read_text()) == {"ratio": 2.0} and out.read_text().endswith("}\n")


def test_bench_help_exits_0_and_no_name_is_a_usage_error(capsys):
    from mmkit.cli.bench import main

    assert main(["--help"]) == 0 and main(["-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mmkit bench {vit,transcribe,") and "NAME --help" in out
    assert main([]) == 2 and main(["nonsense"]) == 2
    assert capsys.readouterr().err.startswith("usage: mmkit bench")


@pytest.mark.parametrize("argv, problem", [(["nosuch"], "unknown benchmark 'nosuch'"), ([], "name a benchmark")])
def test_an_unknown_or_missing_benchmark_name_says_so(argv, problem, capsys):
    from mmkit.cli.bench import main

    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: mmkit bench {vit,") and err[1].startswith(f"mmkit bench: error: {problem}")


@pytest.mark.parametrize("raised, code, line", [
    (lambda: StepFailed(["python", "-m", "mmkit", "transcribe", "x.wav"], 2, "INFO loading\nmmkit transcribe: error: "
                        "no config.json in m/\n"), 2,
     "mmkit bench transcribe: error: python -m mmkit transcribe ... failed (2): mmkit transcribe: error: no "
     "config.json in m/"),
    (lambda: StepFailed(["python", "-c", "x"], -9, ""), 1,
     "mmkit bench transcribe: error: python -c x ... failed (-9): no message"),
    (lambda: KeyboardInterrupt(), 130, "mmkit bench transcribe: interrupted"),
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                          "you tried to allocate 10240000000000 bytes. Error code 12 (Cannot allocate memory)"), 1,
     "mmkit bench transcribe: error: out of memory (tried to allocate 9,536.7 GiB); choose smaller sizes"),
    (lambda: MemoryError(), 1, "mmkit bench transcribe: error: out of memory; choose smaller sizes"),
    (lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1048576 bytes."), 1,
     "mmkit bench transcribe: error: out of memory (tried to allocate 1.0 MiB); choose smaller sizes"),
])
def test_a_failed_step_or_an_interruption_is_one_line(monkeypatch, capsys, raised, code, line):
    """A process the bench ran failing (a bad --model) was a RuntimeError traceback with its stderr's last 3,000
    characters; Ctrl-C a KeyboardInterrupt traceback; sizes past the machine's memory (`bench generate
    --codebook-size 1e10`) the allocator's traceback."""
    import mmkit.cli.bench.transcribe as bench_transcribe

    def fails(argv):
        raise raised()

    monkeypatch.setattr(bench_transcribe, "main", fails)
    assert bench_main(["transcribe"]) == code
    assert capsys.readouterr().err.splitlines() == [line]


def test_other_runtime_errors_are_not_taken_for_memory(monkeypatch):
    import mmkit.cli.bench.transcribe as bench_transcribe

    def fails(argv):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(bench_transcribe, "main", fails)
    with pytest.raises(RuntimeError, match="shapes"):
        bench_main(["transcribe"])


@pytest.mark.parametrize("argv, line", [
    (["text", "--model", ""], "mmkit bench text: error: argument --model: empty: give a path"),
    (["translate", "--held-out", " "], "mmkit bench translate: error: argument --held-out: empty: give a path"),
    (["label", "--workdir", ""], "mmkit bench label: error: argument --workdir: empty: give a path"),
    (["transcribe", "--transcripts", ""], "mmkit bench transcribe: error: argument --transcripts: empty: give a path"),
    (["vit", "--models", ","], "mmkit bench vit: error: --models: no model name given"),
])
def test_an_empty_path_or_model_list_is_a_usage_error(argv, line, capsys):
    """`--model ""` (an unset variable) ran the default benchmark, exit 0; `--models ,` printed an empty table."""
    with pytest.raises(SystemExit) as stopped:
        bench_main(argv)
    assert stopped.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == line

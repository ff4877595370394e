"""Smoke test of `mmkit bench transcribe` end to end (real subprocesses on both sides, a tiny
checkpoint): the two decode the same tokens and the report holds together; --device is refused in one
line where this machine lacks it (or a path cannot run there) and reaches every process. Never timings."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from mmkit.cli.bench.transcribe import (
    format_report, run_transcribe_bench, word_error_rate, write_audio_files, write_toy_checkpoint,
)


def test_word_error_rate_ignores_case_and_punctuation():
    assert word_error_rate(["Hello, World!", "the  cat's hat"], ["hello world", "The cat's hat"]) == 0.0
    assert word_error_rate(["a cat sat", "dog"], ["the cat", "a dog"]) == 3 / 4  # 1 sub + 1 ins, 1 del


@pytest.mark.slow
def test_bench_runs_both_processes_on_the_same_tokens(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the bench makes its work folder
    model = write_toy_checkpoint(tmp_path / "model", d_model=64, encoder_layers=1, decoder_layers=1, heads=2,
                                 n_text_tokens=300)
    files = write_audio_files(tmp_path / "audio", 3, min_seconds=1.0, max_seconds=3.0)
    # the guard changes only windows that loop: these do not, so the tokens stay identical
    result = run_transcribe_bench(model, files, max_new_tokens=6, batch_size=2, hf_batch_sizes=(2, 1), threads=1,
                                  repetition_guard=True, precisions=("bf16",))
    references = ("transformers_b2", "transformers_b1")
    assert {k: result["tokens_identical"][k] for k in references} == {"transformers_b2": True, "transformers_b1": True}
    assert {k: result["files_identical"][k] for k in references} == {"transformers_b2": 3, "transformers_b1": 3}
    assert 0 < result["tokens_generated"] <= 3 * 6
    # bf16 (emulated where the CPU lacks it: slow, still correct) is timed and compared with fp32, not asserted equal
    assert set(result["seconds"]) == {"mmkit", "mmkit_bf16", "transformers_b2", "transformers_b1"}
    assert 0 <= result["files_identical"]["mmkit_bf16"] <= 3 and result["precisions"] == ["bf16"]
    assert all(len(v) == 1 and v[0] > 0 for v in result["seconds"].values())
    report = format_report(result, "tiny")
    assert report.splitlines()[0] == "tiny" and "yes (3/3)" in report and "repetition guard" in report
    assert [p.name for p in scratch.iterdir() if p.name.startswith("mmkit")] == []  # were left in /tmp


@pytest.mark.slow
def test_the_reference_scripts_decode_with_beams(tmp_path):
    """`--beam-size`: transformers' `generate(num_beams=...)` runs in the reference script (the tokens are compared
    and reported, not asserted: its beam ranking is not openai's)."""
    model = write_toy_checkpoint(tmp_path / "model", d_model=64, encoder_layers=1, decoder_layers=1, heads=2,
                                 n_text_tokens=300)
    files = write_audio_files(tmp_path / "audio", 2, min_seconds=1.0, max_seconds=3.0)
    result = run_transcribe_bench(model, files, max_new_tokens=5, batch_size=2, hf_batch_sizes=(2,), threads=1,
                                  beam_size=2)
    assert set(result["seconds"]) == {"mmkit", "transformers_b2"} and 0 < result["tokens_generated"] <= 2 * 5
    assert 0 <= result["files_identical"]["transformers_b2"] <= 2 and result["beam_size"] == 2


@pytest.mark.slow
def test_bench_adds_mmkit_int8_and_faster_whisper_rows(tmp_path):
    pytest.importorskip("faster_whisper", reason="faster-whisper is an optional reference")
    # English-only: faster-whisper decides "multilingual" from the vocabulary size (>= 51865), so a
    # small multilingual toy would get a prompt without its language token there (and transformers
    # refuses a language for English-only models: its rows are the other test's)
    model = write_toy_checkpoint(tmp_path / "model", d_model=64, encoder_layers=1, decoder_layers=1, heads=2,
                                 n_text_tokens=300, multilingual=False)
    files = write_audio_files(tmp_path / "audio", 2, min_seconds=1.0, max_seconds=3.0)
    result = run_transcribe_bench(model, files, max_new_tokens=6, batch_size=2, hf_batch_sizes=(), threads=1,
                                  mmkit_quantize=("int8",), faster_whisper=("float32", "int8"),
                                  transcripts={str(f): "no words here" for f in files}, audio_contexts=(10,),
                                  decoding="default")  # each tool's own fallback and thresholds
    mmkit_rows = {"mmkit", "mmkit_int8", "mmkit_ctx10s", "mmkit_int8_ctx10s"}  # fp32 runs though only int8 was asked
    assert set(result["seconds"]) == mmkit_rows | {"faster_whisper_float32", "faster_whisper_int8"}
    assert "fastest_same_tokens" not in result and set(result["ratio_by_path"]) == mmkit_rows
    assert set(result["ratio"]) == {"faster_whisper_float32", "faster_whisper_int8"}
    # every process decoded both files; identity with mmkit is reported, not asserted: faster-whisper
    # computes its own log-Mel features (numpy STFT), and on real speech its fp32 text differs from
    # both mmkit's and transformers' on some clips
    assert set(result["files_identical"]) == mmkit_rows - {"mmkit"} | {"faster_whisper_float32", "faster_whisper_int8"}
    assert all(0 <= n <= 2 for n in result["files_identical"].values())
    assert set(result["wer"]) == set(result["seconds"]) and all(w >= 0 for w in result["wer"].values())
    assert result["decoding"] == "default"
    # per reference, the fastest mmkit path at equal or lower WER (when one reaches it) and the ratio there
    for name, (best, ratio) in result["ratio_equal_wer"].items():
        assert name in result["ratio"] and best in mmkit_rows and ratio > 0
        assert result["wer"][best] <= result["wer"][name]
    report = format_report(result, "tiny")
    assert "faster_whisper_int8" in report and "mmkit_int8" in report and "WER" in report
    assert "default fallback" in report


def test_bench_rejects_an_unknown_decoding_or_precision(tmp_path):
    with pytest.raises(ValueError, match="decoding"):
        run_transcribe_bench(tmp_path, [], decoding="beam")
    with pytest.raises(ValueError, match="precisions"):
        run_transcribe_bench(tmp_path, [], precisions=("fp16",))


@pytest.mark.parametrize("native", [True, False])
def test_auto_times_bf16_only_where_native(native, monkeypatch):
    from mmkit.cli.bench.common import bench_precisions
    from mmkit.inference import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    assert bench_precisions(["auto"]) == (["fp32", "bf16"] if native else ["fp32"])
    assert bench_precisions(["fp32", "bf16"]) == ["fp32", "bf16"]


def _no_heavy_work(monkeypatch):
    from mmkit.cli.bench import transcribe

    def refuse(*args, **kwargs):
        raise AssertionError("the bench started work it should have refused")
    for name in ("write_toy_checkpoint", "write_audio_files", "run_transcribe_bench"):
        monkeypatch.setattr(transcribe, name, refuse)
    return transcribe


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_in_one_line_before_any_work(monkeypatch, capsys):
    transcribe = _no_heavy_work(monkeypatch)
    assert transcribe.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "CUDA is not available" in err


def test_paths_a_device_cannot_run_are_refused_in_one_line(monkeypatch, capsys):
    import importlib.util

    transcribe = _no_heavy_work(monkeypatch)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if faster-whisper were there
    # CTranslate2 has no float16 kernels on a CPU (it would fail only after the other processes ran)
    assert transcribe.main(["--faster-whisper", "float16"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "float16: not a compute type on --device cpu" in err
    monkeypatch.setattr(transcribe, "check_device", lambda device: torch.device("cuda"))  # as on a GPU machine
    assert transcribe.main(["--device", "cuda", "--quantize", "int8", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--quantize int8 runs on the CPU" in err


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_an_impossible_audio_context_is_refused_before_any_work(value, monkeypatch, capsys):
    transcribe = _no_heavy_work(monkeypatch)
    assert transcribe.main(["--audio-context", "10", value]) == 2  # `mmkit transcribe`'s rule: finite, > 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "audio_context must be a positive number of seconds" in err


def test_a_bad_model_or_audio_is_refused_before_any_process_runs(tmp_path, monkeypatch, capsys):
    """--model /nonexistent was a TokenizerError traceback; a missing --audio file failed the first process."""
    from mmkit.data.whisper_toy_tokenizer import write_toy_tokenizer

    transcribe = _no_heavy_work(monkeypatch)
    model = tmp_path / "model"
    write_toy_tokenizer(model, multilingual=True)
    clip = tmp_path / "clip.wav"
    import soundfile as sf

    sf.write(clip, transcribe.synth_speechlike(1.0), transcribe.SAMPLE_RATE)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    cases = [
        (["--model", str(tmp_path / "missing")], "missing: not a folder"),
        (["--model", str(clip)], "clip.wav: not a folder"),
        (["--model", str(tmp_path)], "no Whisper tokenizer files"),
        (["--model", str(model), "--language", "klingon"], "unknown language 'klingon'"),
        (["--model", str(model), "--audio", str(clip), str(tmp_path / "gone.wav")], "gone.wav: no such file"),
        (["--audio", str(tmp_path)], f"--audio {tmp_path}: a folder"),
        (["--audio", str(not_audio)], "notes.wav: not an audio file libsndfile reads"),
    ]
    for argv, message in cases:
        assert transcribe.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, (argv, err)
    (model / "model.bin").write_bytes(b"")  # a CTranslate2 folder: no transformers rows
    assert transcribe.main(["--model", str(model), "--hf-batch-sizes", "1"]) == 2
    assert "is a CTranslate2 folder" in capsys.readouterr().err


def test_fw_compute_types_per_device(monkeypatch):
    import importlib.util

    from mmkit.cli.bench.speech_references import fw_compute_types

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if faster-whisper were there
    assert fw_compute_types(None, "cpu") == ["int8", "float32"]
    assert fw_compute_types(None, "cuda:1") == ["float16", "int8_float16"]
    assert fw_compute_types(["int8_float16", "float32"], "cuda") == ["int8_float16", "float32"]
    assert fw_compute_types(None, "mps") == [] and fw_compute_types([], "cpu") == []
    with pytest.raises(ValueError, match="int8_float16"):
        fw_compute_types(["int8", "int8_float16"], "cpu")
    with pytest.raises(ValueError, match="mps"):
        fw_compute_types(["float32"], "mps")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # not installed
    assert fw_compute_types(None, "cpu") == []  # its rows left out
    with pytest.raises(ValueError, match="--faster-whisper needs faster-whisper, which is not installed"):
        fw_compute_types(["int8"], "cpu")  # was found after the other processes had run: a traceback


def test_files_of_one_name_are_compared_with_their_own_transcripts(tmp_path):
    """x/a.wav and y/a.wav: `mmkit transcribe` writes a.json and a-2.json; both were read from a.json."""
    from mmkit.cli.bench.transcribe import _mmkit_tokens

    for stem, token in (("a", 1), ("a-2", 2)):
        (tmp_path / f"{stem}.json").write_text(json.dumps({"segments": [{"tokens": [token]}]}))
    assert _mmkit_tokens(tmp_path, [Path("x/a.wav"), Path("y/a.wav")]) == {"x/a.wav": [1], "y/a.wav": [2]}


def test_every_process_gets_the_device(tmp_path, monkeypatch):
    """The command lines and reference arguments, from a stand-in for the subprocess runner that
    writes each process's tokens (the same for all): nothing runs, no checkpoint but a tokenizer."""
    from mmkit.cli.bench import transcribe
    from mmkit.data.whisper_toy_tokenizer import write_toy_tokenizer

    model = tmp_path / "model"
    write_toy_tokenizer(model, 300)
    (model / "model.bin").write_bytes(b"")  # a CTranslate2 folder: faster-whisper reads it, nothing converted
    files = [tmp_path / "a.wav", tmp_path / "b.wav"]
    commands = []

    def fake_run(cmd, env):
        commands.append(cmd)
        if "--output-dir" in cmd:  # mmkit transcribe
            out = Path(cmd[cmd.index("--output-dir") + 1])
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                (out / f"{f.stem}.json").write_text(json.dumps({"segments": [{"tokens": [5, 6]}]}))
        elif len(cmd) == 4:  # a reference script with its JSON arguments
            args = json.loads(cmd[3])
            Path(args["out"]).write_text(json.dumps({str(f): [5, 6] for f in files}))
        return 1.0

    monkeypatch.setattr(transcribe, "_run", fake_run)
    result = run_transcribe_bench(model, files, hf_batch_sizes=(2,), faster_whisper=("float16",),
                                  precisions=("fp32", "fp16"), device="cuda:1")
    mmkit = [c for c in commands if "--output-dir" in c]
    references = {Path(json.loads(c[3])["out"]).stem: json.loads(c[3]) for c in commands if len(c) == 4}
    assert len(mmkit) == 2 and all(c[c.index("--device") + 1] == "cuda:1" for c in mmkit)
    assert sorted(c[c.index("--precision") + 1] for c in mmkit) == ["fp16", "fp32"]
    assert references["hf_b2"]["device"] == "cuda:1"
    assert (references["fw_float16"]["device"], references["fw_float16"]["device_index"]) == ("cuda", 1)
    assert result["device"] == "cuda:1" and all(result["tokens_identical"].values())
    assert "2 files on cuda:1," in format_report(result, "tiny")
    with pytest.raises(ValueError, match="fp16"):  # fp16 autocast is a GPU path
        run_transcribe_bench(model, files, precisions=("fp16",))
    commands.clear()
    result = run_transcribe_bench(model, files, hf_batch_sizes=(2,), faster_whisper=("float16",), device="cuda",
                                  beam_size=3)  # beams on every side
    mmkit = [c for c in commands if "--output-dir" in c]
    references = [json.loads(c[3]) for c in commands if len(c) == 4]
    assert [c[c.index("--beam-size") + 1] for c in mmkit] == ["3"] and [r["beam_size"] for r in references] == [3, 3]
    assert result["beam_size"] == 3 and "beam 3 at temperature 0" in format_report(result, "tiny")


def _stub_processes(monkeypatch, files, seconds, tokens):
    """A stand-in for the subprocess runner: each process (named by its output folder or file) takes
    `seconds[name]` and writes `tokens.get(name, [5, 6])` for every file. Nothing runs."""
    from mmkit.cli.bench import transcribe

    def fake_run(cmd, env):
        if "--output-dir" in cmd:  # mmkit transcribe
            out = Path(cmd[cmd.index("--output-dir") + 1])
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                segments = [{"tokens": tokens.get(out.name, [5, 6])}]
                (out / f"{f.stem}.json").write_text(json.dumps({"segments": segments}))
            return seconds[out.name]
        if len(cmd) == 4:  # a reference script with its JSON arguments
            out = Path(json.loads(cmd[3])["out"])
            name = {"hf_b2": "transformers_b2"}.get(out.stem, out.stem.replace("fw_", "faster_whisper_"))
            out.write_text(json.dumps({str(f): tokens.get(name, [5, 6]) for f in files}))
            return seconds[name]
        return 0.5  # an import-only process

    monkeypatch.setattr(transcribe, "_run", fake_run)


def test_the_headline_ratio_is_against_fp32_and_a_faster_path_is_named_only_with_fp32s_tokens(tmp_path,
                                                                                               monkeypatch):
    """The ratio divided each reference by the fastest mmkit path (int8 here) however different its tokens."""
    from mmkit.data.whisper_toy_tokenizer import write_toy_tokenizer

    model = tmp_path / "model"
    write_toy_tokenizer(model, 300)
    (model / "model.bin").write_bytes(b"")  # a CTranslate2 folder: nothing converted
    files = [tmp_path / "a.wav", tmp_path / "b.wav"]
    seconds = {"mmkit": 4.0, "mmkit_bf16": 2.0, "mmkit_int8": 1.0, "faster_whisper_int8": 3.0}
    _stub_processes(monkeypatch, files, seconds, {"mmkit_int8": [5, 7]})  # int8 decodes other tokens
    result = run_transcribe_bench(model, files, hf_batch_sizes=(), faster_whisper=("int8",),
                                  mmkit_quantize=("none", "int8"), precisions=("fp32", "bf16"))
    assert result["ratio"] == {"faster_whisper_int8": 3.0 / 4.0}  # against fp32, not int8's 1.0 s
    assert result["ratio_by_path"] == {"mmkit": {"faster_whisper_int8": 0.75},
                                       "mmkit_bf16": {"faster_whisper_int8": 1.5},
                                       "mmkit_int8": {"faster_whisper_int8": 3.0}}
    assert result["fastest_same_tokens"] == "mmkit_bf16"  # int8 is faster, but not fp32's tokens
    assert "fastest_mmkit" not in result and "ratio_equal_wer" not in result
    report = format_report(result, "tiny")
    assert "x mmkit = median s over mmkit fp32's" in report
    assert "fastest mmkit path with fp32's tokens on every file: mmkit_bf16" in report
    rows = {line.split()[0]: line.split() for line in report.splitlines() if line.startswith("mmkit")}
    assert rows["mmkit_int8"][1:] == ["3.00", "0/2", "files"] and rows["mmkit"][1:] == ["0.75", "(is", "fp32)"]
    # with transcripts, the fastest path is named per reference at no higher WER instead
    texts = {str(f): "" for f in files}
    result = run_transcribe_bench(model, files, hf_batch_sizes=(), faster_whisper=("int8",),
                                  mmkit_quantize=("none", "int8"), precisions=("fp32", "bf16"), transcripts=texts)
    assert "fastest_same_tokens" not in result and result["ratio"] == {"faster_whisper_int8": 0.75}
    best, ratio = result["ratio_equal_wer"]["faster_whisper_int8"]
    assert result["wer"][best] <= result["wer"]["faster_whisper_int8"] and ratio == 3.0 / seconds[best]

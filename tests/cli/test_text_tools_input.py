"""Bad input to the text tools (`mmkit embed`, `classify-text`, `fill-mask`, `generate-text`): unusable
devices, out-of-range options, unwritable outputs and non-UTF-8 arguments are one line on stderr, exit 2,
before the model loads; texts with nothing visible are bad rows, not vectors or labels."""
from __future__ import annotations

import json

import pytest
from _text_tools import one_line, write_text_tool_models

from mmkit.cli import main

NOT_UTF8 = "\udcff\udcfe bad"  # what Python makes of the argument bytes b"\xff\xfe bad" (surrogateescape)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_text_tool_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("the cat sees the moon.\na dog\n")
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: the mistake must be met before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    for where in ("mmkit.inference.encoder.load_encoder", "mmkit.inference.text_generation.load_text_generator"):
        monkeypatch.setattr(where, refuse)


def _argv(tool: str, models: dict, texts, tmp_path) -> list[str]:
    if tool in ("embed", "classify-text"):
        out = tmp_path / ("v.npy" if tool == "embed" else "p.csv")
        return [tool, str(texts), "--model", str(models[tool]), "--out", str(out), "--quiet"]
    return [tool, "the cat [MASK]" if tool == "fill-mask" else "The cat", "--model", str(models[tool])]


TOOLS = ["embed", "classify-text", "fill-mask", "generate-text"]


@pytest.mark.parametrize("tool", TOOLS)
def test_cuda_without_cuda_and_meta_are_one_line_before_loading(models, texts, tmp_path, monkeypatch, capsys,
                                                                no_model_load, tool):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as on a machine without a GPU
    for device, message in (("cuda", "--device cuda: CUDA is not available"),
                            ("meta", "--device meta: mmkit runs on cpu, cuda or mps")):
        assert main([*_argv(tool, models, texts, tmp_path), "--device", device]) == 2
        assert message in one_line(capsys, tool)
    assert list(tmp_path.iterdir()) == [texts]


@pytest.mark.parametrize("tool", ["embed", "classify-text"])
@pytest.mark.parametrize("size", ["0", "-1"])
def test_batch_size_below_one_is_a_usage_error(models, texts, tmp_path, capsys, tool, size):
    with pytest.raises(SystemExit) as e:
        main([*_argv(tool, models, texts, tmp_path), "--batch-size", size])
    assert e.value.code == 2 and f"argument --batch-size: must be >= 1, got {size}" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["embed", "classify-text"])
def test_unwritable_outputs_are_one_line_before_loading(models, texts, tmp_path, capsys, no_model_load, tool):
    suffix = ".npy" if tool == "embed" else ".jsonl"
    (tmp_path / f"folder{suffix}").mkdir()
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / f"folder{suffix}", "it is a folder"),
                         (tmp_path / "file" / f"v{suffix}", "is not a folder"),
                         (f"/proc/v{suffix}", "no file can be made in /proc")):
        assert main([tool, str(texts), "--model", str(models[tool]), "--out", str(out), "--quiet"]) == 2
        assert f"cannot write {out}: " in (err := one_line(capsys, tool)) and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", f"folder{suffix}", "texts.txt"]


def test_an_output_that_cannot_be_renamed_at_the_end_isone_line(models, texts, tmp_path, monkeypatch, capsys):
    from mmkit.inference.text_classify import TextClassifierPredictor

    out = tmp_path / "p.csv"
    predict = TextClassifierPredictor.predict_batches

    def folder_appears(self, *args, **kwargs):  # a folder is made at --out after the check, during the run
        out.mkdir(exist_ok=True)
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(TextClassifierPredictor, "predict_batches", folder_appears)
    assert main(["classify-text", str(texts), "--model", str(models["classify-text"]), "--out", str(out),
                 "--quiet"]) == 1
    assert "cannot write" in (err := one_line(capsys, "classify-text")) and "nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "texts.txt"] and out.is_dir()


@pytest.mark.parametrize("tool", ["fill-mask", "generate-text"])
def test_text_arguments_that_are_not_utf8_are_usage_errors(models, capsys, tool):
    argv = [tool, NOT_UTF8 + (" [MASK]" if tool == "fill-mask" else ""), "--model", str(models[tool])]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "not UTF-8 text (byte 0 of b'\\xff\\xfe bad" in capsys.readouterr().err
    if tool == "generate-text":
        with pytest.raises(SystemExit) as e:
            main(["generate-text", "The cat", "--model", str(models[tool]), "--stop", NOT_UTF8])
        assert e.value.code == 2 and "argument --stop: not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--beam-size", "100000", "must be <= 32, got 100000"),  # 100,000 beams were OOM-killed
    ("--temperature", "inf", "must be finite, got inf"),  # uniform random text
    ("--temperature", "nan", "must be finite, got nan"),
    ("--repetition-penalty", "inf", "must be finite, got inf"),
])
def test_generate_text_refuses_unbounded_beams_and_non_finite_numbers(models, capsys, no_model_load, option, value,
                                                                      message):
    with pytest.raises(SystemExit) as e:
        main(["generate-text", "The cat", "--model", str(models["generate-text"]), option, value])
    assert e.value.code == 2 and f"argument {option}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["embed", "classify-text"])
def test_lines_without_a_visible_character_are_bad_rows(models, tmp_path, capsys, tool):
    src = tmp_path / "texts.txt"
    src.write_bytes(b"the cat\n\x00\n\x01\x02\x1f\n\xe2\x80\x8b\xe2\x80\x8b\n \t \na dog\n")  # NUL, controls, U+200B
    out = tmp_path / "out.jsonl"
    assert main([tool, str(src), "--model", str(models[tool]), "--out", str(out), "--quiet"]) == 0
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 6]
    err = capsys.readouterr().err
    assert "line 2: holds NUL bytes (UTF-16 text? save it as UTF-8); skipped" in err
    assert "line 3: empty text (only control or invisible characters)" in err
    assert "line 4: empty text (only control or invisible characters)" in err and "line 5: empty text" in err
    assert "(4 bad rows skipped)" in err


def test_a_utf16_file_names_its_encoding(models, tmp_path, capsys):
    src = tmp_path / "texts.txt"
    src.write_bytes("the cat\na dog\n".encode("utf-16"))
    assert main(["embed", str(src), "--model", str(models["embed"]), "--out", str(tmp_path / "v.jsonl"),
                 "--quiet"]) == 1  # no usable row: as transcribe when no file was transcribed
    err = capsys.readouterr().err
    assert err.count("UTF-16 text? save it as UTF-8") == 3 and "0 embeddings" in err


def test_dev_null_is_not_a_regular_file(models, tmp_path, capsys, no_model_load):
    assert main(["embed", "/dev/null", "--model", str(models["embed"]), "--out", str(tmp_path / "v.npy")]) == 2
    assert "/dev/null: not a regular file" in one_line(capsys, "embed")


def test_a_jsonl_file_without_the_text_key_is_one_line_as_a_csv_without_the_column(models, tmp_path, capsys,
                                                                                   no_model_load):
    (tmp_path / "t.jsonl").write_text('{"text": "the cat"}\n{"text": "a dog"}\n')
    (tmp_path / "t.csv").write_text("text\nthe cat\n")
    for name, message in (("t.jsonl", "no row is a JSON object with a string 'nope' field"),
                          ("t.csv", "no 'nope' column")):
        assert main(["embed", str(tmp_path / name), "--model", str(models["embed"]), "--text-key", "nope",
                     "--out", str(tmp_path / "v.jsonl")]) == 2
        assert message in one_line(capsys, "embed")
    assert not (tmp_path / "v.jsonl").exists()


def test_an_unterminated_csv_quote_is_one_line_naming_its_line(models, tmp_path, capsys, no_model_load):
    src = tmp_path / "t.csv"
    src.write_text('text,n\nthe cat,1\n"unterminated,3\nthe dog,4\n')  # was read as one text: 'unterminated,3\n...'
    out = tmp_path / "p.jsonl"
    assert main(["classify-text", str(src), "--model", str(models["classify-text"]), "--out", str(out)]) == 2
    assert "t.csv line 3: a quoted field opened in the record starting here is never closed" in \
        one_line(capsys, "classify-text")
    assert not out.exists()


@pytest.mark.parametrize("size", [0, -1])
def test_the_classifier_api_refuses_a_batch_size_below_one(models, size):
    from mmkit.inference.encoder import load_encoder
    from mmkit.inference.text_classify import TextClassifierPredictor

    with pytest.raises(ValueError, match=f"batch size must be >= 1, got {size}"):  # was: range() or no predictions
        TextClassifierPredictor(load_encoder(models["classify-text"]), batch_size=size)


@pytest.mark.parametrize("tool", ["embed", "classify-text", "translate"])
def test_a_file_of_only_bad_rows_exits_1(models, tmp_path, capsys, tool):
    """A binary or mis-chosen file whose every row is bad wrote an output of nothing (all-NaN vectors, no
    predictions) and exited 0; now 1, as transcribe when no file was transcribed (the rows are still reported)."""
    src = tmp_path / "bin.txt"
    src.write_bytes(b"\xff\xfe\x00\x01\n\x80\x81\n")
    out = tmp_path / ("v.npy" if tool == "embed" else "out.jsonl")
    option = "--output" if tool == "translate" else "--out"
    assert main([tool, str(src), "--model", str(models[tool]), option, str(out)]) == 1
    assert "Traceback" not in capsys.readouterr().err

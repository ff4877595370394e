"""`mmkit fill-mask --precision/--quantize`, as `mmkit embed` and `classify-text` take them: fp32 is the exact
default, bf16 and int8 keep each mask's best candidate with probabilities within the tolerances
tests/inference/test_encoder_precision.py states for `load_encoder`, the arithmetic is logged once, and bf16
with int8 is refused in one line."""
from __future__ import annotations

import logging

import pytest
from _bert import write_peaked_mlm

from mmkit.cli import main

TEXTS = ["a [MASK] finds an apple", "the teacher [MASK] a book", "the dog [MASK] the moon."]
@pytest.fixture(scope="module")
def peaked_mlm(tmp_path_factory):
    return write_peaked_mlm(tmp_path_factory.mktemp("mlm"))


def _fill(model, text, capsys, *extra) -> list[str]:
    assert main(["fill-mask", text, "--model", str(model), "--top-k", "3", *extra]) == 0
    return capsys.readouterr().out.splitlines()


def _top(lines: list[str]) -> tuple[float, str]:
    """(probability, token) of the first candidate printed ("   41.07%  sees")."""
    prob, token = lines[0].split("%")
    return float(prob) / 100, token.strip()


def test_fp32_is_the_default_exactly_and_says_nothing(peaked_mlm, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="mmkit"):
        for text in TEXTS:
            assert _fill(peaked_mlm, text, capsys, "--precision", "fp32") == _fill(peaked_mlm, text, capsys)
    assert not [r for r in caplog.records if r.getMessage().startswith("encoder:")]


@pytest.mark.parametrize("precision, quantize, tolerance", [("bf16", "none", 0.05), ("fp32", "int8", 0.15)])
def test_bf16_and_int8_keep_the_best_candidate(peaked_mlm, capsys, caplog, precision, quantize, tolerance):
    """Each mask's best candidate and filled text as fp32's, its probability within `tolerance` and not equal
    (the reduced arithmetic did run), the choice logged once per run."""
    differences = []
    for text in TEXTS:
        exact = _fill(peaked_mlm, text, capsys)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mmkit"):
            got = _fill(peaked_mlm, text, capsys, "--precision", precision, "--quantize", quantize)
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("encoder:")]
        assert len(logged) == 1 and ("int8 Linear weights" in logged[0]) == (quantize == "int8")
        assert _top(got)[1] == _top(exact)[1] and got[-1] == exact[-1] and len(got) == len(exact) == 4
        differences.append(abs(_top(got)[0] - _top(exact)[0]))
    assert 0 < max(differences) <= tolerance


@pytest.mark.parametrize("extra, message", [
    (["--precision", "bf16", "--quantize", "int8"], "int8 Linear layers run on fp32"),
    (["--precision", "fp16"], "fp16 autocast is for GPUs"),
])
def test_settings_the_cpu_cannot_run_are_one_line(peaked_mlm, capsys, extra, message):
    assert main(["fill-mask", TEXTS[0], "--model", str(peaked_mlm), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err and captured.err.startswith("mmkit fill-mask:")
    assert captured.out == ""


def test_unknown_quantization_is_a_usage_error(peaked_mlm, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fill-mask", TEXTS[0], "--model", str(peaked_mlm), "--quantize", "int4"])
    assert stop.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err

"""The argparse types every tool shares (`mmkit.cli.options`): a bad value is argparse's usage error
(one line, exit 2) before any work, never a traceback or a crash later."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

import mmkit.cli
from mmkit import limits
from mmkit.cli.options import Parser, at_least, finite, seed, thread_count, utf8_text


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="tool")
    p.add_argument("text", type=utf8_text)
    p.add_argument("--beams", type=at_least(1, 64), default=1)
    p.add_argument("--penalty", type=finite(-10, 10), default=1.0)
    p.add_argument("--big", type=finite(), default=1.0)
    p.add_argument("--threads", type=thread_count(), default=1)
    p.add_argument("--seed", type=seed, default=0)
    return p


@pytest.mark.parametrize("argv, message", [
    (["a", "--beams", "0"], "--beams: must be >= 1, got 0"),
    (["a", "--beams", "100000"], "--beams: must be <= 64, got 100000"),
    (["a", "--beams", "2.5"], "--beams: not an integer: '2.5'"),
    (["a", "--penalty", "nan"], "--penalty: must be finite, got nan"),
    (["a", "--penalty", "inf"], "--penalty: must be finite, got inf"),
    (["a", "--big", "1e39"], "--big: must be finite in float32 (at most 3.4e38), got 1e39"),  # inf on the logits
    (["a", "--penalty", "1e308"], "--penalty: must be >= -10 and <= 10, got 1e+308"),
    (["a", "--threads", "100000"], f"--threads: must be <= {os.cpu_count()}, got 100000"),  # segfaulted in torch
    (["a", "--seed", str(2**64)], "--seed: must be in [0, 2**64 - 1], got 18446744073709551616"),  # a traceback
    (["a", "--seed", "-1"], "--seed: must be in [0, 2**64 - 1], got -1"),
    (["a", "--penalty", "-1e3"], "--penalty: must be >= -10 and <= 10, got -1000.0"),
    (["a", "--penalty", "-inf"], "--penalty: must be finite, got -inf"),  # argparse alone: "expected one argument"
    (["a", "--big", "-1E39"], "--big: must be finite in float32 (at most 3.4e38), got -1E39"),
    (["\udcff\udcfe bad"], "argument text: not UTF-8 text (byte 0 of b'\\xff\\xfe bad')"),  # argv's surrogates
])
def test_bad_values_are_one_usage_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"tool: error: argument {message}".replace(
        "argument argument", "argument")


def test_good_values_pass_through():
    args = _parser().parse_args(["héllo", "--beams", "64", "--penalty", "-0.5", "--threads", "1",
                                 "--seed", str(2**64 - 1)])
    assert (args.text, args.beams, args.penalty, args.threads, args.seed) == ("héllo", 64, -0.5, 1, 2**64 - 1)


@pytest.mark.parametrize("text, value", [("-1e-1", -0.1), ("-.5", -0.5), ("-2.", -2.0), ("-1E+2", -100.0),
                                         ("-3", -3.0), ("-0.25e1", -2.5)])
def test_negative_numbers_in_any_notation_are_values(text, value):
    """argparse's own rule takes only "-3" and "-0.5" for values: `--length-penalty -1e-1` was "expected one
    argument" (the user had to write `--length-penalty=-1e-1`)."""
    assert _parser().parse_args(["a", "--big", text]).big == value
    assert _parser().parse_args(["--big", text, "a"]).text == "a"


def test_options_are_still_options(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["a", "--penalty", "--beams", "2"])  # an option, not the value of --penalty
    assert "argument --penalty: expected one argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["a", "-e1"])
    assert "unrecognized arguments: -e1" in capsys.readouterr().err


def test_every_tool_parses_with_the_shared_parser():
    """A tool built on argparse.ArgumentParser would read `-1e-1` as an option again."""
    root = Path(mmkit.cli.__file__).parent
    plain = [str(path.relative_to(root)) for path in sorted(root.rglob("*.py"))
             if "argparse.ArgumentParser(" in path.read_text()]
    assert plain == []


def test_limits_are_torchs():
    """`mmkit.limits` is torch-free; its constants are torch's."""
    assert limits.FLOAT32_MAX == float(torch.finfo(torch.float32).max)
    torch.Generator().manual_seed(limits.MAX_SEED)
    with pytest.raises((RuntimeError, ValueError)):
        torch.Generator().manual_seed(limits.MAX_SEED + 1)
    assert limits.finite32(limits.FLOAT32_MAX) and not limits.finite32(1e39) and not limits.finite32(float("nan"))

"""The argparse types every tool shares (`mmkit.cli.options`): a bad value is argparse's usage error
(one line, exit 2) before any work, never a traceback or a crash later."""
from __future__ import annotations

import argparse
import os

import pytest

from mmkit.cli.options import at_least, finite, seed, thread_count, utf8_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tool")
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

"""`mmkit transcribe`'s option types: the thresholds keep 'none'/'off' (check disabled) and accept their
whole meaningful range, refusing the rest; --threads is bounded by the machine (argparse only, no model)."""
from __future__ import annotations

import os

import pytest

from mmkit.cli.transcribe import _options, _parser


def _parse(*extra: str):
    return _parser().parse_args(["a.wav", "--model", "m", *extra])


def test_thresholds_keep_none_and_off_and_their_whole_range():
    args = _parse("--compression-ratio-threshold", "none", "--logprob-threshold", "OFF",
                  "--no-speech-threshold", "none")
    assert (args.compression_ratio_threshold, args.logprob_threshold, args.no_speech_threshold) == (None, None, None)
    args = _parse("--compression-ratio-threshold", "0", "--logprob-threshold", "0", "--no-speech-threshold", "1")
    assert (args.compression_ratio_threshold, args.logprob_threshold, args.no_speech_threshold) == (0.0, 0.0, 1.0)
    args = _parse()  # openai/whisper's defaults
    assert (args.compression_ratio_threshold, args.logprob_threshold, args.no_speech_threshold) == (2.4, -1.0, 0.6)
    assert _options(_parse("--logprob-threshold", "-3.5")).logprob_threshold == -3.5


def test_counts_have_their_bounds():
    cpus = os.cpu_count() or 1
    args = _parse("--threads", str(cpus), "--beam-size", "32", "--best-of", "32")
    assert (args.threads, args.beam_size, args.best_of) == (cpus, 32, 32)


@pytest.mark.parametrize("extra, message", [
    (["--compression-ratio-threshold", "nan"], "must be finite, got nan"),
    (["--compression-ratio-threshold", "x"], "not a number: 'x'"),
    (["--logprob-threshold", "0.5"], "must be <= 0, got 0.5"),
    (["--no-speech-threshold", "-0.1"], "must be >= 0 and <= 1, got -0.1"),
    (["--threads", "100000"], f"must be <= {os.cpu_count() or 1}, got 100000"),  # segfaulted in torch
    (["--beam-size", "33"], "must be <= 32, got 33"),
    (["--best-of", "100000"], "must be <= 32, got 100000"),
    (["--max-new-tokens", "1.5"], "not an integer: '1.5'"),
    (["--seed", str(10**23)], f"must be in [0, 2**64 - 1], got {10**23}"),  # every file failed to decode
    (["--condition-on-previous-text", "yes"], "expected true or false, got 'yes'"),
    (["--long-form", "seek"], "invalid choice: 'seek' (choose from 'windows', 'sequential')"),
])
def test_values_out_of_range_are_one_usage_line(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        _parse(*extra)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"mmkit transcribe: error: argument {extra[0]}: {message}"


def test_initial_prompt_reaches_the_options_and_beam_help_names_openais_default():
    assert _options(_parse()).initial_prompt is None
    assert _options(_parse("--initial-prompt", "Names: mmkit, Whisper.")).initial_prompt == "Names: mmkit, Whisper."
    assert _parse().beam_size == 1  # greedy stays mmkit's default (speed); the help says openai's is 5
    text = " ".join(_parser().format_help().split())
    assert "openai's whisper command defaults to 5" in text and "--beam-size 5 to match it" in text
    assert "applies to each of them" in text  # the prompt precedes every 30 s window, not the first only


def test_long_form_and_previous_text_reach_the_options_and_the_help_names_the_trade_off():
    default = _options(_parse())
    assert (default.long_form, default.condition_on_previous_text) == ("windows", None)  # today's windows
    sequential = _options(_parse("--long-form", "sequential", "--condition-on-previous-text", "False"))
    assert (sequential.long_form, sequential.condition_on_previous_text) == ("sequential", False)
    assert _options(_parse("--long-form", "sequential", "--condition-on-previous-text", "true")
                    ).condition_on_previous_text is True
    with pytest.raises(ValueError, match="condition_on_previous_text needs long_form='sequential'"):
        _options(_parse("--condition-on-previous-text", "true"))  # windows cannot honour it
    assert _options(_parse("--condition-on-previous-text", "false")).condition_on_previous_text is False
    text = " ".join(_parser().format_help().split())
    assert "batched across files, fast" in text and "openai's transcribe(), exactly" in text and "slower" in text

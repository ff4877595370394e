"""`mmkit translate`'s --repetition-penalty, --no-repeat-ngram-size and --min-new-tokens: they reach the decoding
(the output is the `Translator`'s with the same options), override the model's generation_config.json as
--beam-size does, and bad values are one line, before the model loads. The flags' definitions are shared with
`mmkit generate-text` (`mmkit.cli.options.add_repetition_arguments`), whose defaults stay off."""
from __future__ import annotations

import json
import logging
import shutil

import pytest

from mmkit.cli import main as mmkit_main
from mmkit.inference.translator import TranslationOptions, load_translator
from tests.inference._translation_fixtures import write_rule_dir

TEXTS = ["seven", "one hundred and twenty-three", "third"]


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    """A MarianMT directory whose rows repeat tokens up to their limit (the repetition rules change them)."""
    return write_rule_dir(tmp_path_factory.mktemp("late"), "marian", "late")


@pytest.fixture(scope="module")
def early(tmp_path_factory):
    """A MarianMT directory whose rows end within a token or two (a minimum length changes them)."""
    return write_rule_dir(tmp_path_factory.mktemp("early"), "marian", "early")


@pytest.mark.parametrize("flags, options", [
    (["--no-repeat-ngram-size", "2"], {"no_repeat_ngram_size": 2}),
    (["--repetition-penalty", "1.3", "--beam-size", "3"], {"repetition_penalty": 1.3, "beam_size": 3}),
    (["--min-new-tokens", "4"], {"min_new_tokens": 4}),
], ids=["ngram", "penalty-beams", "min-new-tokens"])
def test_flags_reach_the_decoding(late, early, capsys, flags, options):
    directory = early if "min_new_tokens" in options else late
    assert mmkit_main(["translate", *TEXTS, "--model", str(directory), "--max-length", "12", *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    translator = load_translator(directory)
    assert out == [r.text for r in translator.translate(TEXTS, TranslationOptions(max_new_tokens=12, **options))]
    plain = TranslationOptions(max_new_tokens=12, beam_size=options.get("beam_size", 1))
    assert out != [r.text for r in translator.translate(TEXTS, plain)]  # the flag made a difference


def test_flags_override_the_models_generation_config(late, tmp_path, capsys, caplog):
    """A generation_config.json's no_repeat_ngram_size and repetition_penalty are used unless a flag is given
    (0 and 1 switch them off), and named on the settings line: greedy decoding uses them too."""
    directory = shutil.copytree(late, tmp_path / "m")
    config = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps({**config, "no_repeat_ngram_size": 2,
                                                                   "repetition_penalty": 1.3}))
    translator = load_translator(directory)
    assert translator.defaults == {"no_repeat_ngram_size": 2, "repetition_penalty": 1.3}

    def translated(*flags: str) -> list[str]:
        assert mmkit_main(["translate", *TEXTS, "--model", str(directory), "--max-length", "12", *flags]) == 0
        return capsys.readouterr().out.splitlines()

    with caplog.at_level(logging.INFO):
        own = translated()
    assert "decoding with the model's own settings: repetition_penalty 1.3, no_repeat_ngram_size 2 " \
           "(--repetition-penalty ... --no-repeat-ngram-size ... to choose others)" in caplog.text
    assert own == [r.text for r in translator.translate(TEXTS, translator.default_options(max_new_tokens=12))]
    off = translated("--no-repeat-ngram-size", "0", "--repetition-penalty", "1")
    assert off == [r.text for r in translator.translate(TEXTS, TranslationOptions(max_new_tokens=12))] != own
    ngram_only = translated("--repetition-penalty", "1.0")
    assert ngram_only == [r.text for r in translator.translate(TEXTS, TranslationOptions(
        max_new_tokens=12, no_repeat_ngram_size=2))] != own


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model fails the test: the mistake must be met before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("mmkit.inference.translator.load_translator", refuse)


@pytest.mark.parametrize("value", ["0", "-1.3"])
def test_a_penalty_that_is_not_positive_is_one_line_before_the_model_loads(late, capsys, no_model_load, value):
    assert mmkit_main(["translate", "seven", "--model", str(late), "--repetition-penalty", value]) == 2
    err = capsys.readouterr().err
    assert err == f"mmkit translate: error: repetition_penalty must be a finite number > 0, got {float(value)}\n"


def test_the_flags_are_generate_texts_and_not_given_leave_the_models_defaults():
    """Both tools read a generation config's settings (a GPT-2 directory's too): a flag not given is None."""
    from mmkit.cli.generate_text import _parser as generate_text_parser
    from mmkit.cli.translate import _parser as translate_parser

    names = ("repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "temperature", "beam_size")
    for parser in (generate_text_parser(), translate_parser()):
        assert tuple(getattr(parser.parse_args(["hi", "--model", "m"]), n) for n in names) == (None,) * 5
    names = names[:3]
    flags = ["--repetition-penalty", "1.5", "--no-repeat-ngram-size", "3", "--min-new-tokens", "2"]
    for parser in (generate_text_parser(), translate_parser()):
        assert tuple(getattr(parser.parse_args(["hi", "--model", "m", *flags]), n) for n in names) == (1.5, 3, 2)


def test_a_setting_without_a_flag_is_named_but_not_offered_as_one(tmp_path, capsys, caplog):
    """opus-mt's renormalize_logits (a generation-config setting, no flag) is named on the settings line; only the
    settings that have a flag are offered as flags, and the output is the translator's own."""
    from tests.inference._translation_fixtures import write_renormalize_dir

    directory = write_renormalize_dir(tmp_path / "m")
    with caplog.at_level(logging.INFO):
        assert mmkit_main(["translate", *TEXTS, "--model", str(directory)]) == 0
    assert "decoding with the model's own settings: beam_size 3, renormalize_logits True (--beam-size ... to " \
           "choose others)" in caplog.text
    assert capsys.readouterr().out.splitlines() == [r.text for r in load_translator(directory).translate(TEXTS)]

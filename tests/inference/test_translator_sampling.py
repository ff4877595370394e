"""Sampled translations (`TranslationOptions` temperature / top_k / top_p / seed, `mmkit translate --temperature`):
transformers' `generate(do_sample=True)` tokens under the same global seed, the same translations whatever the
batches or ranks with a seed, a generation config's do_sample read as the model's own settings, and the options
that cannot go together refused in one line."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from mmkit.cli import main as mmkit_main
from mmkit.inference.translator import TranslationOptions, TranslatorError, load_translator

TEXTS = ["seven", "one hundred and twenty-three", "third", "Friday, March 5, 2021", "forty-two",
         "two thousand, four hundred and seventy-three", "the fifth", "nine hundred"]


def _texts(results) -> list[str]:
    return [r.text for r in results]


@pytest.mark.parametrize("settings", [{"temperature": 0.8}, {"temperature": 1.3, "top_k": 7},
                                      {"top_p": 0.8}, {"temperature": 0.7, "top_k": 20, "top_p": 0.9}],
                         ids=["temperature", "top_k", "top_p", "all"])
def test_unseeded_samples_are_transformers_do_sample_tokens_under_the_same_global_seed(marian, settings):
    """Without a seed the sampler draws from torch's global generator, one multinomial draw a step, after the same
    warpers in the same order (temperature, top-k, top-p, after the <pad> ban): transformers' sampled tokens. (Its
    generate() adds top_k 50 where none is given, mmkit no top-k: the reference gets top_k 0, off, then.)"""
    from transformers import AutoTokenizer, MarianMTModel

    translator = load_translator(marian)
    ref, tok = MarianMTModel.from_pretrained(marian).eval(), AutoTokenizer.from_pretrained(marian)
    pad = ref.config.pad_token_id
    for n, text in enumerate(TEXTS[:5]):
        torch.manual_seed(n)
        got = translator.translate([text], TranslationOptions(max_new_tokens=12, **settings))[0].tokens
        torch.manual_seed(n)
        expected = ref.generate(**tok([text], return_tensors="pt"), do_sample=True, max_new_tokens=12,
                                bad_words_ids=[[pad]], **{"top_k": 0, **settings})[0, 1:].tolist()
        assert got == [t for t in expected if t not in (0, pad)], text


def test_top_k_one_samples_the_greedy_translations(marian):
    translator = load_translator(marian)
    greedy = translator.translate(TEXTS)
    assert translator.translate(TEXTS, TranslationOptions(top_k=1, temperature=2.0, seed=5)) == greedy
    assert translator.translate(TEXTS, TranslationOptions(top_k=1)) == greedy


def test_seeded_samples_do_not_depend_on_batches_their_order_or_shares(marian):
    """Line i draws from a seed of (seed, i) alone: batch sizes, the order batches run in, a rank running some of
    them, and a file read in chunks (`first_row`) give the same translations."""
    translator = load_translator(marian)
    options = TranslationOptions(temperature=1.5, seed=7, max_new_tokens=10)
    whole = translator.translate(TEXTS, options)
    for batch_size in (1, 3):
        assert translator.translate(TEXTS, TranslationOptions(temperature=1.5, seed=7, max_new_tokens=10,
                                                              batch_size=batch_size)) == whole
    shared = TranslationOptions(temperature=1.5, seed=7, max_new_tokens=10, batch_size=2)
    batches = translator.plan(TEXTS, shared).batches
    for share in (batches[::2], batches[1::2][::-1]):  # two ranks' shares, one run in reverse order
        part = translator.translate_batches(translator.plan(TEXTS, shared), share, shared)
        assert [part[i] for rows in share for i in rows] == [whole[i] for rows in share for i in rows]
    assert translator.translate(TEXTS[3:], options, first_row=3) == whole[3:]
    assert translator.translate(TEXTS[3:], options) != whole[3:]  # other rows, other seeds
    assert translator.translate(TEXTS, options) == whole  # reproducible
    other = translator.translate(TEXTS, TranslationOptions(temperature=1.5, seed=8, max_new_tokens=10))
    assert other != whole and whole != translator.translate(TEXTS, TranslationOptions(max_new_tokens=10))


@pytest.mark.parametrize("given, error, message", [
    ({"beam_size": 2, "temperature": 0.5}, TranslatorError, "beam search is deterministic"),
    ({"temperature": -1.0}, TranslatorError, "temperature must be >= 0"),
    ({"top_k": 0}, TranslatorError, "top_k must be >= 1"),
    ({"top_p": 1.5}, TranslatorError, r"top_p must be in \(0, 1\]"),
    ({"seed": -1}, TranslatorError, "seed must be in"),
    ({"top_k": 2.5}, TypeError, "top_k must be an integer"),
    ({"temperature": "hot"}, TypeError, "temperature must be a number"),
])
def test_bad_sampling_options_are_refused_in_one_line(given, error, message):
    with pytest.raises(error, match=message):
        TranslationOptions(**given)


def _with_generation_config(marian, tmp_path, settings) -> object:
    directory = shutil.copytree(marian, tmp_path / "m")
    pad = json.loads((directory / "config.json").read_text())["pad_token_id"]
    (directory / "generation_config.json").write_text(json.dumps(
        {"bad_words_ids": [[pad]], "pad_token_id": pad, "decoder_start_token_id": pad, "eos_token_id": 0,
         **settings}))
    return directory


@pytest.mark.parametrize("settings, defaults", [
    ({"do_sample": True}, {"temperature": 1.0, "top_k": 50}),  # transformers' GenerationConfig defaults
    ({"do_sample": True, "temperature": 0.6, "top_k": 0, "top_p": 0.9}, {"temperature": 0.6, "top_p": 0.9}),
    ({"do_sample": False, "temperature": 0.6, "top_k": 5}, {}),  # transformers ignores them without do_sample
], ids=["defaults", "settings", "not-sampling"])
def test_a_generation_config_that_samples_is_the_models_own_setting(marian, tmp_path, settings, defaults):
    """transformers' generate() samples when the generation config says do_sample: so does `translate()` without
    options, with the same tokens under the same global seed; an export keeps the settings."""
    from transformers import AutoTokenizer, MarianMTModel

    directory = _with_generation_config(marian, tmp_path, settings)
    translator = load_translator(directory)
    assert translator.defaults == defaults
    if not defaults:
        return
    ref, tok = MarianMTModel.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    for n, text in enumerate(TEXTS[:3]):
        limit = 2 * len(tok(text)["input_ids"]) + 10  # mmkit's default length rule, given to generate
        torch.manual_seed(n)
        got = translator.translate([text])[0].tokens
        torch.manual_seed(n)
        expected = ref.generate(**tok([text], return_tensors="pt"), max_new_tokens=limit)[0, 1:].tolist()
        assert got == [t for t in expected if t not in (0, ref.config.pad_token_id)]
    export = load_translator(translator.export(tmp_path / "export"))
    assert export.defaults == defaults


def test_the_way_of_decoding_given_overrides_the_models_other_way(marian, tmp_path, caplog):
    """A model's beams give way to sampling options given, and its sampling to a beam count or a temperature of 0
    given, as `generate(...)` arguments override a generation config; a beam-sampling config decodes with beams."""
    beams = load_translator(_with_generation_config(marian, tmp_path / "beams", {"num_beams": 3,
                                                                                  "length_penalty": 0.6}))
    options = beams.default_options(temperature=0.9)
    assert (options.beam_size, options.length_penalty, options.temperature) == (1, 1.0, 0.9)
    with pytest.raises(TranslatorError, match="beam search is deterministic"):
        beams.default_options(top_k=4, beam_size=3)
    sampled = load_translator(_with_generation_config(marian, tmp_path / "sampled", {"do_sample": True,
                                                                                      "top_p": 0.9}))
    assert sampled.default_options(beam_size=2).sampling is False
    assert sampled.default_options(temperature=0.0).sampling is False
    kept = sampled.default_options(temperature=0.5)
    assert (kept.temperature, kept.top_k, kept.top_p) == (0.5, 50, 0.9)
    with caplog.at_level(logging.WARNING):
        both = load_translator(_with_generation_config(marian, tmp_path / "both", {"do_sample": True,
                                                                                    "num_beams": 2}))
    assert both.defaults == {"beam_size": 2} and "beam sampling) is not run" in caplog.text


def test_cli_samples_each_line_from_its_seed(marian, tmp_path, capsys, caplog):
    """`mmkit translate --temperature T --seed S` prints the translator's seeded samples, the same whatever
    --batch-size; --seed without sampling is said to be unused; sampling with --beam-size is a usage error."""
    translator = load_translator(marian)
    expected = _texts(translator.translate(TEXTS, translator.default_options(temperature=1.2, top_p=0.95, seed=3)))
    for batch in ("1", "16"):
        assert mmkit_main(["translate", *TEXTS, "--model", str(marian), "--temperature", "1.2", "--top-p", "0.95",
                           "--seed", "3", "--batch-size", batch]) == 0
        assert capsys.readouterr().out.splitlines() == expected
    with caplog.at_level(logging.WARNING):
        assert mmkit_main(["translate", "seven", "--model", str(marian), "--seed", "3"]) == 0
    assert "--seed 3 is unused: greedy decoding is deterministic" in caplog.text
    capsys.readouterr()
    assert mmkit_main(["translate", "seven", "--model", str(marian), "--temperature", "1", "--beam-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "beam search is deterministic" in err[0]


def test_an_imported_models_sampling_takes_transformers_top_k_unless_given(marian, tmp_path, caplog):
    """transformers' `generate(do_sample=True, temperature=T)` samples among the 50 likeliest tokens (GenerationConfig's
    top_k) where the config sets none: so does a sampling run of an imported MarianMT built by `default_options`
    (the CLI's way), said on the settings line; a top_k of 0 switches top-k off as transformers' does; beams take no
    fallback; an export keeps it."""
    from transformers import AutoTokenizer, MarianMTModel

    translator = load_translator(marian)
    assert translator.sampling_fallbacks == {"top_k": 50}
    assert translator.default_options(temperature=1.4).top_k == 50
    assert translator.default_options(temperature=1.4, top_k=0).top_k is None
    assert translator.default_options(top_k=0).temperature == 1.0  # top_k 0 alone: all tokens, temperature 1
    assert translator.default_options(beam_size=2).top_k is None
    ref, tok = MarianMTModel.from_pretrained(marian).eval(), AutoTokenizer.from_pretrained(marian)
    pad = ref.config.pad_token_id
    differ = 0
    for n, text in enumerate(TEXTS[:4]):
        got = []
        for top_k in (None, 0):
            torch.manual_seed(n)
            got.append(translator.translate([text], translator.default_options(
                temperature=1.6, top_k=top_k, max_new_tokens=12))[0].tokens)
            torch.manual_seed(n)
            expected = ref.generate(**tok([text], return_tensors="pt"), do_sample=True, temperature=1.6,
                                    max_new_tokens=12, bad_words_ids=[[pad]],
                                    **({} if top_k is None else {"top_k": 0}))[0, 1:].tolist()
            assert got[-1] == [t for t in expected if t not in (0, pad)], (text, top_k)
        differ += got[0] != got[1]
    assert differ  # the top-50 cut changed some draws: the comparison tells the two apart
    assert load_translator(translator.export(tmp_path / "export")).sampling_fallbacks == {"top_k": 50}
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert mmkit_main(["translate", "seven", "--model", str(marian), "--temperature", "1.2"]) == 0
    assert "decoding with the model's own settings: top_k 50 (--top-k ... to choose others)" in caplog.text

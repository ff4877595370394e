"""The source's repetition rules (`TranslationOptions.encoder_repetition_penalty` / `encoder_no_repeat_ngram_size`,
`mmkit translate --encoder-repetition-penalty / --encoder-no-repeat-ngram-size`): transformers' `generate` tokens on
a tiny MarianMT and on a tiny T5 summarising, greedy and beam, each row as it decodes alone; a generation config's
settings are the model's own."""
from __future__ import annotations

import json
import shutil

import pytest

from mmkit.cli import main as mmkit_main
from mmkit.inference.translator import TranslationOptions, TranslatorError, load_translator

TEXTS = ["seven", "one hundred and twenty-three", "third", "Friday, March 5, 2021", "forty-two", "the fifth"]
RULES = [{"encoder_repetition_penalty": 1.8}, {"encoder_repetition_penalty": 0.6},
         {"encoder_no_repeat_ngram_size": 1}, {"encoder_no_repeat_ngram_size": 2},
         {"encoder_repetition_penalty": 1.5, "encoder_no_repeat_ngram_size": 3, "repetition_penalty": 1.3}]


def _reference(directory, kind: str, texts, prefix: str = "", **settings) -> list[list[int]]:
    """transformers' tokens, one source at a time, after the start token, up to EOS (Marian's <pad> banned)."""
    from transformers import AutoTokenizer, MarianMTModel, T5ForConditionalGeneration

    ref = (MarianMTModel if kind == "marian" else T5ForConditionalGeneration).from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    extra = {"bad_words_ids": [[ref.config.pad_token_id]]} if kind == "marian" else {}
    out = []
    for text in texts:
        ids = ref.generate(**tok([prefix + text], return_tensors="pt"), do_sample=False, early_stopping=False,
                           **extra, **settings)[0, 1:].tolist()
        out.append(ids[: ids.index(ref.config.eos_token_id)] if ref.config.eos_token_id in ids else ids)
    return out


@pytest.mark.parametrize("beam_size", [1, 3])
def test_marian_source_rules_equal_transformers_generate(marian, beam_size):
    """Batches of 4 (padded sources) give each row transformers' tokens for its source alone; the rules change
    the translations of the plain decoding in most settings (the comparison is not between unchanged outputs)."""
    translator = load_translator(marian)
    plain = translator.translate(TEXTS, TranslationOptions(beam_size=beam_size, max_new_tokens=10, batch_size=4))
    changed = 0
    for rules in RULES:
        got = translator.translate(TEXTS, TranslationOptions(beam_size=beam_size, max_new_tokens=10, batch_size=4,
                                                             **rules))
        assert [r.tokens for r in got] == _reference(marian, "marian", TEXTS, num_beams=beam_size,
                                                     max_new_tokens=10, **rules), rules
        changed += any(a.tokens != b.tokens for a, b in zip(got, plain))
    assert changed >= 2


def test_t5_summarising_with_source_rules_equals_transformers_generate(t5):
    translator = load_translator(t5, prefix="summarize: ")
    for rules in RULES[0], RULES[4]:
        got = translator.translate(TEXTS, TranslationOptions(max_new_tokens=10, batch_size=3, **rules))
        assert [r.tokens for r in got] == _reference(t5, "t5", TEXTS, "summarize: ", max_new_tokens=10, **rules)


def test_source_rules_refuse_bad_values_in_one_line():
    with pytest.raises(TranslatorError, match="encoder_repetition_penalty must be a finite number > 0, got 0"):
        TranslationOptions(encoder_repetition_penalty=0.0)
    with pytest.raises(TranslatorError, match="encoder_no_repeat_ngram_size must be >= 0, got -1"):
        TranslationOptions(encoder_no_repeat_ngram_size=-1)
    with pytest.raises(TypeError, match="encoder_no_repeat_ngram_size must be an integer"):
        TranslationOptions(encoder_no_repeat_ngram_size=1.5)


def test_a_generation_configs_source_rules_are_the_models_own_and_the_cli_overrides_them(marian, tmp_path, capsys):
    directory = shutil.copytree(marian, tmp_path / "m")
    pad = json.loads((directory / "config.json").read_text())["pad_token_id"]
    settings = {"encoder_repetition_penalty": 1.8, "encoder_no_repeat_ngram_size": 2}
    (directory / "generation_config.json").write_text(json.dumps(
        {"bad_words_ids": [[pad]], "pad_token_id": pad, "decoder_start_token_id": pad, "eos_token_id": 0,
         "num_beams": 3, **settings}))
    translator = load_translator(directory)
    assert translator.defaults == {"beam_size": 3, **settings}
    limits = [translator.default_options().limit(len(translator.encode_source(t)), 10**6) for t in TEXTS]
    for text, result, limit in zip(TEXTS, translator.translate(TEXTS), limits):
        assert result.tokens == _reference(directory, "marian", [text], num_beams=3, max_new_tokens=limit)[0]
    assert load_translator(translator.export(tmp_path / "export")).defaults == translator.defaults
    expected = translator.translate(["forty-two"], translator.default_options(encoder_repetition_penalty=1.0))[0]
    assert mmkit_main(["translate", "forty-two", "--model", str(directory), "--encoder-repetition-penalty", "1"]) == 0
    assert capsys.readouterr().out == expected.text + "\n"
    with pytest.raises(SystemExit) as exit:
        mmkit_main(["translate", "forty-two", "--model", str(directory), "--encoder-repetition-penalty", "0"])
    assert exit.value.code == 2 and "--encoder-repetition-penalty: must be > 0" in capsys.readouterr().err

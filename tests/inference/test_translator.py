"""Translator and `mmkit translate`: MarianMT directories translate to transformers' tokens,
batches by length equal one-at-a-time, and bad input (empty lines, over-long sentences,
non-UTF-8 lines, another script, a Whisper checkpoint) gives one clear message, nothing lost."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from mmkit.cli import main as mmkit_main
from mmkit.inference.translator import TranslationOptions, TranslatorError, load_translator
from mmkit.models import Whisper
from tests.inference._translation_fixtures import write_marian_dir, write_native_export, write_t5_dir

TEXTS = ["one hundred and twenty-three", "", "Friday, March 5, 2021", "seven", "Привет мир",
         "two thousand, four hundred and seventy-three", "third"]


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return write_native_export(tmp_path_factory.mktemp("native"))


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    return write_marian_dir(tmp_path_factory.mktemp("marian"))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_marian_directory_translates_to_transformers_tokens(marian, beam_size):
    from transformers import AutoTokenizer, MarianMTModel

    translator = load_translator(marian)
    texts = [t for t in TEXTS if t and t != "Привет мир"]
    got = translator.translate(texts, TranslationOptions(beam_size=beam_size, max_new_tokens=12, batch_size=2))
    ref, tok = MarianMTModel.from_pretrained(marian).eval(), AutoTokenizer.from_pretrained(marian)
    pad = ref.config.pad_token_id
    assert translator.codec.suppress == [pad]  # opus-mt's bad_words_ids: <pad> is never generated
    for text, result in zip(texts, got):
        expected = ref.generate(**tok([text], return_tensors="pt"), num_beams=beam_size, do_sample=False,
                                max_new_tokens=12, bad_words_ids=[[pad]], early_stopping=False)[0, 1:].tolist()
        expected = [t for t in expected if t not in (0, pad)]
        assert result.tokens == expected and result.error is None
        assert result.text == tok.decode(expected, skip_special_tokens=True)


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return write_t5_dir(tmp_path_factory.mktemp("t5"))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_t5_directory_with_a_task_prefix_translates_to_transformers_tokens(t5, beam_size):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    prefix = "translate English to German: "
    directory = t5
    translator = load_translator(directory, prefix=prefix)
    texts = ["seven", "one hundred and twenty-three", "third"]
    got = translator.translate(texts, TranslationOptions(beam_size=beam_size, max_new_tokens=10, batch_size=2))
    ref, tok = T5ForConditionalGeneration.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    for text, result in zip(texts, got):
        ids = tok([prefix + text], return_tensors="pt")
        expected = ref.generate(**ids, num_beams=beam_size, do_sample=False, max_new_tokens=10,
                                early_stopping=False)[0, 1:].tolist()
        assert result.tokens == (expected[: expected.index(1)] if 1 in expected else expected)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_by_length_equals_one_at_a_time_and_rows_stay_aligned(native, beam_size):
    translator = load_translator(native)
    options = TranslationOptions(beam_size=beam_size, batch_size=3, early_stopping=True, max_new_tokens=12)
    batched = translator.translate(TEXTS, options)
    assert [r.source for r in batched] == TEXTS
    assert batched[1].text == "" and batched[1].error is None  # empty line -> empty translation
    assert "cannot encode 2 of 2 words" in batched[4].error and batched[4].text == ""
    for text, row in zip(TEXTS, batched):
        if text and row.error is None:
            alone = translator.translate([text], options)[0]
            assert alone.tokens == row.tokens
            assert len(row.tokens) <= 12


def test_over_long_source_is_truncated_with_a_warning_naming_the_line(native, caplog):
    translator = load_translator(native)
    with caplog.at_level(logging.WARNING):
        out = translator.translate(["seven", "one hundred " * 40])
    assert out[1].error is None and out[1].tokens is not None
    assert "line 2: source of" in caplog.text and "truncated to 48" in caplog.text


def test_cross_attention_rows_are_distributions_over_the_source(native):
    translator = load_translator(native)
    src, tgt, weights = translator.cross_attention("one hundred", [5, 6, 7])
    assert weights.shape == (len(tgt), len(src)) == (4, len(translator.encode_source("one hundred")))
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))
    assert src[-1] == "</s>" and tgt[-1] == "</s>"


def test_refuses_other_checkpoints_with_one_message(tmp_path):
    Whisper(n_mels=8, n_audio_ctx=4, n_text_ctx=8, vocab_size=20, dim=8, encoder_depth=1, decoder_depth=1,
            num_heads=2).save_pretrained(tmp_path / "whisper")
    with pytest.raises(TranslatorError, match="holds a Whisper checkpoint, not a translation model"):
        load_translator(tmp_path / "whisper")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(TranslatorError, match="holds a clip model"):
        load_translator(tmp_path / "clip")
    with pytest.raises(TranslatorError, match="no config.json"):
        load_translator(tmp_path / "nothing")


def test_cli_file_in_file_out_keeps_every_line(native, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes("seven\n\nthird\n".encode() + b"caf\xe9\n" + "Привет мир\none hundred\n".encode())
    out = tmp_path / "out.jsonl"
    assert mmkit_main(["translate", str(src), "--model", str(native), "--output", str(out), "--beam-size", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == ["seven", "", "third", "", "Привет мир", "one hundred"]
    assert rows[1]["translation"] == "" and "error" not in rows[1]
    assert rows[3]["error"] == "line 4: not UTF-8 (byte 0xe9 at column 4)"
    assert "cannot encode" in rows[4]["error"]
    err = capsys.readouterr().err
    assert "line 4: not UTF-8" in err and "line 5:" in err
    txt = tmp_path / "out.txt"
    assert mmkit_main(["translate", str(src), "--model", str(native), "--output", str(txt)]) == 0
    assert len(txt.read_text().split("\n")) == 7  # six lines, each ended
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_cli_text_arguments_and_user_errors(native, tmp_path, capsys):
    assert mmkit_main(["translate", "seven", "third", "--model", str(native), "--max-length", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert mmkit_main(["translate", "seven", "--model", str(tmp_path / "missing")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert mmkit_main(["translate", "seven", "--model", str(native), "--output", str(tmp_path / "x.csv")]) == 2
    assert "use a .txt or .jsonl file" in capsys.readouterr().err
    assert mmkit_main(["translate", "seven", "--model", str(native), "--beam-size", "0"]) == 2
    assert mmkit_main(["translate", str(tmp_path / "missing.txt"), "--model", str(native)]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err

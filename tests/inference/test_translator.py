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
from tests.inference._translation_fixtures import write_marian_dir, write_native_export

TEXTS = ["one hundred and twenty-three", "", "Friday, March 5, 2021", "seven", "Привет мир",
         "two thousand, four hundred and seventy-three", "third"]


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    return write_native_export(tmp_path_factory.mktemp("native"))


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


@pytest.mark.parametrize("quantize", ["none", "int8"])  # int8: activations scaled per row, not per batch
@pytest.mark.parametrize("beam_size", [1, 3])
def test_batched_by_length_equals_one_at_a_time_and_rows_stay_aligned(native, beam_size, quantize):
    translator = load_translator(native, quantize=quantize)
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


def test_cross_attention_is_its_own_while_other_requests_run_on_the_model(native):
    """A demo serves requests concurrently on one model: the map of one request never holds another's
    (the hooks once recorded every thread's cross-attention, mixing maps or failing to stack them)."""
    import threading

    translator = load_translator(native)
    expected = translator.cross_attention("one hundred", [5, 6, 7])[2]
    stop, failures = threading.Event(), []

    def busy() -> None:
        while not stop.is_set():
            translator.translate(["seven hundred and twelve", "one"])

    other = threading.Thread(target=busy)
    other.start()
    try:
        for _ in range(60):
            try:
                got = translator.cross_attention("one hundred", [5, 6, 7])[2]
                if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-6):
                    failures.append("mixed")
            except (RuntimeError, TypeError) as e:
                failures.append(type(e).__name__)
    finally:
        stop.set()
        other.join()
    assert not failures, failures[:5]


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


def test_cli_reads_and_writes_a_file_a_chunk_at_a_time_with_the_same_lines(native, tmp_path, monkeypatch, capsys,
                                                                            caplog):
    import mmkit.inference.text_rows as text_rows

    src = tmp_path / "in.txt"
    src.write_bytes("seven\n\nthird\n".encode() + b"caf\xe9\n"
                    + ("Привет мир\n" + "one hundred " * 40 + "\nfive").encode())
    for chunk, name in ((None, "whole"), (2, "chunked")):
        if chunk:
            monkeypatch.setattr(text_rows, "ROWS_PER_CHUNK", chunk)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert mmkit_main(["translate", str(src), "--model", str(native),
                               "--output", str(tmp_path / f"{name}.jsonl")]) == 0
        err = capsys.readouterr().err  # line numbers count from the file's start, not the chunk's
        assert "line 4: not UTF-8" in err and "line 5: " in err and "line 6: source of" in caplog.text
    assert (tmp_path / "chunked.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    assert len((tmp_path / "chunked.jsonl").read_text().splitlines()) == 7  # the last line has no newline


@pytest.mark.parametrize("rule", ["true", "never"])
def test_cli_early_stopping_is_the_translators(marian, capsys, monkeypatch, rule):
    from mmkit.inference.translator import TranslationOptions, Translator, load_translator

    seen = []
    run = Translator.translate_batches
    monkeypatch.setattr(Translator, "translate_batches",
                        lambda self, plan, batches, options, *a, **k: seen.append(options.early_stopping)
                        or run(self, plan, batches, options, *a, **k))
    sentences = ["seven", "one hundred and twenty"]
    assert mmkit_main(["translate", *sentences, "--model", str(marian), "--beam-size", "3", "--early-stopping",
                       rule, "--length-penalty", "0.5"]) == 0
    rule_value = True if rule == "true" else rule
    assert seen and set(seen) == {rule_value}
    options = TranslationOptions(beam_size=3, length_penalty=0.5, early_stopping=rule_value)
    assert capsys.readouterr().out.splitlines() == [t.text for t in load_translator(marian).translate(sentences,
                                                                                                      options)]


def test_cli_beam_options_without_beams_are_said_to_be_unused(marian, tmp_path, capsys, caplog):
    """--length-penalty/--early-stopping are ignored by greedy decoding: one warning, as --seed's in generate-text,
    and only when the beam size in effect is 1 (a model's generation_config.json num_beams counts)."""
    import shutil

    warned = "unused: greedy decoding has no beams to rank or stop (search with --beam-size K > 1)"
    for extra, unused in ((["--length-penalty", "5", "--early-stopping", "true"],
                           "--length-penalty 5 and --early-stopping true are"),
                          (["--early-stopping", "never", "--beam-size", "1"], "--early-stopping never is")):
        caplog.clear()
        assert mmkit_main(["translate", "seven", "--model", str(marian), *extra]) == 0
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [f"{unused} {warned}"]
    caplog.clear()
    assert mmkit_main(["translate", "seven", "--model", str(marian), "--beam-size", "2", "--length-penalty", "5"]) == 0
    beams = shutil.copytree(marian, tmp_path / "beams")
    config = json.loads((beams / "generation_config.json").read_text())
    (beams / "generation_config.json").write_text(json.dumps({**config, "num_beams": 2}))
    assert mmkit_main(["translate", "seven", "--model", str(beams), "--length-penalty", "5"]) == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    capsys.readouterr()


def test_cli_caps_a_models_beam_count_as_it_caps_beam_size(marian, tmp_path, capsys, caplog):
    """A generation_config.json num_beams above --beam-size's cap (32) decodes with 32, said once; the run's
    settings line names what was used."""
    import shutil

    from mmkit.cli.options import MAX_BEAM_SIZE

    beams = shutil.copytree(marian, tmp_path / "beams")
    config = json.loads((beams / "generation_config.json").read_text())
    (beams / "generation_config.json").write_text(json.dumps({**config, "num_beams": 500}))
    with caplog.at_level("INFO"):
        assert mmkit_main(["translate", "seven", "--model", str(beams), "--max-length", "2"]) == 0
    said = [r.getMessage() for r in caplog.records]
    assert f"the model's num_beams 500 is above --beam-size's cap: decoding with {MAX_BEAM_SIZE} beams " \
           "(--beam-size K to choose)" in said
    assert any(m.startswith(f"decoding with the model's own settings: beam_size {MAX_BEAM_SIZE}") for m in said)
    capsys.readouterr()


def test_cli_text_arguments_and_user_errors(native, tmp_path, capsys):
    assert mmkit_main(["translate", "seven", "third", "--model", str(native), "--max-length", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert mmkit_main(["translate", "seven", "--model", str(tmp_path / "missing")]) == 2
    assert "not a model directory" in capsys.readouterr().err
    assert mmkit_main(["translate", "seven", "--model", str(native), "--output", str(tmp_path / "x.csv")]) == 2
    assert "use a .txt or .jsonl file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mmkit_main(["translate", "seven", "--model", str(native), "--beam-size", "0"])
    assert e.value.code == 2 and "argument --beam-size: must be >= 1" in capsys.readouterr().err
    assert mmkit_main(["translate", str(tmp_path / "missing.txt"), "--model", str(native)]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("beam_size", [1, 3])
def test_forced_eos_from_the_config_at_the_length_limit_as_transformers(tmp_path, beam_size):
    from transformers import AutoTokenizer, MarianMTModel

    directory = write_marian_dir(tmp_path, forced_eos=True)
    translator = load_translator(directory)
    assert translator.forced_eos_id == 0
    texts = ["seven", "one hundred and twenty-three", "Friday, March 5, 2021"]
    got = translator.translate(texts, TranslationOptions(beam_size=beam_size, max_new_tokens=6, batch_size=3))
    ref, tok = MarianMTModel.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    assert ref.generation_config.forced_eos_token_id == 0
    hit_limit = 0
    for text, result in zip(texts, got):
        expected = ref.generate(**tok([text], return_tensors="pt"), num_beams=beam_size, do_sample=False,
                                max_new_tokens=6, bad_words_ids=[[ref.config.pad_token_id]],
                                early_stopping=False)[0, 1:].tolist()
        hit_limit += len(expected) == 6 and expected[-1] == 0  # forced: the 6th token is EOS
        assert result.tokens == [t for t in expected if t not in (0, ref.config.pad_token_id)]
    assert hit_limit == len(texts)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_each_row_stops_at_its_own_source_relative_limit_batched_as_alone(native, beam_size):
    translator = load_translator(native)
    texts = ["seven", "two thousand, four hundred and seventy-three", "third", "Friday, March 5, 2021"]
    options = TranslationOptions(beam_size=beam_size, batch_size=4, length_ratio=0.5, length_offset=1)
    batched = translator.translate(texts, options)
    limits = [options.limit(len(translator.encode_source(t)), translator.max_target_tokens) for t in texts]
    assert min(limits) < max(limits)  # a mixed batch
    for text, row, limit in zip(texts, batched, limits):
        assert row.tokens == translator.translate([text], options)[0].tokens
        assert len(row.tokens) <= limit
    assert len(batched[0].tokens) < max(limits)  # the short row did not run to the longest row's limit


def test_imported_t5_saved_as_an_mmkit_export_reads_back_the_same(t5, tmp_path, capsys):
    prefix = "translate English to German: "
    export = tmp_path / "export"
    texts = ["seven", "one hundred and twenty-three"]
    assert mmkit_main(["translate", *texts, "--model", str(t5), "--prefix", prefix, "--beam-size", "2",
                       "--export", str(export)]) == 0
    imported = capsys.readouterr().out
    doc = json.loads((export / "config.json").read_text())
    assert doc["architecture"] == "T5" and doc["metadata"]["prefix"] == prefix
    assert (export / "model.safetensors").is_file() and doc["metadata"]["tokenizer"] == "transformers"
    assert mmkit_main(["translate", *texts, "--model", str(export), "--prefix", prefix, "--beam-size", "2"]) == 0
    assert capsys.readouterr().out == imported and imported.strip()
    options = TranslationOptions(max_new_tokens=10)
    assert ([r.tokens for r in load_translator(export).translate(texts, options)]  # prefix kept in the export
            == [r.tokens for r in load_translator(t5, prefix=prefix).translate(texts, options)])


def test_marian_export_keeps_suppressed_and_forced_eos_tokens(tmp_path):
    directory = write_marian_dir(tmp_path / "marian", forced_eos=True)
    imported = load_translator(directory)
    export = imported.export(tmp_path / "export")
    again = load_translator(export)
    assert (again.codec.suppress, again.forced_eos_id) == (imported.codec.suppress, 0)
    options = TranslationOptions(beam_size=2, max_new_tokens=6)
    assert [r.tokens for r in again.translate(TEXTS[:4], options)] == \
        [r.tokens for r in imported.translate(TEXTS[:4], options)]


def test_int8_translator_keeps_fp32_logits_and_is_not_exported(native, tmp_path, capsys):
    from mmkit.inference.quantize import Int8Linear

    fp32, int8 = load_translator(native), load_translator(native, quantize="int8")
    assert isinstance(int8.model.head, Int8Linear) and fp32.model.head is None  # the tied projection too
    src = torch.tensor([fp32.encode_source("one hundred and twenty-three")])
    tokens = torch.tensor([[2, 5, 6, 7]])
    with torch.no_grad():
        a, b = (t.model(tokens, context=t.model.encode(src)) for t in (fp32, int8))
    cosine = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))
    assert float(cosine) > 0.99 and not torch.equal(a, b)
    with pytest.raises(TranslatorError, match="int8 model is not exported"):
        int8.export(tmp_path / "x")
    assert mmkit_main(["translate", "seven", "--model", str(native), "--quantize", "int8"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert mmkit_main(["translate", "--model", str(native)]) == 2
    assert "give sentences" in capsys.readouterr().err


def test_bf16_translator_agrees_with_fp32_and_refuses_int8(native, capsys):
    """bf16 autocast around encoder and decoder, fp32 logits: on the tiny export the greedy tokens of
    most rows equal fp32's (asserted loosely: bf16 rounding may flip a near tie); int8 + bf16 is one line."""
    fp32, bf16 = load_translator(native), load_translator(native, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    texts = [t for t in TEXTS if t]
    same = [a.tokens == b.tokens for a, b in zip(fp32.translate(texts), bf16.translate(texts))]
    assert sum(same) >= len(texts) - 1, same
    with pytest.raises(TranslatorError, match="int8 Linear layers run on fp32"):
        load_translator(native, precision="bf16", quantize="int8")
    assert mmkit_main(["translate", "seven", "--model", str(native), "--precision", "bf16", "--quantize", "int8"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_keeps_the_beginning_of_an_over_long_txt_line_and_skips_an_over_long_jsonl_record(native, tmp_path,
                                                                                              monkeypatch):
    import mmkit.inference.text_rows as text_rows

    monkeypatch.setattr(text_rows, "MAX_LINE_BYTES", 24)
    (tmp_path / "in.txt").write_text("seven\none hundred and twenty three\nthird\n")
    (tmp_path / "in.jsonl").write_text('{"text": "seven"}\n{"text": "one hundred and twenty"}\n{"text": "third"}\n')
    for name in ("in.txt", "in.jsonl"):
        assert mmkit_main(["translate", str(tmp_path / name), "--model", str(native),
                           "--output", str(tmp_path / f"{name}.out.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "in.txt.out.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["seven", "one hundred and twenty t", "third"]  # its first 24 bytes
    rows = [json.loads(line) for line in (tmp_path / "in.jsonl.out.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["seven", "", "third"]
    assert rows[1]["error"].startswith("line 2: a JSON record longer than")


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading the model fails the test: the mistake must be met before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("mmkit.inference.translator.load_translator", refuse)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmkit translate: error: "), err
    return err


def test_cli_refuses_unusable_devices_before_loading(native, monkeypatch, capsys, no_model_load):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # as on a machine without a GPU
    for device, message in (("cuda", "CUDA is not available"), ("meta", "mmkit runs on cpu, cuda or mps")):
        assert mmkit_main(["translate", "seven", "--model", str(native), "--device", device]) == 2
        assert f"--device {device}: {message}" in _one_line(capsys)


def test_cli_refuses_unwritable_outputs_before_loading(native, tmp_path, capsys, no_model_load):
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "folder.txt", "it is a folder"), (tmp_path / "file" / "o.jsonl", "not a folder"),
                         ("/proc/o.txt", "no file can be made in /proc")):
        assert mmkit_main(["translate", "seven", "--model", str(native), "--output", str(out)]) == 2
        assert f"cannot write {out}: " in (err := _one_line(capsys)) and message in err


@pytest.mark.parametrize("option, value, message", [
    ("--length-penalty", "1e308", "must be >= -10 and <= 10"),  # OverflowError in the beam search
    ("--length-penalty", "nan", "must be finite"),  # silently arbitrary beams
    ("--length-penalty", "inf", "must be finite"),
    ("--beam-size", "1000", "must be <= 32"),
    ("--batch-size", "0", "must be >= 1"),
    ("--max-length", "0", "must be >= 1"),
    ("--prefix", "\udcff", "not UTF-8 text"),
    ("--early-stopping", "yes", "choose from false, true, never, got 'yes'"),
    ("--repetition-penalty", "nan", "must be finite"),
    ("--repetition-penalty", "x", "not a number: 'x'"),
    ("--no-repeat-ngram-size", "-1", "must be >= 0, got -1"),
    ("--no-repeat-ngram-size", "2.5", "not an integer: '2.5'"),
    ("--min-new-tokens", "-2", "must be >= 0, got -2"),
])
def test_cli_option_ranges_are_usage_errors(native, capsys, no_model_load, option, value, message):
    with pytest.raises(SystemExit) as e:
        mmkit_main(["translate", "seven", "--model", str(native), option, value])
    assert e.value.code == 2 and f"argument {option}: {message}" in capsys.readouterr().err


def test_cli_text_arguments_are_text_whatever_their_length_and_must_be_utf8(native, capsys):
    assert mmkit_main(["translate", "seven " * 60, "--model", str(native), "--max-length", "3"]) == 0  # 360 chars:
    assert len(capsys.readouterr().out.splitlines()) == 1  # stat() of it raised "File name too long"
    with pytest.raises(SystemExit) as e:
        mmkit_main(["translate", "seven", "\udcff\udcfe bad", "--model", str(native)])  # argv b"\xff\xfe bad"
    assert e.value.code == 2 and "argument TEXT|FILE: not UTF-8 text" in capsys.readouterr().err


def test_cli_refuses_paths_it_cannot_read_as_a_sentence_file(native, tmp_path, monkeypatch, capsys, no_model_load):
    monkeypatch.chdir(tmp_path)
    for name in ("img.png", "cfg.json", "a.txt", "b.txt"):
        (tmp_path / name).write_text("seven\n")
    (tmp_path / "folder").mkdir()
    for inputs, message in ((["img.png"], "img.png: use a .txt or .jsonl file"),
                            (["cfg.json"], "cfg.json: use a .txt or .jsonl file"),
                            (["folder"], "folder: a folder"), (["/dev/null"], "/dev/null: not a regular file"),
                            (["-"], "-: standard input is not read"),
                            (["a.txt", "b.txt"], "a.txt: a file or folder among 2 arguments; translate reads one"),
                            (["seven", "folder"], "folder: a file or folder among 2 arguments")):
        assert mmkit_main(["translate", *inputs, "--model", str(native)]) == 2
        assert message in _one_line(capsys)


def test_cli_lines_without_visible_text_are_reported_as_files_and_arguments(native, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_bytes(b"seven\n\x01\x02\n\n\xe2\x80\x8b\nth\x00ird\n")
    out = tmp_path / "out.jsonl"
    assert mmkit_main(["translate", str(src), "--model", str(native), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("error") for r in rows] == [
        None, "line 2: empty text (only control or invisible characters)", None,  # an empty line stays empty
        "line 4: empty text (only control or invisible characters)",
        "line 5: holds NUL bytes (UTF-16 text? save it as UTF-8)"]
    assert [r["translation"] for r in rows[1:]] == [""] * 4 and rows[0]["translation"]
    capsys.readouterr()
    assert mmkit_main(["translate", "seven", "\x01", "--model", str(native)]) == 0
    assert "mmkit translate: line 2: empty text (only control or invisible characters)\n" in capsys.readouterr().err


def test_a_transformers_directorys_decoding_settings_are_the_defaults(tmp_path, capsys, caplog):
    """opus-mt's generation_config.json says num_beams 4 (or 6): transformers' generate() and pipeline search
    with them, mmkit decoded greedily. They are the defaults of `translate()` and `mmkit translate` now (options
    given win), and an export keeps them."""
    import shutil

    from transformers import AutoTokenizer, MarianMTModel

    directory = shutil.copytree(write_marian_dir(tmp_path / "m0"), tmp_path / "m")
    pad = json.loads((directory / "config.json").read_text())["pad_token_id"]
    (directory / "generation_config.json").write_text(json.dumps(
        {"num_beams": 3, "length_penalty": 0.6, "max_length": 64, "bad_words_ids": [[pad]], "pad_token_id": pad,
         "decoder_start_token_id": pad, "eos_token_id": 0}))
    translator = load_translator(directory)
    assert translator.defaults == {"beam_size": 3, "length_penalty": 0.6}
    texts = ["seven", "one hundred and twenty", "third"]
    ref, tok = MarianMTModel.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    got = translator.translate(texts)  # the model's 3 beams, length penalty 0.6
    for text, result in zip(texts, got):
        limit = 2 * len(tok(text)["input_ids"]) + 10  # mmkit's length rule, given to generate as max_new_tokens
        expected = ref.generate(**tok([text], return_tensors="pt"), max_new_tokens=limit)[0, 1:].tolist()
        assert result.tokens == [t for t in expected if t not in (0, pad)]
    greedy = translator.translate(texts, translator.default_options(beam_size=1))
    assert greedy == translator.translate(texts, TranslationOptions(beam_size=1, length_penalty=0.6))
    with caplog.at_level(logging.INFO):
        assert mmkit_main(["translate", *texts, "--model", str(directory)]) == 0
    assert capsys.readouterr().out.splitlines() == [r.text for r in got]
    assert "decoding with the model's own settings: beam_size 3, length_penalty 0.6" in caplog.text
    export = load_translator(translator.export(tmp_path / "export"))
    assert export.defaults == translator.defaults and export.translate(texts) == got
    (directory / "generation_config.json").write_text(json.dumps({"num_beams": 0}))
    with pytest.raises(TranslatorError, match="generation_config.json: a decoding setting mmkit cannot use"):
        load_translator(directory)


RULES = [{"no_repeat_ngram_size": 2}, {"no_repeat_ngram_size": 3}, {"repetition_penalty": 1.3}, {"min_new_tokens": 4}]
RULE_TEXTS = ["seven", "one hundred and twenty-three", "third", "Friday, March 5, 2021",
              "two thousand, four hundred and seventy-three"]
T5_PREFIX = "translate English to German: "


@pytest.fixture(scope="module")
def rule_dirs(tmp_path_factory):
    """(kind, ending) -> a directory where the rules change the translations (`write_rule_dir`)."""
    from tests.inference._translation_fixtures import write_rule_dir

    return {(kind, ending): write_rule_dir(tmp_path_factory.mktemp(f"{kind}_{ending}"), kind, ending)
            for kind in ("marian", "t5") for ending in ("late", "early")}


def _reference(directory, kind: str, texts: list[str], **settings) -> list[list[int]]:
    """transformers' `generate` of each text alone, its EOS and what follows cut (mmkit's `Translation.tokens`).
    The Marian fixture's <pad> ban is in its config.json, which transformers does not read beside a
    generation_config.json: it is given here unless `settings` say (None: the generation config's, which a None
    passed to `generate` would override: transformers 5 takes it as no ban)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    ref, tok = AutoModelForSeq2SeqLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    eos, prefix = ref.config.eos_token_id, T5_PREFIX if kind == "t5" else ""
    if kind == "marian" and "bad_words_ids" not in settings:
        settings["bad_words_ids"] = [[ref.config.pad_token_id]]
    settings = {k: v for k, v in settings.items() if v is not None}
    out = []
    for text in texts:
        ids = ref.generate(**tok([prefix + text], return_tensors="pt"), **settings)[0, 1:].tolist()
        out.append(ids[: ids.index(eos)] if eos in ids else ids)
    return out


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()))
@pytest.mark.parametrize("kind", ["marian", "t5"])
def test_repetition_rules_and_min_new_tokens_equal_transformers_generate(rule_dirs, kind, rule, beam_size):
    """no_repeat_ngram_size, repetition_penalty and min_new_tokens read the decoder's tokens, its start token
    included, as transformers' `generate` does for an encoder-decoder: the same tokens, batched, greedy and beam
    (fp32); and the rule changes the translations of these models (the comparison would not see it otherwise)."""
    directory = rule_dirs[kind, "early" if "min_new_tokens" in rule else "late"]
    translator = load_translator(directory, prefix=T5_PREFIX if kind == "t5" else None)
    options = TranslationOptions(beam_size=beam_size, max_new_tokens=12, batch_size=3, **rule)
    got = [r.tokens for r in translator.translate(RULE_TEXTS, options)]
    assert got == _reference(directory, kind, RULE_TEXTS, num_beams=beam_size, do_sample=False, max_new_tokens=12,
                             early_stopping=False, **rule)
    plain = translator.translate(RULE_TEXTS, TranslationOptions(beam_size=beam_size, max_new_tokens=12, batch_size=3))
    assert got != [r.tokens for r in plain]
    if "min_new_tokens" in rule and beam_size == 1:  # EOS as soon as it may come: the count is exact
        assert min(map(len, got)) == rule["min_new_tokens"] > min(len(r.tokens) for r in plain)


@pytest.mark.parametrize("settings, defaults", [
    ({"no_repeat_ngram_size": 2, "num_beams": 3}, {"no_repeat_ngram_size": 2, "beam_size": 3}),
    ({"repetition_penalty": 1.3, "min_length": 0}, {"repetition_penalty": 1.3}),
    ({"min_length": 5}, {"min_new_tokens": 4}),  # transformers counts the decoder's start token in min_length
    ({"min_new_tokens": 3, "min_length": 9, "num_beams": 3}, {"min_new_tokens": 3, "beam_size": 3}),  # it wins
], ids=["ngram-beams", "penalty", "min_length", "min_new_tokens"])
@pytest.mark.parametrize("kind", ["marian", "t5"])
def test_a_generation_config_setting_the_rules_is_honoured_without_options(rule_dirs, tmp_path, kind, settings,
                                                                            defaults):
    """A generation_config.json's repetition rules and minimum length are the translator's defaults: `translate()`
    without options gives transformers' `generate` on the same directory with no setting given (the length limit
    aside, mmkit's rule given as max_new_tokens), and an export keeps them."""
    import shutil

    minimum = bool(settings.get("min_length") or settings.get("min_new_tokens"))
    directory = shutil.copytree(rule_dirs[kind, "early" if minimum else "late"], tmp_path / "model")
    config = json.loads((directory / "generation_config.json").read_text())
    if kind == "marian":
        config["bad_words_ids"] = [[config["pad_token_id"]]]  # as opus-mt's generation_config.json
    (directory / "generation_config.json").write_text(json.dumps({**config, **settings}))
    prefix = T5_PREFIX if kind == "t5" else None
    translator = load_translator(directory, prefix=prefix)
    assert translator.defaults == defaults
    texts = RULE_TEXTS[:3]  # mmkit's length rule (2 x source + 10) decodes long: three keep the test short
    got = [r.tokens for r in translator.translate(texts)]
    limits = [TranslationOptions().limit(len(translator.encode_source(t)), translator.max_target_tokens)
              for t in texts]
    assert len(set(limits)) > 1
    expected = [_reference(directory, kind, [text], max_new_tokens=limit, bad_words_ids=None)[0]
                for text, limit in zip(texts, limits)]
    assert got == expected
    plain = [r.tokens for r in translator.translate(texts, TranslationOptions(beam_size=defaults.get(
        "beam_size", 1)))]
    assert got != plain
    if minimum and "beam_size" not in defaults:  # greedy, EOS as soon as it may come: the count is exact
        assert min(map(len, got)) == defaults["min_new_tokens"]
    export = load_translator(translator.export(tmp_path / "export"), prefix=prefix)
    assert export.defaults == defaults and [r.tokens for r in export.translate(texts)] == got


@pytest.mark.parametrize("given, error, message", [
    ({"repetition_penalty": 0}, TranslatorError, "repetition_penalty must be a finite number > 0, got 0"),
    ({"repetition_penalty": -1.3}, TranslatorError, "repetition_penalty must be a finite number > 0"),
    ({"repetition_penalty": float("inf")}, TranslatorError, "repetition_penalty must be a finite number > 0"),
    ({"repetition_penalty": float("nan")}, TranslatorError, "repetition_penalty must be a finite number > 0"),
    ({"repetition_penalty": "1.3"}, TypeError, "repetition_penalty must be a number, got '1.3'"),
    ({"no_repeat_ngram_size": -1}, TranslatorError, "no_repeat_ngram_size must be >= 0, got -1"),
    ({"no_repeat_ngram_size": 2.0}, TypeError, "no_repeat_ngram_size must be an integer, got 2.0"),
    ({"min_new_tokens": -3}, TranslatorError, "min_new_tokens must be >= 0, got -3"),
    ({"min_new_tokens": True}, TypeError, "min_new_tokens must be an integer, got True"),
    ({"renormalize_logits": 1}, TypeError, "renormalize_logits must be True or False, got 1"),
    ({"renormalize_logits": "false"}, TypeError, "renormalize_logits must be True or False, got 'false'"),
])
def test_bad_rule_options_are_refused_in_one_line(given, error, message):
    with pytest.raises(error, match=message) as e:
        TranslationOptions(**given)
    assert type(e.value) is error and "\n" not in str(e.value)


@pytest.mark.parametrize("settings, message", [
    ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0, got 0.0"),
    ({"repetition_penalty": "strong"}, "repetition_penalty must be a number, got 'strong'"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size must be >= 0, got -2"),
    ({"no_repeat_ngram_size": True}, "no_repeat_ngram_size must be an integer, got True"),
    ({"min_new_tokens": 2.5}, "min_new_tokens must be an integer, got 2.5"),
    ({"min_length": -1}, "min_length must be an integer >= 0, got -1"),
    ({"min_length": "5"}, "min_length must be an integer >= 0, got '5'"),
    ({"min_length": 5.0}, "min_length must be an integer >= 0, got 5.0"),
    ({"renormalize_logits": "yes"}, "renormalize_logits must be True or False, got 'yes'"),
    ({"renormalize_logits": 0}, "renormalize_logits must be True or False, got 0"),
])
def test_bad_rules_in_a_generation_config_are_one_line_naming_the_file(marian, tmp_path, settings, message):
    import shutil

    directory = shutil.copytree(marian, tmp_path / "m")
    config = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps({**config, **settings}))
    with pytest.raises(TranslatorError) as e:
        load_translator(directory)
    assert str(e.value).startswith(f"{directory / 'generation_config.json'}: a decoding setting mmkit cannot use (")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_min_new_tokens_raises_the_default_length_limit_and_max_new_tokens_caps_it():
    """The default length rule (2 x source + 10) makes room for min_new_tokens; a max_new_tokens given wins over it,
    as transformers' max_length wins over min_length (the row then ends there without EOS)."""
    assert TranslationOptions(min_new_tokens=30).limit(5, 100) == 30
    assert TranslationOptions(min_new_tokens=30).limit(15, 100) == 40
    assert TranslationOptions(min_new_tokens=30).limit(5, 25) == 25  # the model's positions cap both
    assert TranslationOptions(min_new_tokens=30, max_new_tokens=8).limit(5, 100) == 8


def test_renormalize_logits_from_a_generation_config_is_transformers_beam_search(tmp_path):
    """opus-mt's generation_config.json sets renormalize_logits beside num_beams and the <pad> ban: transformers
    log-softmaxes each step's scores again after its other processors, so the beams are ranked by log-probabilities
    over the tokens left. `translate()` without options gives `generate`'s tokens on the same directory (mmkit's
    length rule given as max_new_tokens), where <pad> is likely enough that the setting changes the translations;
    false is a setting not made, and an export keeps the setting."""
    from tests.inference._translation_fixtures import write_renormalize_dir

    directory = write_renormalize_dir(tmp_path / "model")
    translator = load_translator(directory)
    assert translator.defaults == {"beam_size": 3, "renormalize_logits": True}
    texts = RULE_TEXTS[:3]
    got = [r.tokens for r in translator.translate(texts)]
    limits = [TranslationOptions().limit(len(translator.encode_source(t)), translator.max_target_tokens)
              for t in texts]
    references = {renormalize: [_reference(directory, "marian", [text], max_new_tokens=limit, bad_words_ids=None,
                                           renormalize_logits=renormalize)[0] for text, limit in zip(texts, limits)]
                  for renormalize in (True, False)}
    assert got == references[True]
    plain = [r.tokens for r in translator.translate(texts, translator.default_options(renormalize_logits=False))]
    assert plain == references[False] and plain != got  # the setting decides which beams win here
    assert [r.tokens for r in translator.translate(texts, translator.default_options(beam_size=1))] == \
        [r.tokens for r in translator.translate(texts, TranslationOptions())]  # greedy: argmax either way
    export = load_translator(translator.export(tmp_path / "export"))
    assert export.defaults == translator.defaults and [r.tokens for r in export.translate(texts)] == got
    config = json.loads((directory / "generation_config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps({**config, "renormalize_logits": False}))
    unset = load_translator(directory)
    assert unset.defaults == {"beam_size": 3} and [r.tokens for r in unset.translate(texts)] == plain


def test_generation_config_settings_the_translator_does_not_apply_are_named_once(marian, tmp_path, caplog):
    """A generation config's settings that would change transformers' decoding and that mmkit does not apply (diverse
    beams, several sequences a source, bad words of several tokens, sampling cut-offs where it samples) are
    named in one warning at load; the neutral values written out by save_pretrained are not."""
    import shutil

    directory = shutil.copytree(marian, tmp_path / "m")
    pad = json.loads((directory / "config.json").read_text())["pad_token_id"]
    neutral = {"encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0, "num_beam_groups": 1,
               "typical_p": 1.0, "forced_bos_token_id": None, "bad_words_ids": [[pad]], "do_sample": True,
               "num_return_sequences": 1}
    (directory / "generation_config.json").write_text(json.dumps(neutral))
    with caplog.at_level(logging.WARNING):
        load_translator(directory)
    assert "not applied" not in caplog.text
    caplog.clear()
    (directory / "generation_config.json").write_text(json.dumps(
        {**neutral, "num_beam_groups": 2, "typical_p": 0.9,
         "num_return_sequences": 3,
         "bad_words_ids": [[pad], [5, 6]]}))
    with caplog.at_level(logging.WARNING):
        load_translator(directory)
    lines = [r.getMessage() for r in caplog.records if "not applied" in r.getMessage()]
    assert lines == [f"{directory / 'generation_config.json'}: not applied by mmkit (transformers' generate would): "
                     "num_beam_groups 2, num_return_sequences 3, typical_p 0.9, bad_words_ids of several tokens"]

"""Several translations of each source (`TranslationOptions.num_return_sequences`, `mmkit translate
--num-return-sequences`): a beam search's n best are transformers' `generate(num_beams=K, num_return_sequences=n)`
hypotheses and scores, n unseeded samples are its `do_sample=True` draws under the same global seed, seeded samples
do not depend on the batches, and the CLI prints Moses n-best lines or writes .jsonl lists."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mmkit.cli import main as mmkit_main
from mmkit.inference.translator import TranslationOptions, TranslatorError, load_translator

TEXTS = ["seven", "one hundred and twenty-three", "third", "Friday, March 5, 2021", "forty-two", "the fifth"]


@pytest.fixture(scope="module")
def reference(marian):
    from transformers import AutoTokenizer, MarianMTModel

    return MarianMTModel.from_pretrained(marian).eval(), AutoTokenizer.from_pretrained(marian)


def _rows(sequences: torch.Tensor, pad: int) -> list[list[int]]:
    return [[t for t in row[1:].tolist() if t not in (0, pad)] for row in sequences]


@pytest.mark.parametrize("beams, n, length_penalty", [(4, 3, 1.0), (3, 3, 0.6), (5, 2, 2.0)])
def test_beam_n_best_equals_transformers_num_return_sequences(marian, reference, beams, n, length_penalty):
    """Batched by length (2 a batch), each source's n hypotheses in transformers' order, with its scores."""
    ref, tok = reference
    pad = ref.config.pad_token_id
    got = load_translator(marian).translate(TEXTS, TranslationOptions(
        beam_size=beams, num_return_sequences=n, length_penalty=length_penalty, max_new_tokens=10, batch_size=2))
    for text, result in zip(TEXTS, got):
        out = ref.generate(**tok([text], return_tensors="pt"), num_beams=beams, num_return_sequences=n,
                           do_sample=False, max_new_tokens=10, bad_words_ids=[[pad]], early_stopping=False,
                           length_penalty=length_penalty, output_scores=True, return_dict_in_generate=True)
        assert [c.tokens for c in result.candidates] == _rows(out.sequences, pad)
        assert [c.score for c in result.candidates] == pytest.approx(out.sequences_scores.tolist(), abs=1e-4)
        assert result.tokens == result.candidates[0].tokens and result.text == result.candidates[0].text
        assert [c.text for c in result.candidates] == [tok.decode(r, skip_special_tokens=True)
                                                       for r in _rows(out.sequences, pad)]


def test_one_translation_is_the_first_of_the_n_best(marian):
    translator = load_translator(marian)
    one = translator.translate(TEXTS, TranslationOptions(beam_size=4, max_new_tokens=10))
    three = translator.translate(TEXTS, TranslationOptions(beam_size=4, num_return_sequences=3, max_new_tokens=10))
    assert [r.text for r in one] == [r.text for r in three]
    assert all(len(r.candidates) == 1 for r in one) and all(len(r.candidates) == 3 for r in three)
    assert [r.candidates[0].score for r in one] == pytest.approx([r.candidates[0].score for r in three], abs=1e-5)


def test_unseeded_samples_are_transformers_do_sample_draws_under_the_same_global_seed(marian, reference):
    ref, tok = reference
    pad = ref.config.pad_token_id
    translator = load_translator(marian)
    for n, text in enumerate(TEXTS[:3]):
        torch.manual_seed(n)
        got = translator.translate([text], TranslationOptions(temperature=1.2, top_k=20, num_return_sequences=4,
                                                              max_new_tokens=10))[0]
        torch.manual_seed(n)
        out = ref.generate(**tok([text], return_tensors="pt"), do_sample=True, temperature=1.2, top_k=20,
                           num_return_sequences=4, max_new_tokens=10, bad_words_ids=[[pad]])
        assert [c.tokens for c in got.candidates] == _rows(out, pad)


def test_seeded_samples_start_with_the_single_sample_and_do_not_depend_on_batches(marian):
    """Sample 0 of line i is the one-sample run's; the others have seeds of their own: the same whatever the
    batch size or a file's chunks, different from each other."""
    translator = load_translator(marian)
    single = translator.translate(TEXTS, TranslationOptions(temperature=1.5, seed=7, max_new_tokens=10))
    options = TranslationOptions(temperature=1.5, seed=7, max_new_tokens=10, num_return_sequences=4)
    whole = translator.translate(TEXTS, options)
    assert [r.text for r in whole] == [r.text for r in single]
    assert all(len({tuple(c.tokens) for c in r.candidates}) > 1 for r in whole)
    for batch_size in (1, 4):
        assert translator.translate(TEXTS, TranslationOptions(temperature=1.5, seed=7, max_new_tokens=10,
                                                              num_return_sequences=4, batch_size=batch_size)) == whole
    assert translator.translate(TEXTS[2:], options, first_row=2) == whole[2:]


@pytest.mark.parametrize("given, message", [
    ({"num_return_sequences": 2}, "needs a beam search .* or sampling: greedy decoding has one"),
    ({"num_return_sequences": 3, "beam_size": 2}, "num_return_sequences 3 exceeds beam_size 2"),
    ({"num_return_sequences": 65, "temperature": 1.0}, r"must be in \[1, 64\]"),
    ({"num_return_sequences": 0, "temperature": 1.0}, r"must be in \[1, 64\]"),
])
def test_impossible_counts_are_refused_in_one_line(given, message):
    with pytest.raises(TranslatorError, match=message):
        TranslationOptions(**given)
    with pytest.raises(TypeError, match="num_return_sequences must be an integer"):
        TranslationOptions(num_return_sequences=2.0, beam_size=2)


def test_cli_prints_moses_n_best_lines_and_writes_jsonl_lists(marian, tmp_path, capsys):
    translator = load_translator(marian)
    texts = ["seven", "", "forty-two"]
    results = translator.translate(texts, TranslationOptions(beam_size=4, num_return_sequences=3))
    assert mmkit_main(["translate", *texts, "--model", str(marian), "--beam-size", "4",
                       "--num-return-sequences", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [f"{i} ||| {c.text} ||| {c.score:.6g}" for i, r in enumerate(results) for c in r.candidates]
    assert lines == expected[:3] + ["1 |||  ||| nan"] + expected[3:]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert mmkit_main(["translate", str(source), "--model", str(marian), "--output", str(out), "--beam-size", "4",
                       "--num-return-sequences", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["translations"] for row in rows] == [[c.text for c in r.candidates] for r in results]
    assert [row["translation"] for row in rows] == [r.text for r in results]
    assert rows[0]["scores"] == pytest.approx([c.score for c in results[0].candidates], abs=1e-5)
    assert rows[1] == {"source": "", "translation": "", "translations": [], "scores": []}


def test_cli_refuses_a_txt_output_before_the_model_loads_and_counts_the_models_beams(marian, tmp_path, capsys):
    """A .txt output holds one translation a line: refused at once (the model folder is not even read); the beams
    a generation config gives count, and a count above them is one line after the load."""
    assert mmkit_main(["translate", "seven", "--model", str(tmp_path / "absent"), "--output",
                       str(tmp_path / "o.txt"), "--num-return-sequences", "2", "--beam-size", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a .txt output holds one translation a line" in err[0]
    directory = shutil.copytree(marian, tmp_path / "beams")
    config = json.loads((directory / "config.json").read_text())
    (directory / "generation_config.json").write_text(json.dumps(
        {"num_beams": 3, "bad_words_ids": [[config["pad_token_id"]]], "pad_token_id": config["pad_token_id"],
         "decoder_start_token_id": config["pad_token_id"], "eos_token_id": 0}))
    assert mmkit_main(["translate", "seven", "--model", str(directory), "--num-return-sequences", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert mmkit_main(["translate", "seven", "--model", str(directory), "--num-return-sequences", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_return_sequences 4 exceeds beam_size 3" in err[0]

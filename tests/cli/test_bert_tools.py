"""`mmkit embed`, `mmkit fill-mask`, `mmkit classify-text` on tiny transformers BERT directories:
outputs equal the inference API's, bad rows (empty, non-UTF-8) are reported and skipped while the
rest is written, user mistakes (no [MASK], a GPT checkpoint, a wrong suffix) are one line, exit 2."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from _bert import write_tiny_bert, write_tiny_roberta_classifier
from _gpt import write_tiny_gpt2

from mmkit.cli import main
from mmkit.inference.embed import Embedder
from mmkit.inference.encoder import load_encoder
from mmkit.inference.text_classify import TextClassifierPredictor


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlm")
    write_tiny_bert(d, "mlm")
    return d


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes("the cat sees the moon.\n\n   \na dog finds an apple\n".encode() + b"caf\xe9 au lait\nthe end\n"
                     + "жжж ж\n".encode())
    return path


def test_embed_npy_keeps_line_order_with_nan_for_bad_rows(mlm_dir, texts_file, tmp_path, capsys):
    out = tmp_path / "vectors.npy"
    assert main(["embed", str(texts_file), "--model", str(mlm_dir), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "line 2: empty text" in err and "line 3: empty text" in err and "line 5: not UTF-8" in err
    assert "line 7: no known tokens" in err
    vectors = np.load(out)
    expected = Embedder(load_encoder(mlm_dir)).embed(["the cat sees the moon.", "a dog finds an apple", "the end"])
    assert vectors.shape == (7, 32) and np.isnan(vectors[[1, 2, 4, 6]]).all()
    assert np.abs(vectors[[0, 3, 5]] - expected).max() <= 1e-6


def test_embed_jsonl_rows_and_no_temp_files_left(mlm_dir, texts_file, tmp_path):
    out = tmp_path / "vectors.jsonl"
    assert main(["embed", str(texts_file), "--model", str(mlm_dir), "--out", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 4, 6] and len(rows[0]["embedding"]) == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt", "vectors.jsonl"]


def test_embed_refuses_a_gpt_checkpoint_and_bad_suffixes_in_one_line(tmp_path, texts_file, mlm_dir, capsys):
    write_tiny_gpt2(tmp_path / "gpt")
    capsys.readouterr()  # transformers' save progress
    assert main(["embed", str(texts_file), "--model", str(tmp_path / "gpt"), "--out", str(tmp_path / "v.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a BERT-family encoder" in err
    assert main(["embed", str(texts_file), "--model", str(mlm_dir), "--out", str(tmp_path / "v.txt")]) == 2
    assert "--out must end in .npy or .jsonl" in capsys.readouterr().err
    assert not (tmp_path / "v.npy").exists()


def test_fill_mask_prints_ranked_tokens_and_the_filled_text(mlm_dir, capsys):
    assert main(["fill-mask", "the cat [MASK] the moon.", "--model", str(mlm_dir), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    probs = [float(line.split("%")[0]) for line in lines[:3]]
    assert len(lines) == 4 and probs == sorted(probs, reverse=True) and lines[3].startswith("the cat")


def test_fill_mask_with_several_masks_prints_each_filled_text_with_the_other_mask(mlm_dir, capsys):
    from mmkit.inference.fill_mask import fill_mask

    text = "the cat [MASK] the moon [MASK]."
    assert main(["fill-mask", text, "--model", str(mlm_dir), "--top-k", "2"]) == 0
    expected = fill_mask(load_encoder(mlm_dir), text, 2)
    assert capsys.readouterr().out.splitlines() == [
        line for n, p in enumerate(expected, 1)
        for line in [f"mask {n}:", *(f"  {prob:7.2%}  {token}" for token, prob in p.candidates), f"  -> {p.filled}"]]
    assert all(p.filled.count("[MASK]") == 1 for p in expected)


def test_fill_mask_quotes_candidates_a_terminal_would_not_show(monkeypatch, mlm_dir, capsys):
    """Byte-level BPE candidates begin with a space (" sees") or are one control byte: printed bare, the list
    showed blank lines."""
    from mmkit.cli import fill_mask as tool
    from mmkit.inference import fill_mask as api

    shown = [(" sees", 0.5), ("sees", 0.25), ("\x04", 0.125), ("##le", 0.0625)]
    monkeypatch.setattr(api, "fill_mask", lambda *a: [api.MaskPrediction(3, shown, "the cat sees", [1, 2, 3, 4])])
    assert tool.main(["the cat [MASK]", "--model", str(mlm_dir)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        '   50.00%  " sees"', "   25.00%  sees", '   12.50%  "\\u0004"', "    6.25%  ##le", "the cat sees"]


@pytest.mark.parametrize("text, message", [("the cat sees the moon.", "no [MASK] in the text"),
                                           ("", "the text is empty")])
def test_fill_mask_mistakes_are_one_line(mlm_dir, capsys, text, message):
    assert main(["fill-mask", text, "--model", str(mlm_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_classify_text_csv_in_and_out(tmp_path, capsys):
    write_tiny_bert(tmp_path / "clf", "classify")
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,the cat sees the moon.\n2,""\n3,"=a dog, finds"\n')
    out = tmp_path / "out.csv"
    assert main(["classify-text", str(src), "--model", str(tmp_path / "clf"), "--out", str(out),
                 "--all-scores", "--quiet"]) == 0
    assert "line 3: empty text" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert [r["line"] for r in rows] == ["2", "4"] and rows[1]["text"] == "'=a dog, finds"
    assert all(r["label"] in ("class0", "class1", "class2") for r in rows)
    assert abs(sum(float(rows[0][f"p_class{i}"]) for i in range(3)) - 1) < 1e-4
    assert main(["classify-text", str(src), "--model", str(tmp_path / "nowhere"), "--out", str(out)]) == 2


@pytest.mark.parametrize("problem_type, num_labels, note", [
    ("multi_label_classification", 3, "scores are each class's own sigmoid probability"),
    ("regression", 1, "scores are the regression model's predicted values, not probabilities"),
])
def test_classify_text_scores_multi_label_and_regression_models_as_the_api(tmp_path, capsys, problem_type,
                                                                         num_labels, note):
    """A multi-label model's classes are each scored on their own (the softmax made them sum to 1), a regression
    model's value is written (it scored 1.0 on every text); a line on stderr says what the scores are."""
    d = tmp_path / "clf"
    write_tiny_bert(d, "classify", num_labels=num_labels)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "problem_type": problem_type}))
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    texts = ["the cat sees the moon.", "a dog finds an apple", "the end"]
    src.write_text("\n".join(texts) + "\n")
    assert main(["classify-text", str(src), "--model", str(d), "--out", str(out), "--all-scores", "--quiet"]) == 0
    assert f"mmkit classify-text: {note}" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row, p in zip(rows, TextClassifierPredictor(load_encoder(d)).predict(texts)):
        assert (row["label"], row["score"]) == (p.label, round(p.score, 6))
        assert [row[f"p_class{i}"] for i in range(num_labels)] == [round(v, 6) for v in p.probs.values()]
    if num_labels > 1:
        assert all(abs(sum(row[f"p_class{i}"] for i in range(3)) - 1) > 1e-3 for row in rows)
    else:
        assert len({row["score"] for row in rows}) == len(texts) and all(row["score"] != 1.0 for row in rows)


def test_a_classifier_whose_classes_share_a_name_is_one_line(tmp_path, capsys):
    """Two classes named "pos" made --all-scores write two p_pos columns with one class's score (CSV), or one
    p_pos (JSONL): class 0's probability lost. Refused at load, naming the classes; the image Classifier too."""
    import json

    from mmkit.inference.classifier import Classifier
    from mmkit.models.vit import ViT

    write_tiny_bert(tmp_path / "clf", "classify")
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    config["id2label"] = {"0": "pos", "1": "pos", "2": "neg"}
    (tmp_path / "clf" / "config.json").write_text(json.dumps(config))
    (tmp_path / "in.txt").write_text("the cat sees the moon.\n")
    out = tmp_path / "out.csv"
    capsys.readouterr()
    assert main(["classify-text", str(tmp_path / "in.txt"), "--model", str(tmp_path / "clf"), "--out", str(out),
                 "--all-scores", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'clf'}: classes 0 and 1 are both named 'pos'; give each class its own name" in err
    assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(ValueError, match="class_names: classes 1 and 2 are both named 'b'"):
        Classifier(ViT(image_size=16, patch_size=8, num_classes=3, dim=16, depth=1, num_heads=2), ["a", "b", "b"], {})


def test_classify_text_on_a_saved_roberta_classifier(tmp_path):
    # A hub-style RobertaForSequenceClassification directory (vocab.json + merges.txt): its
    # dense + tanh head on <s>, its byte-level BPE, its positions after the padding index.
    import torch

    ref, hf_tok = write_tiny_roberta_classifier(tmp_path / "clf")
    texts = ["the cat sees the moon.", "a dog finds an apple and the teacher"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.csv"
    assert main(["classify-text", str(src), "--model", str(tmp_path / "clf"), "--out", str(out),
                 "--all-scores", "--quiet"]) == 0
    rows = list(csv.DictReader(out.open()))
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0] == 0 and batch["input_ids"][1, -1] == 2  # <s> ... </s>
    with torch.no_grad():
        expected = ref(**batch).logits.softmax(-1)
    assert expected.std(0).max() > 1e-3  # the texts get different probabilities: the check can fail
    for row, probs in zip(rows, expected):
        assert row["label"] == f"class{int(probs.argmax())}"
        assert max(abs(float(row[f"p_class{i}"]) - float(probs[i])) for i in range(3)) <= 1e-5


def test_embed_bf16_is_close_to_fp32_and_bf16_with_int8_is_one_line(mlm_dir, texts_file, tmp_path, capsys):
    """`--precision bf16` (emulated where the CPU lacks it: slow, still correct): unit vectors within
    bf16's rounding of fp32's; with `--quantize int8` it is refused before anything is written."""
    texts = ["the cat sees the moon.", "a dog finds an apple", "the end"]
    exact = Embedder(load_encoder(mlm_dir)).embed(texts)
    bf16 = Embedder(load_encoder(mlm_dir), precision="bf16")
    assert bf16.precision == "bf16"
    vectors = bf16.embed(texts)
    assert vectors.dtype == np.float32 and (vectors * exact).sum(1).min() > 0.99
    out = tmp_path / "v.npy"
    assert main(["embed", str(texts_file), "--model", str(mlm_dir), "--out", str(out), "--quiet",
                 "--precision", "bf16"]) == 0
    assert np.abs(np.load(out)[[0, 3, 5]] - vectors).max() <= 1e-6
    capsys.readouterr()
    assert main(["embed", str(texts_file), "--model", str(mlm_dir), "--out", str(tmp_path / "w.npy"),
                 "--precision", "bf16", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "int8 Linear layers run on fp32" in err and not (tmp_path / "w.npy").exists()


@pytest.mark.parametrize("precision, quantize, tolerance", [("bf16", "none", 0.02), ("fp32", "int8", 0.05)])
def test_classify_text_bf16_and_int8_agree_with_fp32(tmp_path, capsys, caplog, precision, quantize, tolerance):
    """classify-text takes embed's `--precision` and `--quantize` (bf16 emulated where the CPU lacks it: slow,
    still correct): probabilities within the stated tolerance of fp32's, the same labels, the head kept fp32
    under int8 and the arithmetic logged once; bf16 with int8 is refused in one line, nothing written."""
    write_tiny_bert(tmp_path / "clf", "classify")
    texts = ["the cat sees the moon.", "a dog finds an apple", "the end", "the teacher reads a book to the cat"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    exact = TextClassifierPredictor(load_encoder(tmp_path / "clf")).predict(texts)
    fast = TextClassifierPredictor(load_encoder(tmp_path / "clf"), quantize=quantize, precision=precision)
    assert fast.precision == precision
    if quantize == "int8":
        assert not any(type(m).__name__ == "Int8Linear" for m in fast.encoder.model.classifier.modules())  # fp32
        assert type(fast.encoder.model.encoder.blocks[0].attn.qkv).__name__ == "Int8Linear"
    got = fast.predict(texts)
    assert max(abs(g.probs[k] - e.probs[k]) for g, e in zip(got, exact) for k in e.probs) <= tolerance
    assert [g.label for g in got] == [e.label for e in exact]
    out = tmp_path / "out.jsonl"
    with caplog.at_level("INFO", logger="mmkit"):
        assert main(["classify-text", str(src), "--model", str(tmp_path / "clf"), "--out", str(out), "--quiet",
                     "--precision", precision, "--quantize", quantize]) == 0
    assert [json.loads(line)["score"] for line in out.read_text().splitlines()] == [round(g.score, 6) for g in got]
    assert sum("text classifier:" in r.getMessage() for r in caplog.records) == 1
    capsys.readouterr()
    assert main(["classify-text", str(src), "--model", str(tmp_path / "clf"), "--out", str(tmp_path / "w.csv"),
                 "--precision", "bf16", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "int8 Linear layers run on fp32" in err and not (tmp_path / "w.csv").exists()


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_embed_reads_and_writes_a_chunk_at_a_time_with_the_same_output(mlm_dir, texts_file, tmp_path, monkeypatch,
                                                                       suffix):
    import mmkit.inference.text_rows as text_rows

    args = ["embed", str(texts_file), "--model", str(mlm_dir), "--quiet"]
    assert main([*args, "--out", str(tmp_path / f"whole{suffix}")]) == 0
    monkeypatch.setattr(text_rows, "ROWS_PER_CHUNK", 2)  # chunks of 2 rows: bad rows fall in every chunk
    assert main([*args, "--out", str(tmp_path / f"chunked{suffix}")]) == 0
    if suffix == ".npy":
        whole, chunked = np.load(tmp_path / "whole.npy"), np.load(tmp_path / "chunked.npy")
        assert whole.shape == (7, 32) and np.array_equal(np.isnan(whole), np.isnan(chunked))
        assert np.abs(np.nan_to_num(whole) - np.nan_to_num(chunked)).max() <= 1e-6
    else:
        whole, chunked = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
                          for name in ("whole.jsonl", "chunked.jsonl"))
        assert [r["line"] for r in chunked] == [r["line"] for r in whole] == [1, 4, 6]
        assert max(abs(a - b) for r, s in zip(whole, chunked) for a, b in zip(r["embedding"], s["embedding"])) <= 1e-6


def test_embed_of_a_file_without_good_rows_writes_an_empty_matrix(mlm_dir, tmp_path, capsys):
    src = tmp_path / "blank.txt"
    src.write_text("")
    assert main(["embed", str(src), "--model", str(mlm_dir), "--out", str(tmp_path / "v.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "v.npy").shape == (0, 32)
    assert "0 embeddings of dim 32" in capsys.readouterr().err


def test_classify_text_streams_in_chunks_with_the_same_rows(tmp_path, monkeypatch):
    import mmkit.inference.text_rows as text_rows

    write_tiny_bert(tmp_path / "clf", "classify")
    src = tmp_path / "in.csv"
    src.write_bytes(b'id,text\n1,the cat sees the moon.\n2,""\n3,"a dog,\nfinds"\n4,caf\xe9\n5,the end\n')
    args = ["classify-text", str(src), "--model", str(tmp_path / "clf"), "--all-scores", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "whole.csv")]) == 0
    monkeypatch.setattr(text_rows, "ROWS_PER_CHUNK", 1)
    assert main([*args, "--out", str(tmp_path / "chunked.csv")]) == 0
    whole, chunked = (list(csv.DictReader((tmp_path / name).open())) for name in ("whole.csv", "chunked.csv"))
    assert [r["line"] for r in whole] == ["2", "5", "7"]  # a record is numbered by the line where it ends
    assert [r["text"] for r in whole] == ["the cat sees the moon.", "a dog,\nfinds", "the end"]
    assert [(r["line"], r["label"]) for r in chunked] == [(r["line"], r["label"]) for r in whole]
    # the CSV rounds to 6 decimals, and other batches may round the other way: one unit apart at most
    assert max(abs(float(r[k]) - float(s[k])) for r, s in zip(whole, chunked) for k in r if k.startswith("p_")) < 2e-6


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_embed_npy_of_an_input_that_changes_while_read_writes_nothing(mlm_dir, texts_file, tmp_path, monkeypatch,
                                                                      capsys, change):
    import mmkit.cli.bert_text_files as files

    counted = files.open_texts_and_encoder

    def count_then_change(*args, **kwargs):  # the file changes between the count and the read
        opened = counted(*args, **kwargs)
        data = texts_file.read_bytes()
        texts_file.write_bytes(data + b"one more\n" if change == "grow" else data.split(b"\n", 1)[1])
        return opened

    monkeypatch.setattr("mmkit.cli.embed.open_texts_and_encoder", count_then_change)
    out = tmp_path / "v.npy"
    assert main(["embed", str(texts_file), "--model", str(mlm_dir), "--out", str(out), "--quiet"]) == 2
    assert "changed while it was read" in capsys.readouterr().err.splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt"]  # no output, no temp file


def test_truncated_texts_are_one_line_however_many_chunks(mlm_dir, tmp_path, monkeypatch, capsys, caplog):
    import logging

    import mmkit.inference.text_rows as text_rows

    write_tiny_bert(tmp_path / "clf", "classify")
    src = tmp_path / "long.txt"
    src.write_text(("the cat sees the moon. " * 40 + "\n") * 5 + "a dog\n")
    monkeypatch.setattr(text_rows, "ROWS_PER_CHUNK", 2)
    for tool, model, out in (("embed", mlm_dir, "v.npy"), ("classify-text", tmp_path / "clf", "p.csv")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert main([tool, str(src), "--model", str(model), "--out", str(tmp_path / out), "--quiet"]) == 0
        err = capsys.readouterr().err
        assert err.count("were truncated") == 1 and f"mmkit {tool}: 5 text(s) longer than" in err
        assert "truncated" not in caplog.text  # not once per chunk as well


def test_a_csv_record_over_the_field_limit_is_one_line_and_writes_nothing(mlm_dir, tmp_path, capsys):
    path = tmp_path / "texts.csv"
    path.write_text("text\nthe cat\n" + "moon " * 40_000 + "\nthe end\n")  # 200 KB: over csv's field_size_limit
    out = tmp_path / "v.jsonl"
    assert main(["embed", str(path), "--model", str(mlm_dir), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "texts.csv line 3: not a readable CSV record" in err and ".txt or .jsonl" in err
    assert not out.exists()


@pytest.mark.parametrize("tool", ["embed", "classify-text"])
def test_each_text_is_tokenized_once(tool, mlm_dir, texts_file, tmp_path, monkeypatch):
    from mmkit.data.bert_tokenizer import EncoderTokenizer

    model = mlm_dir
    if tool == "classify-text":
        model = tmp_path / "clf"
        write_tiny_bert(model, "classify")
    seen: list[str] = []
    encode_batch = EncoderTokenizer.encode_batch

    def counted(self, texts):
        seen.extend(texts)
        return encode_batch(self, texts)

    monkeypatch.setattr(EncoderTokenizer, "encode_batch", counted)
    out = tmp_path / ("out.jsonl" if tool == "embed" else "out.csv")
    assert main([tool, str(texts_file), "--model", str(model), "--out", str(out), "--quiet"]) == 0
    # the usable rows, and the row of unknown tokens (found out by tokenizing it), once each
    assert sorted(seen) == sorted(["the cat sees the moon.", "a dog finds an apple", "the end", "жжж ж"])

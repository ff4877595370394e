"""File names that are not UTF-8 (legal on Linux; Python holds their bytes as surrogate escapes) beside
normal ones: `mmkit transcribe`, `mmkit label` and `mmkit predict` read such a file like any other, write
its outputs (an output file under the same bytes; in CSV/JSON rows the name in `path_text`'s form,
"bad\\xff.png"), list it with its reason when it is unreadable, and `label --resume` finds its row.
Before, each stopped the whole run on a UnicodeEncodeError, writing nothing.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmkit.inference.writers import path_from_text, path_text

from _clip import save_tiny_clip

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

PREDICT = str(Path(__file__).resolve().parents[1] / "configs" / "vit_digits_predict.yaml")


def _odd(folder: Path, name: bytes) -> Path:
    """`folder`/`name` (bytes that are not UTF-8) as the str path Python gives for it; skips the test
    on a filesystem that refuses such names (macOS, ZFS utf8only)."""
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    try:
        path.touch()
    except OSError as e:
        pytest.skip(f"this filesystem refuses non-UTF-8 names: {e}")
    return path


def _image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    with open(path, "wb") as f:  # a file object: the save does not depend on how PIL takes names
        Image.fromarray(pixels).save(f, format="PNG")


def _rows(path: Path) -> list[dict]:
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")  # strict: every output is valid UTF-8
        return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_path_text_escapes_only_the_bytes_that_are_not_utf8_and_reverses():
    odd = os.fsdecode(b"dir/caf\xc3\xa9 bad\xff\xfename.png")  # valid UTF-8 é, then two bad bytes
    assert path_text(odd) == "dir/café bad\\xff\\xfename.png"
    assert os.fsencode(path_from_text(path_text(odd))) == b"dir/caf\xc3\xa9 bad\xff\xfename.png"
    assert path_text("plain/é.png") == "plain/é.png" == path_from_text("plain/é.png")
    assert path_text(Path(odd)) == path_text(os.fsencode(odd)) == path_text(odd)


# --- mmkit transcribe ------------------------------------------------------------------------

def test_transcribe_reads_a_non_utf8_name_and_writes_its_outputs(tmp_path, monkeypatch, capsys):
    from mmkit.cli.bench.speech_inputs import synth_speechlike, write_toy_checkpoint
    from mmkit.cli.transcribe import main

    model = write_toy_checkpoint(tmp_path / "whisper", d_model=64, encoder_layers=1, decoder_layers=2, heads=4,
                                 n_text_tokens=400, eot_scale=3.0)
    good = tmp_path / "good.wav"
    sf.write(good, synth_speechlike(3), 16_000, subtype="PCM_16")
    odd = _odd(tmp_path, b"au_\xff.wav")
    odd.write_bytes(good.read_bytes())
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")  # a UTF-8 terminal's strictness
    monkeypatch.setattr(sys, "stdout", stdout)
    out = tmp_path / "out"
    code = main([str(good), str(odd), "--model", str(model), "--temperature", "0", "--max-new-tokens", "6",
                 "--language", "en", "-o", str(out), "-f", "txt", "json", "srt"])
    assert code == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    # the outputs under the input's own bytes name; the same audio, the same text
    assert sorted(os.listdir(os.fsencode(out))) == sorted(
        [b"good.json", b"good.srt", b"good.txt", b"au_\xff.json", b"au_\xff.srt", b"au_\xff.txt"])
    odd_out = Path(os.fsdecode(os.fsencode(out) + b"/au_\xff"))
    assert odd_out.with_suffix(".txt").read_bytes() == (out / "good.txt").read_bytes()
    record = json.loads(odd_out.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["file"] == path_text(odd) and record["file"].endswith("au_\\xff.wav")
    stdout.flush()
    printed = stdout.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]
    assert f"{path_text(odd)}: " in printed and f"{good}: " in printed


# --- mmkit label -----------------------------------------------------------------------------

def test_label_labels_a_non_utf8_name_lists_a_broken_one_and_resumes(tmp_path):
    from mmkit.cli.label import main

    ckpt = save_tiny_clip(tmp_path / "clip")
    photos = tmp_path / "photos"
    photos.mkdir()
    _image(photos / "ok.png", 0)
    odd = _odd(photos, b"bad\xff\xfename.png")
    _image(odd, 1)
    broken = _odd(photos, b"broken\xfe.png")
    broken.write_bytes(b"not a png")
    out = tmp_path / "labels.csv"
    args = [str(photos), "--labels", "cat,dog", "--model", str(ckpt), "--out", str(out), "--num-workers", "0",
            "--quiet"]
    assert main(args) == 0
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == ["bad\\xff\\xfename.png", "ok.png"]
    assert all(r["label"] in ("cat", "dog") for r in rows)
    errors = _rows(tmp_path / "labels.errors.csv")
    assert [e["path"] for e in errors] == ["broken\\xfe.png"] and errors[0]["reason"].startswith("not an image")
    # resumed with --copy-to: nothing is redone, and the odd file is placed under its own bytes
    before = out.read_bytes()
    target = tmp_path / "sorted"
    assert main([*args, "--resume", "--copy-to", str(target)]) == 0
    assert out.read_bytes() == before
    placed = {name for _, _, files in os.walk(os.fsencode(target)) for name in files}
    assert placed == {b"ok.png", b"bad\xff\xfename.png"}
    # JSONL as well
    jsonl = tmp_path / "labels.jsonl"
    assert main([*args[:6], str(jsonl), *args[7:]]) == 0
    assert sorted(r["path"] for r in _rows(jsonl)) == ["bad\\xff\\xfename.png", "ok.png"]


# --- mmkit predict ---------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_predict_predicts_a_non_utf8_name_and_reports_a_broken_one(tmp_path, suffix):
    from mmkit.cli import main
    from mmkit.models.vit import ViT

    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, num_classes=3, dim=32, depth=1, num_heads=2)
    export = vit.save_pretrained(tmp_path / "export", metadata={"class_names": ["a", "b", "c"]})
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image(inputs / "ok.png", 0)
    _image(_odd(inputs, b"bad\xff\xfename.png"), 1)
    _odd(inputs, b"broken\xfe.png").write_bytes(b"not a png")
    out = tmp_path / f"p{suffix}"
    code = main(["predict", "--config", PREDICT, "--data.init_args.image_size", "16", "--data.init_args.num_workers",
                 "0", "--trainer.enable_progress_bar", "false", "--model.init_args.model.init_args.checkpoint",
                 str(export), "--data.init_args.predict_paths", json.dumps([f"{inputs}/"]),
                 "--prediction_writer.output", str(out)])
    assert code == 0
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert sorted(rows) == ["bad\\xff\\xfename.png", "broken\\xfe.png", "ok.png"]
    assert rows["bad\\xff\\xfename.png"]["path"] == path_text(inputs) + "/bad\\xff\\xfename.png"
    assert not rows["bad\\xff\\xfename.png"]["error"] and not rows["ok.png"]["error"]
    assert "not an image" in rows["broken\\xfe.png"]["error"]

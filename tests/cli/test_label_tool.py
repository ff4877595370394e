"""`mmkit label` through the dispatcher: the TOOLS row points at `mmkit.cli.label`, usage and
file errors are one line without a traceback, and the progress bar is the shared helper."""
from __future__ import annotations

import contextlib

from PIL import Image

from mmkit.cli import TOOLS, main

from _clip import save_tiny_clip


def test_label_row_and_one_line_errors(tmp_path, capsys):
    assert TOOLS["label"][1] == "mmkit.cli.label:main"
    assert main(["label", str(tmp_path / "missing"), "--labels", "a", "--model", "m"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"mmkit label: error: {tmp_path / 'missing'} is not a folder"
    assert main(["label", str(tmp_path), "--labels", "a", "--model", "m", "--top-k", "0"]) == 2
    assert "--top-k and --batch-size must be >= 1" in capsys.readouterr().err
    assert main(["label", str(tmp_path), "--labels", "a,b", "--model", "m", "--top-k", "3"]) == 2  # before the model
    assert capsys.readouterr().err.strip() == "mmkit label: error: --top-k 3 is more than the 2 labels: give at most 2"


def test_progress_counts_resumed_images_and_new_ones(tmp_path, monkeypatch):
    import mmkit.cli.label as label

    ckpt = save_tiny_clip(tmp_path / "clip")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(photos / f"{i}.png")
    calls, advanced, real = [], [], label.progress

    @contextlib.contextmanager
    def fake_progress(description, total, unit="it", completed=0, enabled=True):
        calls.append((description, total, unit, completed, enabled))
        with real(description, total, unit, completed, enabled=False) as advance:
            yield lambda n=1: advanced.append(n) or advance(n)

    monkeypatch.setattr(label, "progress", fake_progress)
    args = [str(photos), "--labels", "cat,dog", "--model", str(ckpt), "--out", str(tmp_path / "l.csv"),
            "--num-workers", "0", "--precision", "fp32"]
    assert label.main(args) == 0
    Image.new("RGB", (20, 20)).save(photos / "3.png")
    assert label.main([*args, "--resume", "--quiet"]) == 0
    assert calls == [("labelling", 3, "img", 0, True), ("labelling", 4, "img", 3, False)]
    assert sum(advanced) == 4  # 3 images, then the one new image

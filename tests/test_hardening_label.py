"""Issue 9 (hardening), the `mmkit label` items: non-finite scores are an error, never a label (#7);
resume without OUT.run.json checks the rows' labels (#8); preprocessing metadata is validated at
load (#9); range checks (#10); --copy-to / --errors mistakes and a shared errors file (#11); a
SIGKILLed run's lock is free at once (#12); symlink loops (#13); --device (#14); spreadsheet-safe
CSV (#16); symlinks leading outside DIR (#17). Tiny random-init CLIP, offline.
"""
from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.cli.label import main as label_main
from mmkit.inference.writers import exclusive
from mmkit.models.clip import CLIP

from _clip import TINY_CLIP as TINY, save_tiny_clip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def _photos(folder: Path, names=("0.png", "1.png", "2.png")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _args(photos: Path, ckpt: Path, out: Path, *extra: str, labels: str = "cat,dog") -> list[str]:
    return [str(photos), "--labels", labels, "--model", str(ckpt), "--out", str(out), "--num-workers", "0",
            "--quiet", *extra]


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# ---- #7 non-finite scores --------------------------------------------------------------------------

@pytest.mark.parametrize("broken", ["logit_scale", "text_tower"])
def test_nan_weights_are_an_error_never_a_label(tmp_path, capsys, broken):
    torch.manual_seed(0)
    model = CLIP.from_config(TINY)
    with torch.no_grad():
        if broken == "logit_scale":
            model.logit_scale.fill_(float("nan"))  # finite embeddings, NaN scores
        else:
            next(model.text.parameters()).fill_(float("nan"))  # NaN label embeddings
    ckpt = model.save_pretrained(tmp_path / "nan")
    out = tmp_path / "labels.jsonl"
    assert label_main(_args(_photos(tmp_path / "p"), ckpt, out)) == 2
    err = _one_line(capsys)
    assert "non-finite" in err or "not finite" in err
    assert not out.exists()
    partial = out.with_name(out.name + ".partial")
    assert not partial.exists() or "NaN" not in partial.read_text()


def test_jsonl_writer_refuses_a_bare_nan(tmp_path):
    from mmkit.inference.label_outputs import Decision

    with pytest.raises(ValueError, match="non-finite"):
        Decision(("a", "b")).row("x.png", [float("nan"), 0.5])


# ---- #8 resume without OUT.run.json ----------------------------------------------------------------

def test_resume_without_settings_file_checks_the_rows_labels(tmp_path, ckpt, capsys):
    photos = _photos(tmp_path / "p", [f"{i}.png" for i in range(4)])
    out = tmp_path / "labels.csv"
    assert label_main(_args(photos, ckpt, out)) == 0
    rows = out.with_name("labels.csv.partial")
    rows.write_text("".join(out.read_text().splitlines(keepends=True)[:3]))  # a killed run: header + 2 rows
    out.unlink()
    out.with_name("labels.csv.run.json").unlink()
    before = rows.read_bytes()
    capsys.readouterr()
    assert label_main(_args(photos, ckpt, out, "--resume", labels="bird,fish")) == 2
    err = _one_line(capsys)
    assert "run.json is missing" in err and "--overwrite" in err
    assert rows.read_bytes() == before and not out.exists()  # untouched
    assert not out.with_name("labels.csv.run.json").exists()  # the refused settings were not recorded
    # A superset of the labels the rows hold is fine: the rows carry over, the rest is labelled.
    assert label_main(_args(photos, ckpt, out, "--resume", labels="cat,dog,bird")) == 0
    assert sorted(r["path"] for r in _rows(out)) == [f"{i}.png" for i in range(4)]


# ---- #9 preprocessing metadata -----------------------------------------------------------------------

@pytest.mark.parametrize("meta", [{"crop_pct": 0}, {"crop_pct": -1}, {"crop_pct": math.nan}, {"mean": [0.5, 0.5]},
                                  {"std": [0, 1, 1]}, {"std": [0.5, math.inf, 0.5]}, {"mean": "grey"}])
def test_bad_preprocessing_metadata_is_one_line_naming_the_file(tmp_path, capsys, meta):
    ckpt = CLIP.from_config(TINY).save_pretrained(tmp_path / "bad", metadata=meta)
    out = tmp_path / "labels.csv"
    assert label_main(_args(_photos(tmp_path / "p"), ckpt, out)) == 2
    err = _one_line(capsys)
    assert str(ckpt / "config.json") in err and next(iter(meta)) in err
    assert not out.exists() and not (tmp_path / "labels.errors.csv").exists()


# ---- #10 range checks ------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [["--threshold", "1.5"], ["--threshold", "-0.1"], ["--threshold", "nan"],
                                   ["--examples-weight", "nan"], ["--examples-weight", "2"],
                                   ["--device", "banana"], ["--device", "cuda:99"], ["--device", "meta"]])
def test_out_of_range_options_and_bad_devices_are_usage_errors(tmp_path, ckpt, capsys, extra):
    out = tmp_path / "labels.csv"
    assert label_main(_args(_photos(tmp_path / "p"), ckpt, out, *extra)) == 2
    assert extra[0] in _one_line(capsys)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error(tmp_path, ckpt, capsys):
    assert label_main(_args(_photos(tmp_path / "p"), ckpt, tmp_path / "l.csv", "--device", "cuda")) == 2
    assert "CUDA is not available" in _one_line(capsys)


@pytest.mark.parametrize(("labels", "message"), [("cat", "always scores 1.0"), ("cat,dog,cat", "given twice"),
                                                 ("Cat,cat", "differ only in case")])
def test_one_label_and_repeated_labels_are_refused(tmp_path, ckpt, capsys, labels, message):
    out = tmp_path / "labels.csv"
    assert label_main(_args(_photos(tmp_path / "p"), ckpt, out, labels=labels)) == 2
    assert message in _one_line(capsys) and not out.exists()


def test_one_label_is_fine_with_multi_label(tmp_path, ckpt):
    out = tmp_path / "labels.csv"
    assert label_main(_args(_photos(tmp_path / "p"), ckpt, out, "--multi-label", labels="cat")) == 0
    assert len(_rows(out)) == 3


# ---- #11 --copy-to, --errors ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["at", "above"])
def test_copy_to_at_or_above_the_input_folder_is_refused(tmp_path, ckpt, capsys, where):
    photos = _photos(tmp_path / "p")
    target = photos if where == "at" else tmp_path
    assert label_main(_args(photos, ckpt, tmp_path / "o" / "l.csv", "--copy-to", str(target))) == 2
    assert "input folder or above it" in _one_line(capsys)
    assert not (tmp_path / "o").exists()


def test_errors_equal_to_out_is_refused(tmp_path, ckpt, capsys):
    out = tmp_path / "labels.csv"
    assert label_main(_args(_photos(tmp_path / "p"), ckpt, out, "--errors", str(out))) == 2
    assert "same file" in _one_line(capsys) and not out.exists()


def test_two_runs_sharing_one_errors_file_are_kept_apart(tmp_path, ckpt, capsys):
    photos = _photos(tmp_path / "p")
    errors = tmp_path / "shared.errors.csv"
    with exclusive(errors.with_name(f".{errors.name}.lock")):  # another run holds it
        assert label_main(_args(photos, ckpt, tmp_path / "b.csv", "--errors", str(errors))) == 2
    assert "another mmkit label run" in _one_line(capsys) and not (tmp_path / "b.csv").exists()
    assert label_main(_args(photos, ckpt, tmp_path / "b.csv", "--errors", str(errors))) == 0


def test_resume_with_copy_to_places_what_the_earlier_run_did_not(tmp_path, ckpt):
    photos = _photos(tmp_path / "p", ["0.png", "1.png", "sub/2.png"][:2])
    _photos(photos / "sub", ["2.png"])
    out = tmp_path / "labels.csv"
    assert label_main(_args(photos, ckpt, out)) == 0
    target = tmp_path / "sorted"
    assert label_main(_args(photos, ckpt, out, "--resume", "--copy-to", str(target))) == 0
    placed = {p.relative_to(target).as_posix() for p in target.rglob("*.png")}
    assert placed == {f"{r['label']}/{r['path']}" for r in _rows(out)} and len(placed) == 3


# ---- #12 the lock after a kill ------------------------------------------------------------------------

def test_lock_is_free_as_soon_as_a_killed_run_is_gone(tmp_path, ckpt):
    photos = tmp_path / "p"
    photos.mkdir()
    ramp = np.linspace(0, 255, 1024, dtype=np.uint8)
    for i in range(24):  # slow enough to decode that the kill lands mid-run
        pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:768, None] // 2, np.uint8(i * 9)), axis=-1)
        Image.fromarray(np.ascontiguousarray(pixels)).save(photos / f"{i:02d}.png", compress_level=1)
    out = tmp_path / "labels.csv"
    partial = tmp_path / "labels.csv.partial"
    cmd = [sys.executable, "-m", "mmkit.cli", "label", str(photos), "--labels", "cat,dog", "--model", str(ckpt),
           "--out", str(out), "--batch-size", "2", "--num-workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not out.exists(), stderr.decode()[-2000:]
    # The decoding workers may still be alive for a few seconds; they must not hold the lock.
    with open(tmp_path / ".labels.csv.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while anyone holds it
        fcntl.flock(f, fcntl.LOCK_UN)
    assert label_main([*cmd[4:], "--resume", "--num-workers", "0"]) == 0
    assert sorted(r["path"] for r in _rows(out)) == [f"{i:02d}.png" for i in range(24)]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_decoding_workers_do_not_hold_the_lock(tmp_path, ckpt):
    """The invariant behind the test above, whatever the workers' shutdown timing: a forked worker
    that kept the lock's descriptor would hold the lock until it noticed its parent was gone."""
    from mmkit.inference.clip_loader import clip_eval_transform
    from mmkit.inference.image_batches import image_batches

    photos = _photos(tmp_path / "p", [f"{i}.png" for i in range(6)])
    lock = tmp_path / ".labels.csv.lock"
    with exclusive(lock):
        batches = image_batches(photos, [f"{i}.png" for i in range(6)], clip_eval_transform(str(ckpt)), 2, 2)
        # batches come round-robin, one per worker: after two, both workers have run (a worker forked but
        # not yet scheduled still holds the parent's descriptors until its at-fork hook runs)
        assert [len(next(batches).indices) for _ in range(2)] == [2, 2]
        pids = [w.pid for w in batches._workers]  # the DataLoader iterator's worker processes
        held = {pid: [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")] for pid in pids}
        del batches
    assert len(pids) == 2 and all(str(lock) not in fds for fds in held.values()), \
        {pid: [f for f in fds if f == str(lock)] for pid, fds in held.items()}


# ---- #13 / #17 symlinks --------------------------------------------------------------------------

def test_symlink_loops_are_unreadable_entries_and_outside_links_are_not_followed(tmp_path, ckpt):
    photos = _photos(tmp_path / "p", ["a.png", "b.png"])
    outside = _photos(tmp_path / "secret", ["s.png"])
    os.symlink(outside, photos / "linked_dir")
    os.symlink(outside / "s.png", photos / "linked.png")
    os.symlink("loop.jpg", photos / "loop.jpg")
    os.symlink("self", photos / "self")
    os.symlink(photos / "a.png", photos / "inside.png")  # inside DIR: followed
    out, target = tmp_path / "labels.csv", tmp_path / "sorted"
    assert label_main(_args(photos, ckpt, out, "--copy-to", str(target))) == 0
    assert sorted(r["path"] for r in _rows(out)) == ["a.png", "b.png", "inside.png"]
    errors = {r["path"]: r["reason"] for r in _rows(tmp_path / "labels.errors.csv")}
    assert set(errors) == {"loop.jpg", "self"} and all("symbolic links" in r for r in errors.values())
    assert not [p for p in target.rglob("*") if p.is_file() and "s.png" in p.name]  # nothing from outside
    followed = tmp_path / "followed.csv"
    assert label_main(_args(photos, ckpt, followed, "--follow-links")) == 0
    assert {"linked_dir/s.png", "linked.png"} <= {r["path"] for r in _rows(followed)}


# ---- #16 spreadsheet-safe CSV ---------------------------------------------------------------------

def test_csv_cells_are_spreadsheet_safe_and_resume_reads_them_back(tmp_path, ckpt):
    names = ["=cmd.png", "+1.png", "-2.png", "@x.png", "'q.png", "plain.png"]
    photos = _photos(tmp_path / "p", names)
    out = tmp_path / "labels.csv"
    labels = "=SUM(A1),@home"
    assert label_main(_args(photos, ckpt, out, "--all-scores", labels=labels)) == 0
    with open(out, newline="") as f:
        raw = list(csv.reader(f))
    assert raw[0] == ["path", "label", "score", "score:=SUM(A1)", "score:@home"]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in raw for cell in row)
    assert sorted(row[0] for row in raw[1:]) == sorted(["'" + n for n in names[:5]] + ["plain.png"])
    assert {row[1] for row in raw[1:]} <= {"'=SUM(A1)", "'@home"}
    # --resume reads the quoted cells back as the names they stand for: nothing is redone or repeated.
    _photos(photos, ["new.png"])
    assert label_main(_args(photos, ckpt, out, "--all-scores", "--resume", labels=labels)) == 0
    with open(out, newline="") as f:
        again = list(csv.reader(f))
    assert again[: len(raw)] == raw and len(again) == len(raw) + 1
    jsonl = tmp_path / "labels.jsonl"
    assert label_main(_args(photos, ckpt, jsonl, labels=labels)) == 0
    rows = _rows(jsonl)
    assert {r["path"] for r in rows} == {*names, "new.png"} and {r["label"] for r in rows} <= {"=SUM(A1)", "@home"}

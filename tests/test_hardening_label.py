"""Issue 9 (hardening), the `mmkit label` items: non-finite scores are an error, never a label (#7);
resume without OUT.run.json checks the rows' labels (#8); preprocessing metadata is validated at
load (#9); range checks (#10); --copy-to / --errors mistakes and a shared errors file (#11); a
SIGKILLed run's lock is free at once (#12); symlink loops (#13); --device (#14); spreadsheet-safe
CSV (#16); symlinks leading outside DIR (#17). Then: a refused run leaves the output folders as
they were (no lock, partial or run.json file), options and outputs are checked before any work,
--copy-to inside DIR is refused, workers are capped at the batches, non-UTF-8 labels files name
the line. Tiny random-init CLIP, offline.
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


def test_examples_without_label_subfolders_are_refused_and_extra_labels_warned_about(tmp_path, ckpt, capsys, caplog):
    """--examples holding images but no label subfolders was silently unused; subfolders named otherwise than
    the labels (cats/ for cat) silently became more labels."""
    photos = _photos(tmp_path / "p")
    for examples, why in ((photos, "no label subfolders"), (tmp_path / "nowhere", "not a folder")):
        assert label_main(_args(photos, ckpt, tmp_path / "l.csv", "--examples", str(examples))) == 2
        assert _one_line(capsys).strip() == f"mmkit label: error: --examples {examples}: {why}" + (
            " (give one folder per label, holding that label's example images)" if why == "no label subfolders" else "")
    assert label_main([str(photos), "--labels-file", str(tmp_path / "missing.txt"), "--model", str(ckpt), "--out",
                       str(tmp_path / "l.csv")]) == 2
    assert _one_line(capsys).strip() == (f"mmkit label: error: --labels-file {tmp_path / 'missing.txt'}: "
                                         "cannot read it (No such file or directory)")
    _photos(tmp_path / "ex" / "cats", ["c.png"])
    with caplog.at_level("WARNING", logger="mmkit"):
        assert label_main(_args(photos, ckpt, tmp_path / "l.csv", "--examples", str(tmp_path / "ex"))) == 0
    assert "adds label(s) that --labels does not name: cats (each scored by its example images alone)" in caplog.text


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


# ---- refused runs leave nothing behind; inputs checked before any work ------------------------------

def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden lock files included) with its bytes (None for a folder)."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


@pytest.mark.parametrize(("extra", "message"), [
    (["--precision", "fp16"], "fp16 autocast is for GPUs"),  # the device is the CPU
    (["--multi-gpu"], "--multi-gpu needs --device cuda"),
    (["--out", "{o}/labels.txt"], "unsupported output"),
    (["--errors", "{o}/errors.txt"], "unsupported output"),
    (["--out", "{o}/folder.csv", "--overwrite"], "is a folder"),  # else found at the rename, after the work
    (["--copy-to", "{o}/a_file"], "is a file"),
    (["--copy-to", "{p}/sorted"], "inside the input folder"),  # the copies would be the next run's inputs
    (["--link-to", "{p}/sub/sorted"], "inside the input folder"),
    (["--other-label", "Dog", "--threshold", "0.5"], "is a label and the unsure bucket"),  # never named as a class
    (["--other-label", " "], "--other-label is empty"),
    (["--top-k", "3"], "--top-k 3 is more than the 2 labels"),  # refused, not empty label_3 columns
    (["--model", "{o}/broken"], "invalid JSON"),  # refused after the lock is taken: undone
])
def test_a_refused_run_leaves_the_folders_as_they_were(tmp_path, ckpt, capsys, extra, message):
    photos, o = _photos(tmp_path / "p"), tmp_path / "o"
    (o / "folder.csv").mkdir(parents=True)
    (o / "a_file").write_text("not a folder")
    (o / "broken").mkdir()
    (o / "broken" / "config.json").write_text("{")
    extra = [e.format(o=o, p=photos) for e in extra]
    before = _tree(tmp_path)
    args = _args(photos, ckpt, o / "new" / "labels.csv", *extra)
    if "--model" in extra:
        args[args.index("--model") + 1] = extra[1]  # replaces the tiny CLIP
    assert label_main(args) == 2
    assert message in _one_line(capsys)
    assert _tree(tmp_path) == before


def test_an_existing_output_is_refused_without_leaving_lock_files(tmp_path, ckpt, capsys):
    photos, out = _photos(tmp_path / "p"), tmp_path / "o" / "labels.csv"
    assert label_main(_args(photos, ckpt, out)) == 0
    before = _tree(tmp_path)
    capsys.readouterr()
    assert label_main(_args(photos, ckpt, out)) == 2
    assert "pass --resume" in _one_line(capsys) and _tree(tmp_path) == before


def test_a_negative_num_workers_is_an_argparse_usage_error_before_any_file_is_made(tmp_path, ckpt, capsys):
    photos = _photos(tmp_path / "p")
    before = _tree(tmp_path)
    args = _args(photos, ckpt, tmp_path / "labels.csv")
    args[args.index("--num-workers") + 1] = "-1"
    with pytest.raises(SystemExit) as exit_:
        label_main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and "num_workers option" not in err
    assert err.splitlines()[-1].endswith("argument --num-workers: must be >= 0, got -1")
    assert _tree(tmp_path) == before


def test_copy_to_a_file_or_inside_the_input_folder_then_a_corrected_run_works(tmp_path, ckpt, capsys):
    """The refused runs leave nothing that makes the corrected command ask for --resume/--overwrite,
    and a run with a target outside DIR labels the same images twice over, never its own copies."""
    photos, out = _photos(tmp_path / "p"), tmp_path / "labels.csv"
    (tmp_path / "a_file").write_text("x")
    assert label_main(_args(photos, ckpt, out, "--copy-to", str(tmp_path / "a_file"))) == 2
    assert label_main(_args(photos, ckpt, out, "--copy-to", str(photos / "sorted"))) == 2
    assert "scan the sorted images as inputs" in capsys.readouterr().err
    assert sorted(p.name for p in photos.iterdir()) == ["0.png", "1.png", "2.png"]
    assert label_main(_args(photos, ckpt, out, "--copy-to", str(tmp_path / "sorted"))) == 0
    assert label_main(_args(photos, ckpt, out, "--overwrite", "--copy-to", str(tmp_path / "sorted2"))) == 0
    assert len(_rows(out)) == 3 and len(list((tmp_path / "sorted2").rglob("*.png"))) == 3


def test_num_workers_is_capped_at_the_batches_to_decode_and_the_log_says_so(tmp_path, ckpt, monkeypatch, caplog):
    import mmkit.cli.label as label

    started, real = [], label.image_batches
    monkeypatch.setattr(label, "image_batches", lambda *a, **k: started.append(a[4]) or real(*a, **k))
    photos = _photos(tmp_path / "p")
    with caplog.at_level("INFO", logger="mmkit.cli.label"):
        assert label_main(_args(photos, ckpt, tmp_path / "a.csv", "--num-workers", "1000", "--batch-size", "2")) == 0
    assert started == [2]  # 3 images in batches of 2: 2 batches, one worker each
    assert "2 decoding workers, not 1000: one per batch" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="mmkit.cli.label"):  # a choice kept as it is is not remarked on
        assert label_main(_args(photos, ckpt, tmp_path / "b.csv", "--num-workers", "1", "--batch-size", "2")) == 0
    assert started == [2, 1] and "1 decoding workers)" in caplog.text


@pytest.mark.parametrize("flag", ["--labels-file", "--templates-file"])
def test_a_non_utf8_labels_or_templates_file_is_one_line_naming_the_file_line_and_byte(tmp_path, ckpt, capsys, flag):
    text = tmp_path / "bad.txt"
    text.write_bytes(b"a photo of a {}\nblue \xe2\x28 {}\n" if flag == "--templates-file" else b"cat\ndog \xe2\x28\n")
    args = _args(_photos(tmp_path / "p"), ckpt, tmp_path / "o" / "labels.csv", flag, str(text))
    if flag == "--labels-file":
        del args[1:3]  # instead of --labels
    assert label_main(args) == 2
    err = _one_line(capsys)
    assert f"{flag} {text}: not UTF-8" in err and "0xe2, on line 2" in err
    assert not (tmp_path / "o").exists()
    with open(text, "wb") as f:  # a wrong path (a video, a dump): refused after reading 64 MiB, not read whole
        f.truncate((64 << 20) + 1)
    assert label_main(args) == 2
    assert _one_line(capsys).strip().endswith(f"{text}: over 64 MiB, not a list of labels or templates")
    assert not (tmp_path / "o").exists()


def test_default_decoding_workers_are_shared_among_the_ranks_of_one_machine(monkeypatch):
    from mmkit.inference import image_batches

    monkeypatch.setattr(image_batches.os, "cpu_count", lambda: 17)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert image_batches.default_workers() == 8
    for local, expected in (("1", 8), ("4", 4), ("16", 1), ("64", 1), ("x", 8), ("0", 8)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert image_batches.default_workers() == expected, local

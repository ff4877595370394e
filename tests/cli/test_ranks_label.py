"""`mmkit label` shared by the ranks of one launcher (`mmkit.inference.ranks`): the real CLI under
`torchrun --nproc_per_node 2` on a tiny random-init CLIP, its rows and errors files compared byte for
byte with one process's (OMP_NUM_THREADS=1 in both) on 7 images in 4 batches (the second rank owns
fewer), one of them unreadable; a rank failing mid-run, then the run resumed; mistakes printed once by
the first rank, every rank stopped, nothing left behind."""
from __future__ import annotations

import argparse
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from _ranks import alone as _alone
from _ranks import mmkit_traceback as _mmkit_traceback
from _ranks import stopped_alike as _stopped_alike
from _ranks import torchrun as _torchrun

from mmkit.cli.label import _padded, _scored
from mmkit.inference.ranks import Ranks


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny CLIP and 7 images (batches of 2: rank 0 owns batches 0 and 2, rank 1 batches 1 and 3),
    3.png (in rank 1's first batch) not an image."""
    from _clip import save_tiny_clip

    d = tmp_path_factory.mktemp("label")
    folder = d / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        if i == 3:
            (folder / f"{i}.png").write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return save_tiny_clip(d / "clip"), folder


def _args(photos: tuple[Path, Path], out: str, *extra: str) -> list[str]:
    clip, folder = photos
    return ["label", str(folder), "--labels", "cat,dog,bird", "--model", str(clip), "--out", out, "--batch-size",
            "2", "--num-workers", "1", "--precision", "fp32", "--quiet", *extra]


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _errors(out: str) -> str:
    stem, suffix = out.rsplit(".", 1)
    return f"{stem}.errors.{suffix}"


@pytest.mark.parametrize("n, batch, world", [(0, 2, 2), (7, 2, 2), (8, 2, 3), (5, 3, 2), (1, 4, 3)])
def test_the_rounds_of_every_rank_in_rank_order_are_one_process_batches(n, batch, world, monkeypatch):
    """No processes: each rank's share through `_scored` (the model loading left out), rounds of equal
    number, read in rank order, give one process's batches."""
    import mmkit.cli.label as label

    todo = [f"{i}.png" for i in range(n)]
    args = argparse.Namespace(batch_size=batch, num_workers=0, device="cpu", multi_label=False)
    monkeypatch.setattr(label, "_together", lambda ranks, step: (_Cut(args.batch_size), iter(())))
    streams = [_scored(args, Path("."), todo, {}, [], Ranks(r, world))[0] for r in range(world)]
    rounds = [list(s) for s in streams]
    assert {len(r) for r in rounds} == {math.ceil(math.ceil(n / batch) / world)}  # the ranks end together
    merged = [b for parts in zip(*rounds) for b in parts if b is not None]
    assert merged == [todo[s:s + batch] for s in range(0, n, batch)]
    assert list(_padded(iter("ab"), 4)) == ["a", "b", None, None]


class _Cut:
    """A stand-in labeler whose `predict` cuts its paths into the batches it would score."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def predict(self, batches, paths, multi_label=False):
        return iter([paths[s:s + self.batch_size] for s in range(0, len(paths), self.batch_size)])


@pytest.fixture(scope="module")
def one_process(photos, tmp_path_factory):
    """`mmkit label ARGS --out alone/OUT` run once per (OUT, ARGS): its folder and the run."""
    done: dict = {}

    def run(out: str, *extra: str) -> tuple[Path, subprocess.CompletedProcess]:
        if (out, extra) not in done:
            cwd = tmp_path_factory.mktemp("alone")
            done[out, extra] = cwd / "alone", _alone(*_args(photos, f"alone/{out}", *extra), cwd=cwd)
        return done[out, extra]

    return run


@pytest.mark.parametrize("out, extra", [("labels.csv", ["--all-scores"]),
                                        ("labels.jsonl", ["--multi-label", "--top-k", "2", "--all-scores"])])
def test_label_under_torchrun_writes_one_process_outputs_byte_for_byte(photos, one_process, tmp_path, out, extra):
    alone_dir, alone = one_process(out, *extra)
    shared_dir = tmp_path / "shared"
    shared = _torchrun(*_args(photos, f"shared/{out}", *extra), cwd=tmp_path)
    assert alone.returncode == 0 and shared.returncode == 0, shared.stderr
    for name in (out, _errors(out)):
        assert (shared_dir / name).read_bytes() == (alone_dir / name).read_bytes()
    assert len((alone_dir / out).read_text().splitlines()) == 6 + out.endswith(".csv")  # rows (and a header)
    assert "3.png" in (alone_dir / _errors(out)).read_text()
    assert _names(shared_dir) == _names(alone_dir) == sorted([out, _errors(out), f"{out}.run.json"])
    summary = [line for line in shared.stderr.splitlines() if line.startswith(("labeled", "per label"))]
    assert len(summary) == 2 and "labeled 6 images, 1 unreadable" in summary[0]  # printed once, by rank 0
    assert "\n".join(summary).replace("shared", "alone") in alone.stderr


# Rank 1 scores its first batch, then fails: the run ends in the second round, after rank 0 wrote round one.
FAILING_RANK_1 = """
import os, sys
from mmkit.inference.zero_shot import ZeroShotClassifier
real = ZeroShotClassifier.predict
def predict(self, batches, paths, multi_label=False):
    results = real(self, batches, paths, multi_label)
    if os.environ["RANK"] == "1":
        yield next(results)
        raise RuntimeError("boom")
    yield from results
ZeroShotClassifier.predict = predict
from mmkit.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_a_rank_failing_stops_the_run_and_resuming_it_under_torchrun_ends_as_one_process(photos, one_process,
                                                                                         tmp_path):
    """Rank 1 fails in the second round: rank 0 has written round one (batches 0 and 1: 0-3.png, 3.png
    unreadable) to the .partial files, says so in one line, and all ranks exit 1; --resume under torchrun
    then scores 4-6.png (one process's last two batches) and ends with one process's files."""
    script = tmp_path / "failing_rank_1.py"
    script.write_text(FAILING_RANK_1)
    args = _args(photos, str(tmp_path / "shared" / "labels.csv"), "--all-scores")
    failed = _torchrun(*args, cwd=tmp_path, program=(str(script),))
    lines = [line for line in failed.stderr.splitlines() if line.startswith("mmkit label")]
    assert lines == [f"mmkit label: error: rank 1: boom; rows so far are in {args[args.index('--out') + 1]}.partial: "
                     "rerun with --resume"], failed.stderr
    assert _stopped_alike(failed, 1)
    partial = (tmp_path / "shared" / "labels.csv.partial").read_text().splitlines()
    assert [row.split(",")[0] for row in partial[1:]] == ["0.png", "1.png", "2.png"]
    resumed = _torchrun(*args, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "labeled 3 images, 0 unreadable" in resumed.stderr and "4 done by an earlier run" in resumed.stderr
    alone_dir, _ = one_process("labels.csv", "--all-scores")
    for name in ("labels.csv", "labels.errors.csv", "labels.csv.run.json"):
        assert (tmp_path / "shared" / name).read_bytes() == (alone_dir / name).read_bytes()
    assert _names(tmp_path / "shared") == ["labels.csv", "labels.csv.run.json", "labels.errors.csv"]


@pytest.mark.parametrize("extra, message", [
    (["--retry-errors"], "--retry-errors goes with --resume"),
    (["--multi-gpu"], "--multi-gpu splits each batch over every GPU of one process; under a launcher each rank "
                      "has its own (--device cuda is cuda:LOCAL_RANK): drop --multi-gpu"),
])
def test_usage_mistakes_stop_every_rank_printed_once_nothing_made(photos, tmp_path, extra, message):
    shared = _torchrun(*_args(photos, "out/labels.csv", *extra), cwd=tmp_path)
    lines = [line for line in shared.stderr.splitlines() if line.startswith("mmkit label")]
    assert lines == [f"mmkit label: error: {message}"], shared.stderr
    assert _stopped_alike(shared, 2) and not _mmkit_traceback(shared)
    assert _names(tmp_path) == []


def test_a_model_that_fails_to_load_stops_every_rank_and_leaves_nothing(photos, tmp_path):
    """Every rank fails to load the model after the first rank took the locks and opened the outputs:
    one line (the first rank's), exit 2 on all, and the folder it made is gone again."""
    _, folder = photos
    (tmp_path / "not_a_model").mkdir()
    args = _args(photos, "out/labels.csv")
    args[args.index("--model") + 1] = str(tmp_path / "not_a_model")
    shared = _torchrun(*args, cwd=tmp_path)
    lines = [line for line in shared.stderr.splitlines() if line.startswith("mmkit label")]
    assert lines == [f"mmkit label: error: {tmp_path / 'not_a_model'}: not an mmkit checkpoint directory "
                     "(no config.json)"]
    assert _stopped_alike(shared, 2) and not _mmkit_traceback(shared)
    assert _names(tmp_path) == ["not_a_model"] and _names(folder) == [f"{i}.png" for i in range(7)]

"""Writing meets a full disk (or a quota, or a file size limit) mid-run: one line naming the file that could not
be written and what is left, nothing half-written or temporary behind, no crash. Real processes whose files may
not grow past a few kilobytes (RLIMIT_FSIZE: a write past it fails with EFBIG, as one to a full disk fails with
ENOSPC; Python ignores the SIGXFSZ that comes with it). Before, the tools said "[Errno 28] No space left on
device" without a file, `mmkit label --copy-to` left its temporary copy, and on a full disk `mmkit embed` to .npy
died of a SIGBUS (its sparse memory-mapped output got no disk blocks), its temp file left: it now allocates the
file's blocks first (`test_reserve_allocates_or_says_the_disk_is_full`; a size limit fails even the sparse file)."""
from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _clip import save_tiny_clip
from _dalle import write_tiny_export
from _ranks import env
from _text_tools import write_text_tool_models
from PIL import Image

from mmkit.inference import text_rows

TOO_LARGE = "File too large"  # EFBIG's text: what ENOSPC's "No space left on device" is on a full disk


def _limited(limit: int, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`mmkit ARGV` whose files may not grow past `limit` bytes."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "mmkit", *argv], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=cap)


def _last_line(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    return run.stderr.strip().splitlines()[-1]


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if "tmp" in p.name]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_text_tool_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("".join(f"hello world number {i} with a few more words\n" for i in range(400)))
    return path


@pytest.mark.parametrize("tool, out", [("embed", "e.npy"), ("embed", "e.jsonl"), ("classify-text", "c.csv"),
                                       ("translate", "t.txt")])
def test_text_tools_name_the_output_and_leave_nothing(tool, out, models, texts, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    options = ["--output", str(folder / out)] if tool == "translate" else ["--out", str(folder / out), "--quiet"]
    run = _limited(4096, tool, "--model", str(models[tool]), str(texts), *options, cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    # translate has no --quiet: its progress bar's last state follows the line
    line = f"mmkit {tool}: error: cannot write {folder / out}: {TOO_LARGE}; nothing was written"
    assert line in run.stderr.splitlines()
    assert list(folder.iterdir()) == []


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def _photos(folder: Path, n: int, size: int = 32) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"photo_{i:03d}.png")
    return folder


def test_label_keeps_the_rows_written_for_resume(clip, tmp_path):
    photos, out = _photos(tmp_path / "photos", 120), tmp_path / "labels" / "l.csv"
    argv = ["label", str(photos), "--labels", "cat,dog,bird", "--model", str(clip), "--out", str(out),
            "--batch-size", "8", "--num-workers", "0", "--quiet"]
    run = _limited(2048, *argv, cwd=tmp_path)  # a few batches' rows fit
    partial = f"{out}.partial"
    assert run.returncode == 1, run.stderr
    assert _last_line(run) == (f"mmkit label: error: cannot write {partial}: {TOO_LARGE}; rows so far are in "
                               f"{partial}: rerun with --resume")
    assert _temp_files(tmp_path / "labels") == []
    kept = Path(partial).read_text().splitlines()
    assert 1 < len(kept) < 121
    resumed = subprocess.run([sys.executable, "-m", "mmkit", *argv, "--resume"], cwd=tmp_path, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 121 and rows[1:len(kept) - 1] == kept[1:-1]  # the last kept row may have been cut off


def test_label_copy_to_leaves_no_temporary_copy(clip, tmp_path):
    photos = _photos(tmp_path / "photos", 3, size=96)  # each PNG over the limit: its copy fails
    run = _limited(8192, "label", str(photos), "--labels", "cat,dog", "--model", str(clip), "--out",
                   str(tmp_path / "l.csv"), "--copy-to", str(tmp_path / "sorted"), "--num-workers", "0", "--quiet",
                   cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    line = _last_line(run)
    assert line.startswith(f"mmkit label: error: cannot copy {photos}/photo_000.png to {tmp_path}/sorted/"), line
    assert line.endswith(f"/photo_000.png: {TOO_LARGE}; no rows were written"), line
    assert _temp_files(tmp_path) == [] and not (tmp_path / "l.csv.partial").exists()


def test_generate_says_which_images_it_wrote(tmp_path):
    export = write_tiny_export(tmp_path / "export")
    out = tmp_path / "out"
    run = _limited(1024, "generate", "a red circle", "--model", str(export), "--out", str(out), "--num-images", "40",
                   "--quiet", cwd=tmp_path)  # the images fit, the grid of 40 does not
    assert run.returncode == 1, run.stderr
    line = _last_line(run)
    assert line.startswith(f"mmkit generate: error: cannot write {out}/000-a-red-circle-grid.png: {TOO_LARGE}; "
                           f"40 of 40 images are in {out} (000-a-red-circle-0.png to 000-a-red-circle-39.png); "
                           "no manifest.json was written"), line
    assert len(list(out.glob("*.png"))) == 40 and _temp_files(out) == []


def test_atomic_path_names_the_output_when_the_disk_fills(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(OSError, match=rf"^cannot write {path}: No space left on device; nothing was written$"):
        with text_rows.atomic_path(path):
            raise OSError(28, "No space left on device")
    cache = tmp_path / "cache" / "kernel.so"  # another file the body writes (a compile cache on a full /tmp)
    with pytest.raises(OSError, match=rf"^cannot write {cache}: No space left on device; {path} was not written$"):
        with text_rows.atomic_path(path):
            raise OSError(28, "No space left on device", str(cache))
    with pytest.raises(OSError, match=r"^\[Errno 5\] Input/output error$"):  # not a write's error: as it was
        with text_rows.atomic_path(path):
            raise OSError(5, "Input/output error")
    assert list(tmp_path.iterdir()) == []


def test_write_errors_keep_their_line_without_the_ending():
    """`headline`: the line without "; nothing was written", for a caller that says itself what was written
    (`mmkit generate`), where it stripped the words off the message by hand; `in_context` follows a wrapper's
    `__cause__` before what it was raised while handling, as `mmkit.cli._user_error` does with it."""
    from mmkit.errors import WriteFailed, in_context

    failed = WriteFailed.of("write a.png", OSError(28, "No space left on device"), "; nothing was written")
    assert (str(failed), failed.headline, failed.strerror) == (
        "cannot write a.png: No space left on device; nothing was written", "cannot write a.png: No space left on "
        "device", "No space left on device")
    assert text_rows._write_error(Path("b"), "Is a directory", "; nothing was written").headline == (
        "cannot write b: Is a directory")
    try:
        try:
            raise KeyError("handled")
        except KeyError:
            raise RuntimeError("wrapper") from failed
    except RuntimeError as e:
        assert in_context(e, lambda x: isinstance(x, OSError)) is failed
        assert in_context(e, lambda x: isinstance(x, KeyError)) is None  # behind the explicit cause


def test_a_loggers_full_disk_names_its_file():
    """Lightning's CSVLogger closing metrics.csv on a full disk was a 40-line traceback ending in a bare
    "[Errno 28] No space left on device" (checked on a full tmpfs: now this line); the file is the OSError's own,
    else the one the innermost frame names (fsspec's file object keeps it as `path`)."""
    from mmkit.cli import _user_error

    class Opener:  # as fsspec's LocalFileOpener
        def __init__(self, path):
            self.path = path

        def close(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as closing:
        Opener("/runs/lightning_logs/version_0/metrics.csv").close()
    assert _user_error(closing.value) == ("cannot write /runs/lightning_logs/version_0/metrics.csv: No space left "
                                          "on device")
    assert _user_error(OSError(122, "Disk quota exceeded", "/runs/hparams.yaml")) == (
        "cannot write /runs/hparams.yaml: Disk quota exceeded")
    assert _user_error(OSError(5, "Input/output error")) is None  # not a full disk: a traceback, as before


def test_reserve_allocates_or_says_the_disk_is_full(tmp_path, monkeypatch):
    path = tmp_path / "map"
    with open(path, "wb") as f:
        f.truncate(1 << 20)  # sparse, as np.lib.format.open_memmap makes it
    text_rows.reserve(path)
    assert path.stat().st_blocks * 512 >= 1 << 20

    def fails(errno_):
        def fallocate(fd, offset, length):
            raise OSError(errno_, "no")
        return fallocate

    monkeypatch.setattr(text_rows.os, "posix_fallocate", fails(95))  # EOPNOTSUPP: the map is filled as before
    text_rows.reserve(path)
    monkeypatch.setattr(text_rows.os, "posix_fallocate", fails(28))
    with pytest.raises(OSError):
        text_rows.reserve(path)


def test_fit_leaves_no_truncated_checkpoint(tmp_path):
    """Lightning wrote the checkpoint to /tmp and moved it, a copy across filesystems: a full disk left a truncated
    best-epoch=00.ckpt (which `--ckpt_path` then failed to read) and a 30-line traceback."""
    repo = Path(__file__).resolve().parents[2]
    run = _limited(1 << 20, "fit", "--config", str(repo / "configs" / "vit_digits.yaml"), "--trainer.max_epochs", "1",
                   "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_train_batches", "2",
                   "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
                   "--model.init_args.export_dir", str(tmp_path / "export"), "--data.init_args.num_workers", "0",
                   cwd=repo)  # the checkpoint (10 MB with the optimizer's state) exceeds the limit
    assert run.returncode == 2, run.stderr
    assert _last_line(run) == (f"mmkit fit: error: cannot write {tmp_path}/checkpoints/best-epoch=00.ckpt: "
                               f"{TOO_LARGE}; nothing was written")
    assert list((tmp_path / "checkpoints").iterdir()) == [] and not (tmp_path / "export").exists()


def test_an_export_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from mmkit.errors import WriteFailed
    from mmkit.models import ViT
    from mmkit.weights import native

    model = ViT(image_size=8, patch_size=4, dim=8, depth=1, num_heads=2, num_classes=2)
    model.save_pretrained(tmp_path / "export")
    before = {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(native, "save_file", full)
    with pytest.raises(WriteFailed, match=rf"^cannot write {tmp_path}/export/model.safetensors: No space left on "
                                          "device; the file there is as it was$"):
        model.save_pretrained(tmp_path / "export")
    assert {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir()} == before
    monkeypatch.setattr(native, "save_file", lambda *a, **k: (_ for _ in ()).throw(SafetensorError("other")))
    with pytest.raises(SafetensorError, match="other"):  # any other failure as it was
        model.save_pretrained(tmp_path / "export")


def test_a_checkpoint_path_that_cannot_be_written_is_named(tmp_path):
    from mmkit.cli.lightning import CheckpointFiles
    from mmkit.errors import WriteFailed

    (tmp_path / "x.ckpt").mkdir()
    with pytest.raises(WriteFailed, match=rf"^cannot write {tmp_path}/x.ckpt: it is a folder$"):
        CheckpointFiles().save_checkpoint({"a": 1}, tmp_path / "x.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


def test_the_trainer_keeps_a_checkpoint_io_of_the_users_own():
    """Only Lightning's default checkpoint IO is replaced: a strategy given its own (or XLA's) would clash with a
    plugin ("checkpoint_io set through both strategy class and plugins")."""
    from pytorch_lightning.plugins import TorchCheckpointIO
    from pytorch_lightning.strategies import SingleDeviceStrategy

    from mmkit.cli.lightning import CheckpointFiles, Trainer

    class Own(TorchCheckpointIO):
        pass

    plain = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    assert type(plain.strategy.checkpoint_io) is CheckpointFiles
    own = Trainer(strategy=SingleDeviceStrategy("cpu", checkpoint_io=Own()), logger=False, enable_progress_bar=False)
    assert type(own.strategy.checkpoint_io) is Own
    given = Trainer(accelerator="cpu", plugins=[Own()], logger=False, enable_progress_bar=False)
    assert type(given.strategy.checkpoint_io) is Own


def test_a_transcript_that_cannot_be_written_names_the_reason_once(tmp_path):
    """`subtitles.write_outputs` names the file itself and shows the error's strerror: the reason alone."""
    from mmkit.errors import WriteFailed

    error = WriteFailed.of(f"write {tmp_path}/a.srt", OSError(28, "No space left on device"), "; nothing was written")
    assert error.strerror == "No space left on device" and error.errno is None
    assert str(error) == f"cannot write {tmp_path}/a.srt: No space left on device; nothing was written"

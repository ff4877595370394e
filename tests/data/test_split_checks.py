"""A val_dir or test_dir the user named that yields no readable image is one line naming the option
(as train_dir's is), not a silent "no validation" run or a test with no metrics. Tiny PNGs and junk
files are written to tmp_path; the CLI check runs a 16 px ViT in-process and stops at setup."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmkit.cli import main
from mmkit.data import ImageFolderDataModule

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

SMALL = dict(image_size=8, batch_size=2, num_workers=0)
FIT = str(Path(__file__).resolve().parents[2] / "configs" / "vit_digits.yaml")


def _tree(root: Path, entries: dict[str, list[str]]) -> Path:
    """root/<class>/<name>: ok*.png a readable PNG, anything else bytes that are no image."""
    for name, files in entries.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            if file.startswith("ok"):
                Image.new("RGB", (10, 10), (200, 30, 30)).save(root / name / file)
            else:
                (root / name / file).write_bytes(b"not an image")
    return root


def _bad_tree(root: Path, bad_files: dict[Path, str]) -> Path:
    """root/{a,b}/ holding only the conftest's unreadable files (garbage, truncated, bomb...)."""
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for path in bad_files:
            shutil.copy(path, root / name / path.name)
    return root


@pytest.mark.parametrize("option, stage", [("val_dir", "fit"), ("val_dir", "validate"), ("test_dir", "test")])
def test_a_named_split_of_unreadable_files_is_one_line_naming_it(tmp_path, bad_files, option, stage):
    train = _tree(tmp_path / "train", {"a": ["ok.png"], "b": ["ok.png"]})
    bad = _bad_tree(tmp_path / "bad", bad_files)
    dm = ImageFolderDataModule(train_dir=str(train), **{option: str(bad)}, **SMALL)
    with pytest.raises(ValueError) as caught:
        dm.setup(stage)
    message = str(caught.value)
    assert message.startswith(f"{option} {bad}: no readable images ({2 * len(bad_files)} skipped: ")
    assert "\n" not in message and "not an image" in message


@pytest.mark.parametrize("option", ["val_dir", "test_dir"])
def test_a_named_split_without_image_files_is_one_line_naming_it(tmp_path, option):
    train = _tree(tmp_path / "train", {"a": ["ok.png"], "b": ["ok.png"]})
    empty = _tree(tmp_path / "empty", {"a": [], "b": []})
    (empty / "a" / "notes.txt").write_text("no pictures here")  # not an image name: never listed
    dm = ImageFolderDataModule(train_dir=str(train), **{option: str(empty)}, **SMALL)
    with pytest.raises(ValueError, match=rf"^{option} \S+empty: no images found$"):
        dm.setup({"val_dir": "validate", "test_dir": "test"}[option])


def test_a_split_with_some_readable_images_is_still_accepted(tmp_path, caplog):
    train = _tree(tmp_path / "train", {"a": ["ok.png"], "b": ["ok.png"]})
    val = _tree(tmp_path / "val", {"a": ["ok.png", "junk.png"], "b": ["junk.png"]})
    dm = ImageFolderDataModule(train_dir=str(train), val_dir=str(val), test_dir=str(val), **SMALL)
    dm.setup()  # a class short of images is only a warning for held-out splits
    assert len(dm.samples["val"]) == len(dm.samples["test"]) == 1
    assert "no readable images for class(es) b; the val scores cover the other classes only" in caplog.text


def test_no_val_dir_is_still_no_validation(tmp_path):
    train = _tree(tmp_path / "train", {"a": ["ok.png"], "b": ["ok.png"]})
    dm = ImageFolderDataModule(train_dir=str(train), **SMALL)
    dm.setup("fit")
    assert dm.samples["val"] == [] and len(dm.samples["train"]) == 2


def _cli(tmp_path, monkeypatch, subcommand: str, data: list[str]) -> int:
    """`mmkit SUBCOMMAND` of a 16 px, one-block ViT on the folders `data` names, run in-process on one thread."""
    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    vit = "--model.init_args.model.init_args."
    try:
        return main([subcommand, "--config", FIT, "--data", "mmkit.data.ImageFolderDataModule", *data,
                     "--data.init_args.image_size", "16", "--data.init_args.num_workers", "0",
                     vit + "image_size", "16", vit + "patch_size", "4", vit + "dim", "32", vit + "depth", "1",
                     vit + "num_heads", "2", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path / "run")])
    finally:
        torch.set_num_threads(threads)


def _error_lines(capsys) -> tuple[list[str], str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()], err


@pytest.mark.parametrize("subcommand, option", [("fit", "val_dir"), ("test", "test_dir")])
def test_cli_exits_2_with_one_line(tmp_path, monkeypatch, capsys, subcommand, option):
    train = _tree(tmp_path / "train", {"a": ["ok1.png", "ok2.png"], "b": ["ok1.png", "ok2.png"]})
    bad = _tree(tmp_path / "bad", {"a": ["junk1.png"], "b": ["junk2.jpg"]})
    code = _cli(tmp_path, monkeypatch, subcommand,
                ["--data.init_args.train_dir", str(train), f"--data.init_args.{option}", str(bad)])
    lines, err = _error_lines(capsys)
    assert code == 2, err
    assert len(lines) == 1 and f"{option} {bad}: no readable images (2 skipped: " in lines[0], err
    assert "Traceback" not in err


def test_cli_refuses_a_val_split_that_holds_out_nothing_in_one_line(tmp_path, monkeypatch, capsys):
    """It trained with no validation, so no best checkpoint was written and `--ckpt_path best` failed later."""
    train = _tree(tmp_path / "train", {"a": ["ok1.png", "ok2.png", "ok3.png"], "b": ["ok1.png", "ok2.png"]})
    code = _cli(tmp_path, monkeypatch, "fit", ["--data.init_args.train_dir", str(train),
                                               "--data.init_args.val_split", "0.1"])
    lines, err = _error_lines(capsys)
    assert code == 2, err
    assert lines == ["mmkit fit: error: val_split 0.1 leaves no validation images (2 to 3 per class, 5 in all); "
                     "raise it to 0.33 or more, or give val_dir"], err
    assert not list(tmp_path.rglob("*.ckpt"))  # refused at setup, before any training step

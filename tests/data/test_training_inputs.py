"""Bad training inputs are one-line ValueErrors naming the option and why, raised at setup
(the `mmkit fit` CLI prints them as one line, exit 2), and bad rows are reported and skipped.
Tiny PNGs are written with PIL to tmp_path."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from mmkit.data import CaptionTableDataModule, ImageFolderDataModule, SidecarCaptionDataModule, read_caption_table

SMALL = dict(image_size=8, batch_size=2, num_workers=0)


def _png(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 10), colour).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    _png(path)
    path.write_bytes(path.read_bytes()[:-12])  # the end chunk is gone
    return path


def _classes(root: Path, files: dict[str, list[str]]) -> Path:
    """root/<class>/<name>: ok*.png good, junk* not an image, cut* truncated PNG."""
    for name, entries in files.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for entry in entries:
            path = root / name / entry
            if entry.startswith("ok"):
                _png(path)
            elif entry.startswith("cut"):
                _truncated_png(path)
            else:
                path.write_bytes(b"not an image")
    return root


@pytest.mark.parametrize("files, message", [
    ({"a": [], "b": []}, r"train_dir \S+: no images found"),
    ({"a": ["junk1.png"], "b": ["junk2.jpg"]}, r"train_dir \S+: no readable images \(2 skipped: .*not an image"),
    ({"a": ["cut1.png"], "b": ["cut2.png"]}, r"no readable images \(2 skipped: .*no PNG end chunk"),
])
def test_image_folder_train_split_without_usable_images_is_one_line(tmp_path, files, message):
    dm = ImageFolderDataModule(train_dir=str(_classes(tmp_path / "train", files)), **SMALL)
    with pytest.raises(ValueError, match=message):
        dm.setup("fit")


@pytest.mark.parametrize("bad", [[], ["junk.png", "cut.png"]])
def test_image_folder_refuses_a_train_class_without_readable_images(tmp_path, bad):
    root = _classes(tmp_path / "train", {"a": ["ok1.png", "ok2.png"], "b": bad, "c": ["ok.png"]})
    with pytest.raises(ValueError, match=r"train_dir \S+: no readable images for class\(es\) b;"):
        ImageFolderDataModule(train_dir=str(root), **SMALL).setup("fit")


def test_image_folder_val_split_missing_a_class_is_only_a_warning(tmp_path, caplog):
    train = _classes(tmp_path / "train", {"a": ["ok.png"], "b": ["ok.png"]})
    val = _classes(tmp_path / "val", {"a": ["ok.png"], "b": []})
    dm = ImageFolderDataModule(train_dir=str(train), val_dir=str(val), **SMALL)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")  # a small held-out set may lack a class; its score is still a score
    assert len(dm.samples["val"]) == 1 and "no readable images for class(es) b" in caplog.text


@pytest.mark.parametrize("option", ["train_dir", "val_dir", "test_dir"])
def test_image_folder_missing_folder_names_its_option(tmp_path, option):
    train = _classes(tmp_path / "train", {"a": ["ok.png"], "b": ["ok.png"]})
    dirs = {"train_dir": str(train), option: str(tmp_path / "nope")}
    with pytest.raises(ValueError, match=rf"^{option} \S+nope: no such folder$"):
        ImageFolderDataModule(**dirs, **SMALL)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=rf"^{option} \S+file: not a folder$"):
        ImageFolderDataModule(**{**dirs, option: str(tmp_path / "file")}, **SMALL)


@pytest.mark.parametrize("table, message", [
    ("path\tcaption\nmissing1.png\ta\nmissing2.png\tb\n",
     r"train_file \S+t.tsv: no readable images \(2 skipped: \S+missing1.png \(cannot read file"),
    ("path\tcaption\nimg.png\t \nimg.png\t\n", r"train_file \S+t.tsv: no usable rows \(2 dropped: \S+t.tsv:2 \(empty"),
    ("path\tcaption\n", r"train_file \S+t.tsv: no rows$"),
])
def test_caption_table_train_split_without_usable_rows_is_one_line(tmp_path, table, message):
    _png(tmp_path / "img.png")
    (tmp_path / "t.tsv").write_text(table)
    with pytest.raises(ValueError, match=message):
        CaptionTableDataModule(train_file=str(tmp_path / "t.tsv"), **SMALL).setup("fit")


def test_caption_table_missing_file_names_its_option(tmp_path):
    with pytest.raises(ValueError, match=r"^val_file \S+nope.tsv: no such file$"):
        CaptionTableDataModule(val_file=str(tmp_path / "nope.tsv"), **SMALL).setup("validate")


def test_caption_table_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "t.csv").write_bytes("path,caption\na.png,ok\nb.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"t.csv:3: not UTF-8 text"):
        read_caption_table(tmp_path / "t.csv")
    (tmp_path / "t.jsonl").write_bytes(b'{"path": "a.png", "caption": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:1: not UTF-8 text"):
        read_caption_table(tmp_path / "t.jsonl")


def test_caption_table_field_over_csv_limit_names_file_and_line(tmp_path):
    (tmp_path / "t.tsv").write_text(f"path\tcaption\na.png\tok\nb.png\t{'x' * 140_000}\n")
    with pytest.raises(ValueError, match=r"t.tsv:3: unreadable CSV record \(field larger than field limit"):
        read_caption_table(tmp_path / "t.tsv")


def test_non_string_jsonl_caption_is_a_reported_bad_row(tmp_path, caplog):
    rows = [{"path": "a.png", "caption": ["a", "b"]}, {"path": "b.png", "caption": 7},
            {"path": "c.png", "caption": "c"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dropped = []
    with caplog.at_level(logging.WARNING):
        assert read_caption_table(tmp_path / "t.jsonl", dropped=dropped) == [(tmp_path / "c.png", "c")]
    assert [reason for _, reason in dropped] == ["non-string caption (list)", "non-string caption (int)"]
    assert "dropped 2 of 3 rows" in caplog.text and "t.jsonl:1 (non-string caption (list))" in caplog.text


def test_sidecar_train_dir_missing_file_or_empty_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    _png(tmp_path / "uncaptioned" / "a.png")
    for folder, message in [("nope", "no such folder"), ("file", "not a folder"), ("empty", "no images"),
                            ("uncaptioned", r"no usable images \(1 dropped: \S+a.png \(no .txt caption\)\)")]:
        dm = SidecarCaptionDataModule(train_dir=str(tmp_path / folder), **SMALL)
        with pytest.raises(ValueError, match=rf"^train_dir \S+{folder}: {message}$"):
            dm.setup("fit")


def test_a_caption_table_saved_with_a_bom_reads_its_header(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    table = tmp_path / "t.csv"
    table.write_bytes("\ufeffpath,caption\na.png,a red square\n".encode("utf-8"))  # Excel's "CSV UTF-8"
    assert [c for _, c in read_caption_table(table)] == ["a red square"]

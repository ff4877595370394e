"""mmkit.data.captions: CSV/TSV/JSONL caption tables, side-car .txt captions, the tokenizing
collate, and the two DataModules (splits, skipped unreadable images). Images are tiny flat
colours written to tmp_path; no network.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor

from mmkit.data import (
    CaptionCollate,
    CaptionTableDataModule,
    SidecarCaptionDataModule,
    SkippedSample,
    find_sidecar_captions,
    read_caption_table,
)
from mmkit.data.text import CLIPTokenizer

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def _images(folder: Path) -> dict[str, Path]:
    """folder/img/<colour>.png, 12x10 flat colour images."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    out = {}
    for name, rgb in COLOURS.items():
        out[name] = folder / "img" / f"{name}.png"
        Image.new("RGB", (12, 10), rgb).save(out[name])
    return out


def test_csv_and_jsonl_tables_resolve_paths_relative_to_the_table(tmp_path):
    paths = _images(tmp_path)
    (tmp_path / "t.csv").write_text('file,text\nimg/red.png,"a red,  square"\nimg/blue.png,\n'
                                    f"{paths['green']},  green\n")
    pairs = read_caption_table(tmp_path / "t.csv", image_key="file", caption_key="text")
    # whitespace collapsed; the row with an empty caption dropped; absolute paths kept
    assert pairs == [(tmp_path / "img/red.png", "a red, square"), (paths["green"], "green")]

    rows = [{"path": "img/white.png", "caption": "white"}, {"path": "img/red.png", "caption": "red", "x": 1}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_caption_table(tmp_path / "t.jsonl") == [(tmp_path / "img/white.png", "white"),
                                                         (tmp_path / "img/red.png", "red")]
    (tmp_path / "t.tsv").write_text("path\tcaption\nimg/red.png\tred one\n")
    assert read_caption_table(tmp_path / "t.tsv") == [(tmp_path / "img/red.png", "red one")]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("t.csv", "image,caption\na.png,x\n", r"no column \['path'\]"),
    ("t.jsonl", '{"path": "a.png", "caption": "x"}\n{not json}\n', r"t.jsonl:2: invalid JSON"),
    ("t.jsonl", '{"path": "a.png"}\n', r"t.jsonl:1: expected an object with keys"),
    ("t.json", "[]", "unsupported caption table"),
])
def test_malformed_tables_are_refused_with_the_place(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_caption_table(tmp_path / name)


def test_sidecar_captions_pair_each_image_with_its_txt(tmp_path, caplog):
    paths = _images(tmp_path)
    paths["red"].with_suffix(".txt").write_text("a red\nsquare \n")
    paths["green"].with_suffix(".txt").write_text("   ")  # empty: no caption
    paths["blue"].with_suffix(".txt").write_text("blue")
    (tmp_path / "img" / "notes.txt").write_text("not an image's caption")
    pairs = find_sidecar_captions(tmp_path)
    assert pairs == [(paths["blue"], "blue"), (paths["red"], "a red square")]
    assert "dropped 2 of 4 images" in caplog.text  # green (empty) and white (no file)
    paths["green"].with_suffix(".txt").write_bytes(b"x" * (64 << 10))  # the largest caption file read
    paths["blue"].with_suffix(".txt").write_bytes(b"x" * ((64 << 10) + 1))  # a log or a book, not a caption
    dropped = []
    pairs = find_sidecar_captions(tmp_path, dropped)
    assert [(p, len(c)) for p, c in pairs] == [(paths["green"], 64 << 10), (paths["red"], 12)]
    assert (str(paths["blue"]), ".txt caption over 64 KiB: not a caption") in dropped


def test_collate_tokenizes_captions_and_drops_skipped_samples():
    tok = CLIPTokenizer(context_length=8)
    items = [(torch.zeros(3, 4, 4), "a red square", 0, 3), SkippedSample("bad.png", "zero-byte file"),
             (torch.ones(3, 4, 4), "a blue circle on the left", 2, -1)]
    batch = CaptionCollate(tok)(items)
    assert batch["images"].shape == (2, 3, 4, 4) and batch["images"][1].eq(1).all()
    assert batch["captions"] == ["a red square", "a blue circle on the left"]
    torch.testing.assert_close(batch["token_ids"], tok(["a red square", "a blue circle on the left"]))
    assert batch["token_ids"].shape == (2, 8) and batch["token_ids"].dtype == torch.long
    assert batch["indices"].tolist() == [0, 2] and batch["targets"].tolist() == [3, -1]
    assert "targets" not in CaptionCollate(tok)([(torch.zeros(3, 4, 4), "x", 0)])
    assert CaptionCollate(tok)([SkippedSample("bad.png", "zero-byte file")]) is None


def test_table_datamodule_batches_skip_unreadable_files_and_split(tmp_path):
    paths = _images(tmp_path)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    rows = [{"path": f"img/{n}.png", "caption": f"a {n} picture"} for n in [*COLOURS, "broken", "missing"]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = CaptionTableDataModule(train_file=str(tmp_path / "train.jsonl"), image_size=8, batch_size=8,
                                num_workers=0, context_length=12, val_split=0.25)
    dm.setup("fit")
    assert {p for p, _ in dm.skipped} == {str(tmp_path / "img/broken.png"), str(tmp_path / "img/missing.png")}
    assert len(dm.samples["train"]) == 3 and len(dm.samples["val"]) == 1
    assert not {p for p, _ in dm.samples["train"]} & {p for p, _ in dm.samples["val"]}
    batch = next(iter(dm.val_dataloader()))
    (path, caption), = dm.samples["val"]
    assert batch["captions"] == [caption] and batch["token_ids"].shape == (1, 12)
    colour = torch.tensor(COLOURS[path.stem], dtype=torch.float) / 255
    mean, std = torch.as_tensor(dm.eval_transform.mean), torch.as_tensor(dm.eval_transform.std)
    # The eval image is the flat colour, normalised with CLIP's statistics, at 8x8.
    torch.testing.assert_close(batch["images"][0], ((colour - mean) / std)[:, None, None].expand(3, 8, 8),
                               atol=1e-5, rtol=0)
    train = next(iter(dm.train_dataloader()))
    assert train["images"].shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="test_dataloader needs test_file"):
        dm.test_dataloader()


def test_sidecar_datamodule_reads_separate_split_folders(tmp_path):
    for split in ("train", "val"):
        for path in _images(tmp_path / split).values():
            path.with_suffix(".txt").write_text(f"{split} {path.stem}")
    dm = SidecarCaptionDataModule(train_dir=str(tmp_path / "train"), val_dir=str(tmp_path / "val"), image_size=8,
                                  batch_size=3, num_workers=0, context_length=10)
    dm.setup("fit")
    assert sorted(c for _, c in dm.samples["val"]) == sorted(f"val {n}" for n in COLOURS)
    batches = list(dm.train_dataloader())
    assert [b["images"].shape for b in batches] == [(3, 3, 8, 8)]  # the partial last batch is dropped
    assert dm.inference_metadata()["context_length"] == 10


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_val_or_test_table_without_readable_images_is_one_line_naming_it(tmp_path, split):
    paths = _images(tmp_path)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    good = [{"path": f"img/{n}.png", "caption": f"a {n} picture"} for n in COLOURS]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"path": "img/broken.png", "caption": "a broken picture"}) + "\n")
    dm = CaptionTableDataModule(train_file=str(tmp_path / "train.jsonl"), image_size=8, batch_size=8, num_workers=0,
                                context_length=12, **{f"{split}_file": str(tmp_path / "bad.jsonl")})
    with pytest.raises(ValueError) as err:  # was accepted: no validation (no best checkpoint), or no test metrics
        dm.setup("fit" if split == "val" else "test")
    assert f"{split}_file" in str(err.value) and "\n" not in str(err.value) and len(paths) == len(COLOURS)


def _table(tmp_path: Path, rows: int) -> Path:
    """A .jsonl table of `rows` rows over the four colour images (an image may be listed more than once)."""
    names = list(_images(tmp_path))
    lines = [json.dumps({"path": f"img/{names[i % len(names)]}.png", "caption": f"picture {i}"}) for i in range(rows)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "t.jsonl"


@pytest.mark.parametrize("val_split, message", [
    (0.01, "val_split 0.01 leaves no validation rows (24 in all); raise it to 0.042 or more, or give val_file"),
    (0.99, "val_split 0.99 leaves no training rows (all 24 held out for validation); lower it or give val_file"),
], ids=["no-validation", "no-training"])
@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_a_val_split_that_empties_a_side_is_one_line_naming_it(tmp_path, val_split, message, stage):
    """An empty val side was silent (no val metric, no best checkpoint); an empty train side, a sampler traceback
    ("num_samples should be a positive integer value") when the train loader was built."""
    dm = CaptionTableDataModule(train_file=str(_table(tmp_path, 24)), image_size=8, batch_size=4, num_workers=0,
                                context_length=12, val_split=val_split)
    with pytest.raises(ValueError) as caught:
        dm.setup(stage)
    assert str(caught.value) == message
    assert "train" not in dm.samples  # refused before any split (or loader) was made of it


def test_the_suggested_val_split_holds_out_one_row_and_a_single_row_names_val_file(tmp_path):
    table = str(_table(tmp_path, 24))
    dm = CaptionTableDataModule(train_file=table, image_size=8, batch_size=4, num_workers=0, val_split=0.042)
    dm.setup("fit")
    assert (len(dm.samples["train"]), len(dm.samples["val"])) == (23, 1)
    single = str(_table(tmp_path / "one", 1))
    with pytest.raises(ValueError, match=r"^val_split 0.3 leaves no validation rows \(1 in all\); give val_file$"):
        CaptionTableDataModule(train_file=single, image_size=8, num_workers=0, val_split=0.3).setup("fit")


def test_a_sidecar_val_split_names_images_and_val_dir(tmp_path):
    for path in _images(tmp_path).values():
        path.with_suffix(".txt").write_text(path.stem)
    dm = SidecarCaptionDataModule(train_dir=str(tmp_path), image_size=8, num_workers=0, val_split=0.1)
    with pytest.raises(ValueError, match=r"^val_split 0.1 leaves no validation images \(4 in all\); raise it to 0.25 "
                                         r"or more, or give val_dir$"):
        dm.setup("fit")


def test_normalize_as_takes_a_models_recorded_statistics_for_training_and_evaluation(tmp_path):
    """`normalize_as` (what `CLIPTask.setup` calls for a model that records its preprocessing): both transforms
    normalise with the model's mean and std and resize with its filter unless one was given, evaluation resizes as
    it does, and the export metadata says so; the values it already has change nothing."""
    dm = CaptionTableDataModule(train_file=str(_table(tmp_path, 8)), image_size=8, batch_size=4, num_workers=0,
                                context_length=12)
    flat = Image.new("RGB", (12, 10), (255, 0, 0))

    def statistics() -> tuple[list[float], list[float], Tensor]:
        """(training's Normalize mean and std (its colour jitter makes its pixels random), an evaluated pixel)"""
        normalize = dm.train_transform.transforms[-1]
        return normalize.mean.tolist(), normalize.std.tolist(), dm.eval_transform(flat)[:, 0, 0]

    openai = statistics()
    assert dm.normalize_as({"mean": list(dm.eval_transform.mean), "std": dm.eval_transform.std}) == {}
    assert statistics()[:2] == openai[:2] and statistics()[2].tolist() == openai[2].tolist()
    pe = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash", "interpolation": "bilinear"}
    assert dm.normalize_as(pe) == {"mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash",
                                   "interpolation": "bilinear"}
    mean, std, pixel = statistics()
    assert mean == std == [0.5] * 3 and mean != openai[0]
    torch.testing.assert_close(pixel, torch.tensor([1.0, -1.0, -1.0]))  # (pixel - 0.5) / 0.5 of pure red
    crop = dm.train_transform.transforms[0]  # training's random crops resize with the model's filter too
    assert "bilinear" in str(crop.interpolation).lower() and dm.eval_transform.interpolation == "bilinear"
    meta = dm.inference_metadata()
    assert (meta["mean"], meta["std"], meta["resize_mode"], meta["interpolation"]) == (
        [0.5] * 3, [0.5] * 3, "squash", "bilinear")
    chosen = CaptionTableDataModule(train_file=str(_table(tmp_path, 8)), image_size=8, batch_size=4, num_workers=0,
                                    context_length=12, interpolation="bicubic")
    assert "interpolation" not in chosen.normalize_as(pe)  # a filter given is the user's choice
    assert chosen.inference_metadata()["interpolation"] == "bicubic"

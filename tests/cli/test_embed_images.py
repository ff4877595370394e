"""`mmkit embed` with a CLIP (`mmkit.cli.clip_embed`) or a ViT (`mmkit.cli.embed_images`): image and text vectors
equal to open_clip's normalised `encode_image` / `encode_text` for an open_clip architecture with a weights file,
and a ViT export's features equal to timm's pre-logits on timm's own preprocessing; the .npy rows with their list
of files (an unreadable file a NaN row and an "error"), the .jsonl records; int8 on the tower that runs, bf16 close
to fp32; the mistakes in one line; under `torchrun --nproc_per_node 2` byte for byte one process's outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _clip import OC_TINY, save_open_clip_tiny, save_tiny_clip
from _ranks import HOOKED_CLI, alone, stopped_alike, torchrun
from PIL import Image

from mmkit.cli.embed import main as embed_main
from mmkit.inference.quantize import Int8Linear

TEXTS = ["a photo of a cat", "", "the moon over a quiet sea at night, seen from a small boat", "a dog"]


def _photos(folder: Path, unreadable: bool = True) -> Path:
    """Six small images (two in a subfolder, one a JPEG) and, with `unreadable`, a file that is not an image."""
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for i in range(6):
        pixels = rng.integers(0, 256, (30 + 3 * i, 41, 3), dtype=np.uint8)
        name = f"sub/{i}.png" if i in (2, 4) else f"{i}.jpg" if i == 5 else f"{i}.png"
        Image.fromarray(pixels).save(folder / name)
    if unreadable:
        (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _texts(path: Path) -> Path:
    path.write_text("\n".join(TEXTS) + "\n")
    return path


@pytest.fixture(scope="module")
def oc_file(tmp_path_factory) -> Path:
    return save_open_clip_tiny(tmp_path_factory.mktemp("oc"))


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


def test_images_and_texts_equal_open_clip_normalised_embeddings(tmp_path, oc_file, capsys):
    import open_clip

    photos = _photos(tmp_path / "photos")
    common = ["--model", OC_TINY, "--pretrained", str(oc_file), "--exact-decode", "--batch-size", "3",
              "--num-workers", "0", "--quiet"]
    assert embed_main([str(photos), "--out", str(tmp_path / "img.npy"), *common]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("mmkit embed: broken.png: not an image") and err[0].endswith("; skipped")
    assert err[1] == (f"mmkit embed: 6 image embeddings of dim 32 written to {tmp_path / 'img.npy'}, their files "
                      f"listed in {tmp_path / 'img.paths.jsonl'} (1 unreadable file skipped)")
    listed = [json.loads(line) for line in (tmp_path / "img.paths.jsonl").read_text().splitlines()]
    assert [e["path"] for e in listed] == ["0.png", "1.png", "3.png", "5.jpg", "broken.png", "sub/2.png", "sub/4.png"]
    assert [("error" in e) for e in listed] == [False] * 4 + [True] + [False] * 2
    vectors = np.load(tmp_path / "img.npy")
    assert vectors.shape == (7, 32) and vectors.dtype == np.float32 and np.isnan(vectors[4]).all()

    model, _, preprocess = open_clip.create_model_and_transforms(OC_TINY, pretrained=str(oc_file))
    tokenizer = open_clip.get_tokenizer(OC_TINY)
    readable = [e["path"] for e in listed if "error" not in e]
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(photos / p)) for p in readable])
        expected = F.normalize(model.encode_image(images), dim=-1).numpy()
    np.testing.assert_allclose(vectors[[0, 1, 2, 3, 5, 6]], expected, atol=1e-5, rtol=0)

    assert embed_main([str(_texts(tmp_path / "t.txt")), "--out", str(tmp_path / "t.npy"), *common[:4],
                       "--quiet"]) == 0
    texts = np.load(tmp_path / "t.npy")
    assert texts.shape == (4, 32) and np.isnan(texts[1]).all()
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tokenizer([t for t in TEXTS if t])), dim=-1).numpy()
    np.testing.assert_allclose(texts[[0, 2, 3]], expected, atol=1e-5, rtol=0)
    assert "mmkit embed: 3 text embeddings of dim 32 written to" in capsys.readouterr().err


def test_jsonl_outputs_of_an_export(tmp_path, export, capsys):
    photos = _photos(tmp_path / "photos")
    common = ["--model", str(export), "--num-workers", "0", "--quiet"]
    assert embed_main([str(photos), "--out", str(tmp_path / "img.npy"), *common]) == 0
    assert embed_main([str(photos), "--out", str(tmp_path / "img.jsonl"), *common]) == 0
    records = [json.loads(line) for line in (tmp_path / "img.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == ["0.png", "1.png", "3.png", "5.jpg", "sub/2.png", "sub/4.png"]
    vectors = np.load(tmp_path / "img.npy")
    np.testing.assert_allclose(np.array([r["embedding"] for r in records]), vectors[[0, 1, 2, 3, 5, 6]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors[[0, 1, 2, 3, 5, 6]], axis=1), 1, atol=1e-5)

    assert embed_main([str(_texts(tmp_path / "t.txt")), "--out", str(tmp_path / "t.jsonl"), *common[:2]]) == 0
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [(r["line"], r["text"]) for r in records] == [(1, TEXTS[0]), (3, TEXTS[2]), (4, TEXTS[3])]
    assert "line 2: empty text; skipped" in capsys.readouterr().err


def test_a_vit_exports_features_equal_timms_pre_logits_on_timms_inputs(tmp_path, capsys):
    import timm
    from timm.data import create_transform, resolve_data_config

    from mmkit.models.vit import ViT

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False, depth=1, embed_dim=48,
                                  num_heads=2, num_classes=5).eval()
    ViT.from_timm(reference).save_pretrained(tmp_path / "vit")
    photos = _photos(tmp_path / "photos")
    argv = [str(photos), "--model", str(tmp_path / "vit"), "--out", str(tmp_path / "f.npy"), "--num-workers", "0",
            "--batch-size", "4", "--quiet"]
    assert embed_main(argv) == 0
    assert capsys.readouterr().err.splitlines()[1].startswith("mmkit embed: 6 image embeddings of dim 48 written")
    listed = [json.loads(line)["path"] for line in (tmp_path / "f.paths.jsonl").read_text().splitlines()]
    features = np.load(tmp_path / "f.npy")
    transform = create_transform(**resolve_data_config(model=reference))  # timm's own eval transform
    with torch.no_grad():
        for path, row in zip(listed, features):
            if path == "broken.png":
                assert np.isnan(row).all()
                continue
            pixels = transform(Image.open(photos / path).convert("RGB"))[None]
            expected = reference.forward_head(reference.forward_features(pixels), pre_logits=True)[0]
            np.testing.assert_allclose(row, expected.numpy(), atol=1e-5, rtol=0)
    assert embed_main([*argv[:-1], "--quantize", "int8", "--out", str(tmp_path / "q.npy"), "--quiet"]) == 0
    int8 = np.load(tmp_path / "q.npy")
    good = ~np.isnan(features).any(axis=1)
    cosine = (int8[good] * features[good]).sum(1) / np.linalg.norm(int8[good], axis=1) / np.linalg.norm(
        features[good], axis=1)
    assert cosine.min() > 0.99
    for extra, message in ((["--pretrained", "x.pt"], "--pretrained is for an open_clip architecture"),
                           (["--out", str(tmp_path / "t.npy")], "a ViT embeds images: give a folder of images")):
        source = str(_texts(tmp_path / "t.txt")) if "t.npy" in extra[-1] else str(photos)
        assert embed_main([source, *argv[1:], *extra]) == 2
        assert message in capsys.readouterr().err


def test_int8_makes_the_tower_that_runs_int8_and_bf16_stays_close(tmp_path, export):
    from mmkit.inference.clip_loader import load_clip
    from mmkit.inference.zero_shot import ZeroShotClassifier

    for tower, other in (("visual", "text"), ("text", "visual")):
        model, tokenizer = load_clip(str(export))
        ZeroShotClassifier(model, tokenizer, quantize="int8", quantize_tower=tower)
        assert any(isinstance(m, Int8Linear) for m in getattr(model, tower).modules())
        assert not any(isinstance(m, Int8Linear) for m in getattr(model, other).modules())
    with pytest.raises(ValueError, match="quantize_tower must be 'visual' or 'text'"):
        ZeroShotClassifier(*load_clip(str(export)), quantize_tower="image")

    photos, texts = _photos(tmp_path / "photos", unreadable=False), _texts(tmp_path / "t.txt")
    for source, name in ((photos, "img"), (texts, "t")):
        runs = {}
        for path in ("fp32", "int8", "bf16"):
            flags = ["--quantize", "int8"] if path == "int8" else ["--precision", path]
            out = tmp_path / f"{name}-{path}.npy"
            assert embed_main([str(source), "--model", str(export), "--out", str(out), "--num-workers", "0",
                               "--quiet", *flags]) == 0
            runs[path] = np.load(out)
        good = ~np.isnan(runs["fp32"]).any(axis=1)
        for path in ("int8", "bf16"):
            cosine = (runs[path][good] * runs["fp32"][good]).sum(axis=1)
            assert cosine.min() > 0.98, (name, path, cosine)


def test_mistakes_are_one_line_and_write_nothing(tmp_path, export, capsys):
    from _bert import write_tiny_bert

    photos = _photos(tmp_path / "photos")
    bert = tmp_path / "bert"
    write_tiny_bert(bert, "mlm")
    texts = _texts(tmp_path / "t.txt")
    capsys.readouterr()  # transformers' saving bar
    cases = [
        ([str(texts), "--model", str(bert), "--pretrained", "x.pt", "--exact-decode"],
         f"mmkit embed: error: --pretrained, --exact-decode: for a CLIP or ViT --model; {bert} is neither an mmkit "
         "CLIP nor a ViT export"),
        ([str(photos), "--model", str(export), "--out", str(tmp_path / "v.csv")],
         f"mmkit embed: error: --out must end in .npy or .jsonl: {tmp_path / 'v.csv'}"),
        ([str(photos), "--model", str(export), "--device", "cuda:7"], "mmkit embed: error: "),
        ([str(photos), "--model", str(export), "--pretrained", "w.pt"],
         "mmkit embed: error: --pretrained is for an open_clip architecture as --model;"),
        ([str(tmp_path / "nowhere"), "--model", str(export)], "mmkit embed: error: "),
    ]
    for argv, line in cases:
        if "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "v.npy")]
        assert embed_main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(line), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "photos", "t.txt"]

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_bytes(b"nope")
    (only_bad / "line\nbreak.png").write_bytes(b"nope")
    assert embed_main([str(only_bad), "--model", str(export), "--out", str(tmp_path / "bad.npy"), "--quiet"]) == 1
    assert np.isnan(np.load(tmp_path / "bad.npy")).all()  # written, every row reported, a line each
    err = capsys.readouterr().err.splitlines()
    assert err[1].startswith("mmkit embed: 'line\\nbreak.png': not an image") and len(err) == 3
    assert json.loads((tmp_path / "bad.paths.jsonl").read_text().splitlines()[1])["path"] == "line\nbreak.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert embed_main([str(empty), "--model", str(export), "--out", str(tmp_path / "none.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "none.npy").shape == (0, 16) and (tmp_path / "none.paths.jsonl").read_text() == ""
    assert "mmkit embed: 0 image embeddings of dim 16" in capsys.readouterr().err


@pytest.mark.slow
def test_under_torchrun_the_outputs_are_one_process_outputs_byte_for_byte(tmp_path, export):
    photos = _photos(tmp_path / "photos")
    for i in range(6, 11):  # 12 files in batches of 2: 6 batches, 3 rounds of 2 ranks; and an odd count of texts
        Image.new("RGB", (20 + i, 30), (i * 20, 0, 0)).save(photos / f"{i}.png")
    texts = _texts(tmp_path / "t.txt")
    common = ["--model", str(export), "--batch-size", "2", "--num-workers", "0", "--quiet"]
    for source, out in ((photos, "img.npy"), (photos, "img.jsonl"), (texts, "t.npy")):
        one = alone("embed", str(source), *common, "--out", f"alone-{out}", cwd=tmp_path, program=HOOKED_CLI,
                    MMKIT_TEST_ROWS_PER_CHUNK="3")
        shared = torchrun("embed", str(source), *common, "--out", f"shared-{out}", cwd=tmp_path, program=HOOKED_CLI,
                          MMKIT_TEST_ROWS_PER_CHUNK="3")
        assert one.returncode == 0 and shared.returncode == 0, shared.stderr
        assert (tmp_path / f"alone-{out}").read_bytes() == (tmp_path / f"shared-{out}").read_bytes()
        said = [line.replace("alone-", "shared-") for line in one.stderr.splitlines() if line.startswith("mmkit")]
        assert [line for line in shared.stderr.splitlines() if line.startswith("mmkit")] == said
    assert (tmp_path / "alone-img.paths.jsonl").read_bytes() == (tmp_path / "shared-img.paths.jsonl").read_bytes()
    failed = torchrun("embed", str(photos), *common, "--out", "failed.npy", cwd=tmp_path, program=HOOKED_CLI,
                      MMKIT_TEST_FAIL_RANK="1")
    assert stopped_alike(failed, 1) and "RuntimeError: boom" in failed.stderr  # rank 1's traceback, on its stderr
    assert [line for line in failed.stderr.splitlines() if line.startswith("mmkit embed")][-1] == \
        "mmkit embed: error: rank 1: boom; nothing written"
    assert not [p for p in tmp_path.iterdir() if "failed" in p.name]  # no output, no list of files, no temp file

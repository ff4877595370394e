"""`mmkit generate` end to end on a tiny random-init export: files, manifest, seeding, and one clear
line (exit 2) for each bad input of issue 10 §7."""
from __future__ import annotations

import json
import logging
import os

import pytest
from PIL import Image

from mmkit.cli import main
from mmkit.models import VQGAN

from _clip import save_tiny_clip
from _dalle import write_tiny_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_tiny_export(tmp_path_factory.mktemp("t2i") / "export")


def test_writes_images_grid_and_manifest(export, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", "a red circle on the left", "a large blue star", "--model", str(export), "--num-images",
                 "3", "--seed", "1", "--top-k", "4", "--out", str(out), "--quiet"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["prompt"] for m in manifest] == ["a red circle on the left", "a large blue star"]
    assert manifest[0]["seed"] == 1 and manifest[0]["top_k"] == 4 and manifest[0]["clip_scores"] is None
    for m in manifest:
        assert len(m["images"]) == 3
        assert Image.open(out / m["images"][0]).size == (8, 8)
        assert Image.open(out / m["grid"]).size == (24, 8)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    again = tmp_path / "again"
    main(["generate", "a red circle on the left", "--model", str(export), "--num-images", "3", "--seed", "1",
          "--top-k", "4", "--out", str(again), "--quiet"])
    assert (again / "000-a-red-circle-on-the-left-0.png").read_bytes() == \
        (out / "000-a-red-circle-on-the-left-0.png").read_bytes()


def test_an_exports_own_sampling_settings_are_the_defaults(tmp_path, capsys):
    from _dalle import tiny_text_to_image

    t2i = tiny_text_to_image()
    t2i.defaults = {"guidance": 2.0, "top_k": 3}  # what DalleTask saves: its judged test settings
    export = t2i.save_pretrained(tmp_path / "export")
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--model", str(export), "--num-images", "1", "--out", str(out),
                 "--quiet"]) == 0
    (m,) = json.loads((out / "manifest.json").read_text())
    assert (m["guidance"], m["top_k"]) == (2.0, 3)
    doc = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**doc, "sampling": {"guidance": -1, "top_k": 3}}))
    _fails(["a red circle", "--model", str(export), "--out", str(tmp_path / "bad")], capsys, "sampling defaults")


def _fails(argv, capsys, match):
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("extra, match", [
    (["--num-images", "0"], "--num-images must be >= 1"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--temperature", "-0.5"], "--temperature must be > 0"),
    (["--top-k", "17"], "larger than the codebook (16 codes)"),
])
def test_bad_settings(export, tmp_path, capsys, extra, match):
    _fails(["a red circle", "--model", str(export), "--out", str(tmp_path / "o"), "--quiet", *extra], capsys, match)


def test_bad_prompts(export, tmp_path, capsys):
    _fails(["   ", "--model", str(export), "--out", str(tmp_path / "o")], capsys, "empty prompt")
    _fails(["zebra giraffe", "--model", str(export), "--out", str(tmp_path / "o")], capsys, "no word the model knows")


def test_unknown_words_and_long_prompts_warn(export, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["generate", "a red zebra circle on the left at the top in the centre", "--model", str(export),
                     "--num-images", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    text = caplog.text
    assert "zebra" in text and "truncated" in text


def test_bad_model_and_out(export, tmp_path, capsys):
    _fails(["a red circle", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys, "no such directory")
    other = tmp_path / "vq"
    VQGAN(ch=8, ch_mult=(1,), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=4, code_dim=4,
          norm_groups=4).save_pretrained(other)
    _fails(["a red circle", "--model", str(other), "--out", str(tmp_path / "o")], capsys,
           "holds a 'VQGAN' checkpoint, not a text-to-image export")
    (tmp_path / "wrong" / "dalle").mkdir(parents=True)
    VQGAN(ch=8, ch_mult=(1,), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=4, code_dim=4,
          norm_groups=4).save_pretrained(tmp_path / "wrong" / "dalle")
    (tmp_path / "wrong" / "tokenizer.json").write_text((export / "tokenizer.json").read_text())
    _fails(["a red circle", "--model", str(tmp_path / "wrong"), "--out", str(tmp_path / "o")], capsys,
           "holds a 'VQGAN' checkpoint, not DALLE")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _fails(["a red circle", "--model", str(export), "--out", str(locked / "x")], capsys, "cannot create")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _fails(["a red circle", "--model", str(export), "--out", str(blocker / "x")], capsys, "cannot create")


def test_clip_rerank_orders_images_by_score(export, tmp_path):
    from mmkit.inference.text_to_image import ClipReranker, TextToImage

    clip_dir = save_tiny_clip(tmp_path / "clip")
    reranker = ClipReranker.load(str(clip_dir))
    result = TextToImage.from_pretrained(export).generate(["a red circle"], 4, seed=0, top_k=8, reranker=reranker)[0]
    assert result.scores == sorted(result.scores, reverse=True) and len(set(result.scores)) > 1
    assert reranker.scores("a red circle", result.images) == pytest.approx(result.scores, abs=1e-5)
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--model", str(export), "--num-images", "2", "--rerank", str(clip_dir),
                 "--out", str(out), "--quiet"]) == 0
    scores = json.loads((out / "manifest.json").read_text())[0]["clip_scores"]
    assert len(scores) == 2 and scores[0] >= scores[1]

"""`mmkit generate --model ROOT` on a tiny random-init min-dalle download: PNGs, grid and manifest with
min-dalle's defaults (guidance 16, top-k 256) unless given; a half-present root is one line, exit 2."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from mmkit.cli import main

from _clip import save_tiny_clip
from _min_dalle import one_thread, write_min_dalle_root  # noqa: F401 - one_thread: autouse fixture


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_min_dalle_root(tmp_path_factory.mktemp("min_dalle") / "pretrained")[0]


def test_writes_pngs_and_manifest(root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "an avocado armchair", "--model", str(root), "--num-images", "2", "--seed", "5",
                 "--out", str(out), "--quiet"]) == 0
    (entry,) = json.loads((out / "manifest.json").read_text())
    assert entry["prompt"] == "an avocado armchair" and entry["guidance"] == 16.0 and entry["top_k"] == 256
    assert entry["seed"] == 5 and len(entry["images"]) == 2
    assert Image.open(out / entry["images"][1]).size == (32, 32) and Image.open(out / entry["grid"]).size == (64, 32)
    assert "wrote 2 images" in capsys.readouterr().out


def test_half_present_root_is_one_line(root, tmp_path, capsys):
    half = tmp_path / "half"
    shutil.copytree(root, half)
    (half / "dalle_bart_mini" / "vocab.json").unlink()
    assert main(["generate", "a red circle", "--model", str(half), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing dalle_bart_mini/vocab.json" in err and "Traceback" not in err


def test_clip_rerank_as_for_the_native_model(root, tmp_path):
    clip_dir = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "out"
    assert main(["generate", "a blue star", "--model", str(root), "--num-images", "3", "--top-k", "64", "--rerank",
                 str(clip_dir), "--out", str(out), "--quiet"]) == 0
    scores = json.loads((out / "manifest.json").read_text())[0]["clip_scores"]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and len(set(scores)) > 1


def test_non_finite_min_dalle_weights_are_one_line(root, tmp_path, capsys):
    import torch

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    detoker = bad / "vqgan" / "detoker.pt"
    state = torch.load(detoker, weights_only=True)
    torch.save({k: torch.full_like(v, float("inf")) if v.is_floating_point() else v for k, v in state.items()},
               detoker)
    assert main(["generate", "a red circle", "--model", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{detoker}: non-finite weights (NaN or infinity)" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("precision, quantize", [("bf16", "none"), ("fp32", "int8")])
def test_dalle_mini_samples_in_bf16_and_int8(root, tmp_path, precision, quantize):
    """DalleBart's untied 16,385-row head: an int8 copy is called (it used to be read as a weight: a TypeError),
    and under bf16 it projects in fp32 as the other decoders'; the greedy codes teacher-forced logits stay close."""
    import torch

    from mmkit.inference.quantize import Int8Linear
    from mmkit.inference.text_to_image import TextToImage

    exact, fast = TextToImage.from_pretrained(root), TextToImage.from_pretrained(root)
    fast.set_arithmetic(precision, quantize)
    assert isinstance(fast.model.head, Int8Linear) == (quantize == "int8")
    text = exact.tokenizer(["an avocado armchair"])
    codes = exact.generate("an avocado armchair", num_images=1, seed=0, top_k=1)[0].codes.flatten(1)
    tokens = torch.cat([torch.full((1, 1), exact.model.config["bos_id"]), codes[:, :-1]], 1)
    with torch.no_grad():
        memory = exact.model.encode(text)
        want = exact.model(tokens, memory, context_mask=text != 1)
        with fast._autocast():
            got = fast.model(tokens, fast.model.encode(text), context_mask=text != 1)
    finite = torch.isfinite(want)
    assert got.dtype == torch.float32 and torch.equal(finite, torch.isfinite(got))
    assert (got[finite] - want[finite]).abs().max() <= 0.05 * want[finite].abs().max()
    out = tmp_path / "out"
    assert main(["generate", "an avocado armchair", "--model", str(root), "--num-images", "2", "--out", str(out),
                 "--quiet", "--precision", precision, "--quantize", quantize]) == 0
    (entry,) = json.loads((out / "manifest.json").read_text())
    assert (entry["precision"], entry["quantize"]) == (precision, quantize) and len(entry["images"]) == 2


def test_int8_with_a_large_guidance_warns_once(root, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):  # min-dalle's guidance 16 by default
        assert main(["generate", "a red circle", "a blue star", "--model", str(root), "--num-images", "1", "--out",
                     str(tmp_path / "out"), "--quiet", "--quantize", "int8"]) == 0
    assert sum("int8 with guidance 16" in r.getMessage() for r in caplog.records) == 1


def test_a_huge_guidance_makes_an_image(root, tmp_path, capsys):
    """--guidance 3e38 passed the float32 check, then uncond + 3e38 · (cond − uncond) overflowed to ±inf and
    sampling failed with a traceback ("probability tensor contains either inf, nan or element < 0"); the guided
    logits now stay finite (`guided`)."""
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--model", str(root), "--num-images", "1", "--guidance", "3e38",
                 "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    assert Image.open(out / "000-a-red-circle-0.png").size == (32, 32)

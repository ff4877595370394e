"""The DALL·E text-to-image audit's findings (s19): a long prompt tokenized and logged once, short quotes in the
tokenizers' warnings, the stage-2 recipe's sampling settings refused before training, PNG levels truncated as
min-dalle's for a min-dalle VQGAN, and the pipeline moved to a device."""
from __future__ import annotations

import logging
import types

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.cli import main
from mmkit.cli.bench.generate import import_min_dalle
from mmkit.core import GenerationOptions
from mmkit.data.bart_tokenizer import BartTokenizer
from mmkit.data.dalle_text import WordTokenizer
from mmkit.inference.text_to_image import TextToImage, sample_bart_codes, sample_codes, to_pil
from mmkit.models import DALLE
from mmkit.tasks.dalle_task import DalleTask

from _dalle import tiny_text_to_image
from _min_dalle import bpe_files, one_thread, write_min_dalle_root  # noqa: F401 - one_thread: autouse fixture
from tests.test_cli import REPO

LONG = "a red circle on the left " * 2000  # 12,000 words, 50 KB: the model reads 8 words (64 BART tokens)
MAX_LINE = 300  # a warning quotes the prompt's start (80 characters) and counts


@pytest.fixture(scope="module")
def t2i():
    return tiny_text_to_image()


@pytest.fixture(scope="module")
def min_dalle(tmp_path_factory):
    root = write_min_dalle_root(tmp_path_factory.mktemp("min_dalle") / "pretrained")[0]
    return root, TextToImage.from_pretrained(root)


def _tokenized(monkeypatch, tokenizer) -> list[int]:
    """The length of every text `tokenizer` (an instance) is called with."""
    seen, call = [], type(tokenizer).__call__

    def counted(self, texts, *args, **kwargs):
        seen.extend(len(t) for t in texts)
        return call(self, texts, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counted)
    return seen


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_long_prompt_is_tokenized_and_logged_once_whatever_the_batches(t2i, monkeypatch, caplog):
    """A 100 KB prompt was tokenized whole, and logged whole by the tokenizer, for every batch: 3.2 MB of stderr
    for 32 images. Now its head is tokenized once and one short warning counts what the model does not read;
    the images are those of the old path, the whole prompt's ids."""
    seen = _tokenized(monkeypatch, t2i.tokenizer)
    with caplog.at_level(logging.WARNING):
        codes = torch.cat([c for c, _ in t2i.stream(LONG, 3, guidance=2.0, top_k=1, batch_size=1)])
    assert len(seen) == 1 and seen[0] < 100, seen
    (line,) = _warnings(caplog)
    assert len(line) < MAX_LINE and line.endswith("the prompt has 12,000 words; the model reads only the first 8")
    with torch.no_grad():
        old = sample_codes(t2i.model, WordTokenizer.__call__(t2i.tokenizer, [LONG]), GenerationOptions(top_k=1), 2.0)
    assert all(torch.equal(c, old[0]) for c in codes)


def test_a_long_prompt_is_logged_once_by_mmkit_generate(t2i, tmp_path, caplog):
    """The command line checks every prompt before sampling, then samples: each check and each batch logged."""
    export = t2i.save_pretrained(tmp_path / "export")
    with caplog.at_level(logging.WARNING):
        assert main(["generate", LONG, "--model", str(export), "--num-images", "3", "--batch-size", "1",
                     "--out", str(tmp_path / "long"), "--quiet"]) == 0
    lines = _warnings(caplog)
    assert len(lines) == 1 and len(lines[0]) < MAX_LINE, [line[:200] for line in lines]
    assert main(["generate", "a red circle on the left a red circle", "--model", str(export), "--num-images", "3",
                 "--out", str(tmp_path / "head"), "--quiet"]) == 0  # the 8 words the model reads
    for i in range(3):
        name = f"-{i}.png"
        (long_png,), (head_png,) = (tmp_path / "long").glob(f"*{name}"), (tmp_path / "head").glob(f"*{name}")
        assert long_png.read_bytes() == head_png.read_bytes()


def test_a_long_prompt_is_tokenized_once_for_dalle_mini(min_dalle, monkeypatch, caplog):
    """The BART path encoded the whole prompt twice per batch (the ids and the null text)."""
    _, t2i = min_dalle
    seen = _tokenized(monkeypatch, t2i.tokenizer)
    with caplog.at_level(logging.WARNING):
        codes = torch.cat([c for c, _ in t2i.stream(LONG, 2, guidance=4.0, top_k=1, batch_size=1)])
    assert len(seen) == 1 and seen[0] < 400, seen
    (line,) = _warnings(caplog)
    assert len(line) < MAX_LINE and line.endswith("the prompt has 12,002 tokens; the model reads only the first 64")
    tok = t2i.tokenizer
    old = sample_bart_codes(t2i.model, BartTokenizer.__call__(tok, [LONG]), tok.null_text([LONG]),
                            GenerationOptions(top_k=1), 4.0)
    assert torch.equal(codes[0], old[0]) and torch.equal(codes[1], old[0])


def test_the_tokenizers_quote_a_long_text_short(caplog):
    vocab, merges = bpe_files()
    bart = BartTokenizer(vocab, [tuple(m.split()) for m in merges[1:]], 64)
    with caplog.at_level(logging.WARNING):
        WordTokenizer(["red", "circle"], 8)([LONG])
        bart([LONG])
    lines = _warnings(caplog)
    assert len(lines) == 2 and all(len(line) < 200 for line in lines), [line[:200] for line in lines]
    assert lines[0].startswith("caption 'a red circle on the left") and "(50,000 characters)" in lines[0]
    assert lines[1].endswith("(50,000 characters) has 12,002 tokens; truncated to 64")


def _dalle(codebook_size: int = 32) -> DALLE:
    return DALLE(text_vocab_size=32, text_len=8, codebook_size=codebook_size, image_grid=4, dim=16, depth=1,
                 num_heads=2)


@pytest.mark.parametrize("given, refusal", [
    ({"test_top_k": 1000}, "test_top_k must be in [0, 32] (the codebook's size; 0 or none: no top-k), got 1000"),
    ({"test_top_k": -1}, "test_top_k must be in [0, 32] (the codebook's size; 0 or none: no top-k), got -1"),
    ({"test_guidance": -1.0}, "test_guidance must be finite and >= 0, got -1.0"),
    ({"test_guidance": float("nan")}, "test_guidance must be finite and >= 0, got nan"),
    ({"test_guidance": 1e39}, "test_guidance must be finite and >= 0, got 1e+39 (above float32's largest, 3.4e38)"),
    ({"test_temperature": 0.0}, "test_temperature must be finite and > 0, got 0.0"),
])
def test_the_recipes_sampling_settings_are_refused_before_training(given, refusal):
    """They were checked only by the export in on_fit_end: 13:52 of training, then an error and no export."""
    with pytest.raises(ValueError) as refused:
        DalleTask(_dalle(), **given)
    assert str(refused.value) == refusal


def test_top_k_0_is_off_in_the_recipe_as_in_mmkit_generate():
    task = DalleTask(_dalle(), test_top_k=0)
    assert task.hparams.test_top_k == 0
    assert DalleTask(_dalle(), test_top_k=None).hparams.test_top_k is None


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_mmkit_fit_refuses_them_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", str(REPO / "configs" / "dalle_shapes.yaml"), "--model.init_args.test_top_k",
                 "1000"])
    err = capsys.readouterr().err
    assert code == 2 and err == "mmkit fit: error: test_top_k must be in [0, 512] (the codebook's size; 0 or " \
                                "none: no top-k), got 1000\n", err
    assert not (tmp_path / "runs").exists()


def test_a_min_dalle_vqgans_pngs_are_min_dalles_bytes(min_dalle):
    """min-dalle truncates its levels (`(z.clip(0, 1) * 255)` in VQGanDetokenizer.forward, `.to(torch.uint8)` in
    MinDalle.generate_image_stream); rounding them made a quarter to a half of the pixels one level brighter."""
    _, t2i = min_dalle
    generate_image_stream = import_min_dalle("min_dalle.min_dalle").MinDalle.generate_image_stream
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1  # some clipped
    for image, ours in zip(images, to_pil(images, "unit")):
        raw = image.permute(1, 2, 0).clip(0.0, 1.0) * 255  # the detokenizer's last step, on (H, W, 3)
        fake = types.SimpleNamespace(generate_raw_image_stream=lambda: iter([raw]))
        (theirs,) = generate_image_stream(fake)
        assert ours.tobytes() == theirs.tobytes() and ours.mode == theirs.mode
    rounded = np.asarray(to_pil(images)[0], dtype=int) - np.asarray(to_pil(images, "unit")[0], dtype=int)
    assert set(np.unique(rounded)) == {0, 1}  # the recipe's ("signed") VQGANs keep rounding
    result = t2i.generate("a red circle", 1, seed=0, guidance=1.0, top_k=1)[0]
    with torch.no_grad():
        pixels = t2i.vqgan.decode(result.codes[:1])
    (want,) = to_pil(pixels, "unit")
    assert result.images[0].tobytes() == want.tobytes() and isinstance(result.images[0], Image.Image)


def test_the_pipeline_moves_before_its_arithmetic_is_set(t2i):
    moved = tiny_text_to_image().to("cpu")
    assert torch.equal(moved.generate("a red circle", 2, seed=1)[0].codes,
                       t2i.generate("a red circle", 2, seed=1)[0].codes)
    moved.set_arithmetic("bf16")
    with pytest.raises(ValueError, match=r"move the text-to-image pipeline \(.to\) before set_arithmetic"):
        moved.to("cpu")

"""`TextToImage` on a min-dalle download (tiny random init, min-dalle's layout): the tokens mmkit
samples equal those of min-dalle's own sampler (its modules, its tokenizer, its loop) at top-k 1,
with super-conditioning; seeded sampling, previews, several images per prompt; one clear error for
a half-present root, another family's checkpoint and prompts dalle-mini cannot read."""
from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from mmkit.cli.bench.generate import import_min_dalle, min_dalle_codes
from mmkit.inference.text_to_image import TextToImage
from mmkit.models.dalle_bart import DalleBart
from mmkit.weights import WeightsError

from _min_dalle import one_thread, write_min_dalle_root  # noqa: F401 - one_thread: autouse fixture

PROMPT = "A red circle on the left"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_min_dalle_root(tmp_path_factory.mktemp("min_dalle") / "pretrained")


@pytest.fixture(scope="module")
def t2i(root):
    return TextToImage.from_pretrained(root[0])


def test_reads_the_download_layout(root, t2i):
    assert isinstance(t2i.model, DalleBart) and t2i.model.config["dim"] == 64 and t2i.vqgan.codebook_size == 2**14
    assert t2i.defaults == {"guidance": 16.0, "top_k": 256}
    assert TextToImage.from_pretrained(root[0] / "dalle_bart_mini").model.config == t2i.model.config
    assert torch.is_grad_enabled() and torch.get_num_threads() == 1  # min_dalle's import undone


def test_greedy_tokens_equal_min_dalles_sampler(root, t2i):
    TextTokenizer = import_min_dalle("min_dalle.text_tokenizer").TextTokenizer
    folder = root[0] / "dalle_bart_mini"
    tokens = TextTokenizer(json.loads((folder / "vocab.json").read_text(encoding="utf8")),
                           (folder / "merges.txt").read_text(encoding="utf8").split("\n")[1:-1]).tokenize(PROMPT)
    text, null = torch.ones(1, 64, dtype=torch.long), torch.ones(1, 64, dtype=torch.long)
    text[0, : len(tokens)], null[0, :2] = torch.tensor(tokens), torch.tensor([tokens[0], tokens[-1]])
    expected = min_dalle_codes(root[1], root[2], text, null, num_images=1, guidance=16.0, top_k=1)
    result = t2i.generate([PROMPT], num_images=2, guidance=16.0, top_k=1)[0]
    assert result.codes.shape == (2, 16, 16) and len(result.images) == 2 and result.images[0].size == (32, 32)
    assert torch.equal(result.codes[0].flatten(), expected[0]) and torch.equal(result.codes[1], result.codes[0])
    assert len(expected.unique()) > 3


def test_seeded_sampling_and_previews(t2i):
    previews = []
    first = t2i.generate([PROMPT], num_images=2, seed=3, guidance=4.0, top_k=64, on_preview=previews.append,
                         preview_rows=4)[0]
    again = t2i.generate([PROMPT], num_images=2, seed=3, guidance=4.0, top_k=64)[0]
    assert torch.equal(first.codes, again.codes) and not torch.equal(first.codes[0], first.codes[1])
    assert [p.shape for p in previews] == [(2, 3, 32, 32)] * 3  # after rows 4, 8 and 12 of 16
    assert (previews[0][:, :, 8:] == 0.5).all()


def test_prompts_dalle_mini_cannot_read(t2i, caplog):
    with pytest.raises(ValueError, match="empty prompt"):
        t2i.check_prompt("  ")
    with pytest.raises(ValueError, match="no word the model knows .*ASCII"):
        t2i.check_prompt("\u65e5\u672c\u8a9e")
    (note,) = t2i.check_prompt("a red \u65e5\u672c circle")
    assert note == "words outside the vocabulary ignored: \u65e5\u672c"
    with caplog.at_level(logging.WARNING):  # the sampler logs the notes (check_prompt only returns them)
        list(t2i.stream("a red \u65e5\u672c circle", 1, guidance=1.0, top_k=1))
    assert "\u65e5\u672c" in caplog.text


def test_half_present_root_and_other_family(root, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(root[0], half)
    (half / "dalle_bart_mini" / "merges.txt").unlink()
    (half / "vqgan" / "detoker.pt").unlink()
    with pytest.raises(WeightsError, match=r"incomplete min-dalle download, missing dalle_bart_mini/merges.txt, "
                                           r"vqgan/detoker.pt$"):
        TextToImage.from_pretrained(half)
    (tmp_path / "only_vqgan" / "vqgan").mkdir(parents=True)
    shutil.copy(root[0] / "vqgan" / "detoker.pt", tmp_path / "only_vqgan" / "vqgan")
    with pytest.raises(WeightsError, match="missing dalle_bart_mini/encoder.pt"):
        TextToImage.from_pretrained(tmp_path / "only_vqgan")
    other = tmp_path / "other"
    shutil.copytree(root[0], other)
    torch.save({"wte.weight": torch.zeros(4, 4)}, other / "dalle_bart_mini" / "encoder.pt")
    with pytest.raises(WeightsError, match="not min-dalle DalleBart encoder/decoder state dicts"):
        TextToImage.from_pretrained(other)
    with pytest.raises(ValueError, match="read from its download folder"):
        TextToImage.from_pretrained(root[0]).save_pretrained(tmp_path / "export")


def test_token_ids_past_the_embedding(t2i):
    small = TextToImage(t2i.model, t2i.vqgan, t2i.tokenizer)
    small.text_vocab_size = 200  # as if vocab.json belonged to a model with fewer text embeddings
    small.check_prompt("a")  # id 133: fits
    with pytest.raises(ValueError, match="past the model's 200 text embeddings"):
        small.check_prompt("avocado")  # id 216

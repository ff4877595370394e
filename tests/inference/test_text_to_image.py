"""`TextToImage` on a tiny random-init export: images sampled in batches are the same whatever the batch
size (each image seeded from the user's seed and its index), settings a sampler cannot honour are refused
before any work, and a broken word tokenizer names its file."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mmkit.data.dalle_text import WordTokenizer
from mmkit.inference.seeds import indexed_seed
from mmkit.limits import MAX_SEED

from _dalle import tiny_text_to_image


@pytest.fixture(scope="module")
def t2i():
    return tiny_text_to_image()


def test_batch_size_does_not_change_the_images(t2i):
    kwargs = dict(seed=3, guidance=2.0, top_k=8)
    whole = t2i.generate(["a red circle"], 5, **kwargs)[0]
    for batch_size, sizes in ((1, [1] * 5), (2, [2, 2, 1])):
        parts = list(t2i.stream("a red circle", 5, batch_size=batch_size, **kwargs))
        assert [len(c) for c, _ in parts] == sizes
        assert torch.equal(torch.cat([c for c, _ in parts]), whole.codes)
        assert [im.tobytes() for _, ims in parts for im in ims] == [im.tobytes() for im in whole.images]
    assert len({tuple(c.flatten().tolist()) for c in whole.codes}) > 1  # each image its own draws
    assert torch.equal(t2i.generate(["a red circle"], 2, batch_size=1, **kwargs)[0].codes, whole.codes[:2])


def test_image_seeds_stay_in_torchs_range_and_differ():
    seeds = [indexed_seed(s, i) for s in (0, 1, MAX_SEED) for i in range(4)]
    assert len(set(seeds)) == 12 and all(0 <= s < 2**63 for s in seeds)
    torch.Generator().manual_seed(indexed_seed(MAX_SEED, 0))


@pytest.mark.parametrize("change, match", [
    ({"temperature": math.inf}, "temperature must be finite and > 0, got inf"),
    ({"temperature": math.nan}, "temperature must be finite and > 0"),
    ({"guidance": math.inf}, "guidance must be finite and >= 0, got inf"),
    ({"guidance": 1e39}, r"guidance must be finite and >= 0, got 1e\+39 \(above float32's largest, 3.4e38\)"),
    ({"temperature": 1e39}, r"temperature must be finite and > 0, got 1e\+39 \(above float32's largest"),
    ({"seed": MAX_SEED + 1}, r"seed must be in \[0, 2\*\*64 - 1\]"),
    ({"seed": -1}, r"seed must be in \[0, 2\*\*64 - 1\]"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"num_images": 0}, "num_images must be an integer >= 1, got 0"),
    ({"num_images": 2.5}, "num_images must be an integer >= 1, got 2.5"),  # a bare TypeError from range()
    ({"temperature": -1}, r"temperature must be finite and > 0, got -1$"),  # said "above float32's largest"
    ({"guidance": -1}, r"guidance must be finite and >= 0, got -1$"),
])
def test_settings_refused_before_any_work(t2i, change, match):
    kwargs = {"num_images": 2, "seed": 0, "guidance": 1.0, "temperature": 1.0, "batch_size": 2, **change}
    with pytest.raises(ValueError, match=match):
        t2i.stream("a red circle", **kwargs)  # not a generator yet: refused on the call
    if "batch_size" not in change:
        with pytest.raises(ValueError, match=match):
            t2i.generate(["a red circle"], **{k: v for k, v in kwargs.items() if k != "batch_size"})


def test_word_tokenizer_round_trip(tmp_path):
    tokenizer = WordTokenizer(["red", "circle"], 4)
    tokenizer.save(tmp_path / "tokenizer.json")
    again = WordTokenizer.load(tmp_path / "tokenizer.json")
    assert again.vocab == tokenizer.vocab and again.text_len == 4
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"vocab": ["red", "circle"], "text_len": 4}

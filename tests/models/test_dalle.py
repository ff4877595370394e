"""DALL·E-style generator: token-kind restriction, cached == uncached and batched == one-at-a-time
sampling through the shared loop, classifier-free guidance, native round trip."""
from __future__ import annotations

import pytest
import torch

from mmkit.core import GenerationOptions, KVCache
from mmkit.inference.text_to_image import sample_codes
from mmkit.models.dalle import DALLE, ClassifierFreeGuidance

TINY = dict(text_vocab_size=11, text_len=5, codebook_size=13, image_grid=3, dim=32, depth=2, num_heads=4)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = DALLE(**TINY).eval()
    for p in m.parameters():  # larger weights than the init, so that outputs depend on every input
        p.data.normal_(std=0.3)
    return m


def _text(b=2):
    return torch.randint(1, 11, (b, 5), generator=torch.Generator().manual_seed(3))


def test_logits_restricted_to_the_next_token_kind(model):
    codes = torch.randint(0, 13, (2, 9))
    tokens = torch.cat([_text(), codes + 11], 1)[:, :-1]  # (2, 13): the last code is only predicted
    logits = model(tokens)
    assert logits.shape == (2, 13, 24)
    assert torch.isinf(logits[:, :4, 11:]).all() and torch.isfinite(logits[:, :4, :11]).all()
    assert torch.isinf(logits[:, 4:, :11]).all() and torch.isfinite(logits[:, 4:, 11:]).all()
    with pytest.raises(ValueError, match="image ids"):
        model(torch.cat([_text(), torch.full((2, 1), 3)], 1))


def test_incremental_forward_equals_full(model):
    tokens = torch.cat([_text(), torch.randint(0, 13, (2, 8)) + 11], 1)
    full = model(tokens)
    cache = KVCache()
    parts = [model(tokens[:, :3], cache=cache)] + [model(tokens[:, i:i + 1], cache=cache) for i in range(3, 13)]
    inc = torch.cat(parts, 1)
    finite = torch.isfinite(full)
    assert torch.equal(finite, torch.isfinite(inc))
    assert torch.allclose(full[finite], inc[finite], atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_sampling_cached_equals_uncached_and_batched_equals_single(model, guidance):
    text = _text(3)
    opts = GenerationOptions(temperature=1.0, top_k=5)
    cached = sample_codes(model, text, GenerationOptions(**{**vars(opts), "seed": 0}), guidance)
    uncached = sample_codes(model, text, GenerationOptions(**{**vars(opts), "seed": 0}), guidance, use_cache=False)
    assert cached.shape == (3, 3, 3) and cached.min() >= 0 and cached.max() < 13
    assert torch.equal(cached, uncached)
    greedy = sample_codes(model, text, GenerationOptions(), guidance)
    singles = torch.cat([sample_codes(model, text[i:i + 1], GenerationOptions(), guidance) for i in range(3)])
    assert torch.equal(greedy, singles)
    assert len({tuple(c.flatten().tolist()) for c in cached}) > 1  # captions change the image


def test_guidance_combines_conditional_and_null_caption_rows(model):
    text = _text()
    tokens = torch.cat([text, torch.randint(0, 13, (2, 4)) + 11], 1)
    null = tokens.clone()
    null[:, :5] = 0
    cond, uncond = model(tokens), model(null)
    guided = ClassifierFreeGuidance(model, 2.5)(tokens)
    img = slice(4, None), slice(11, None)
    expected = uncond[:, img[0], img[1]] + 2.5 * (cond[:, img[0], img[1]] - uncond[:, img[0], img[1]])
    assert torch.allclose(guided[:, img[0], img[1]], expected, atol=1e-5)
    assert torch.isinf(guided[:, 4:, :11]).all()
    assert torch.allclose(ClassifierFreeGuidance(model, 1.0)(tokens)[:, 4:, 11:], cond[:, 4:, 11:], atol=1e-5)


def test_sampling_refusals(model):
    with pytest.raises(ValueError, match="codebook"):
        sample_codes(model, _text(), GenerationOptions(top_k=14))
    with pytest.raises(ValueError, match="guidance"):
        sample_codes(model, _text(), GenerationOptions(), guidance=-1.0)
    with pytest.raises(ValueError, match="beam"):
        sample_codes(model, _text(), GenerationOptions(beam_size=2))


def test_round_trip_and_backward(model, tmp_path):
    model.save_pretrained(tmp_path)
    again = DALLE.from_pretrained(tmp_path).eval()
    tokens = torch.cat([_text(), torch.randint(0, 13, (2, 8)) + 11], 1)
    assert torch.equal(model(tokens), again(tokens))
    again.train()
    logits = again(tokens)
    loss = torch.nn.functional.cross_entropy(logits[:, 4:-1, 11:].reshape(-1, 13), (tokens[:, 5:] - 11).flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in again.parameters())


def test_named_sizes_from_yaml():
    from jsonargparse import ArgumentParser

    from mmkit.models.sizes import DALLE_SIZES

    parser = ArgumentParser()
    parser.add_argument("--model", type=DALLE)
    config = parser.parse_args(['--model={"class_path": "mmkit.models.DALLE", "init_args": {"size": "dalle_nano", '
                                '"text_vocab_size": 32, "text_len": 8, "codebook_size": 64, "image_grid": 4}}'])
    model = parser.instantiate(config).model
    assert isinstance(model, DALLE)
    assert {k: model.config[k] for k in DALLE_SIZES["dalle_nano"]} == DALLE_SIZES["dalle_nano"]
    assert (model.config["codebook_size"], model.config["image_grid"]) == (64, 4)
    assert DALLE.from_name("dalle_nano", depth=1).config["depth"] == 1  # explicit sizes win
    with pytest.raises(ValueError, match="known sizes: dalle_nano"):
        DALLE.from_name("dalle_huge")

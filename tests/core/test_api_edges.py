"""Edges of the core API (the s13 API audit, findings 7, 8, 10 and 11): zero or negative new tokens,
per-row limits of zero, empty batches and empty sequences, and argument checks of the strategies,
the logit filters and `GenerationOptions`, each refused in one line that names the argument."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmkit.core import Attention, BeamSearch, GenerationOptions, Greedy, Sampling, TopK, TopP, generate
from mmkit.models import BERT, DALLE, GPT, ViT, Whisper

PROMPT = torch.tensor([[3, 14, 15], [9, 2, 6]])
RANKED = ["ranked-true", "ranked-false", "ranked-never"]


def _strategy(name: str) -> Greedy | Sampling | BeamSearch:
    """A fresh strategy per call: a seeded sampler's generator advances as it draws."""
    return {
        "greedy": lambda: Greedy(),
        "sampling": lambda: Sampling(0.8, top_k=10, generator=torch.Generator().manual_seed(1)),
        "beam": lambda: BeamSearch(2),
        "ranked-true": lambda: BeamSearch(2, early_stopping=True),
        "ranked-false": lambda: BeamSearch(2, early_stopping=False),
        "ranked-never": lambda: BeamSearch(2, early_stopping="never"),
    }[name]()


# finding 7: no new tokens -----------------------------------------------------------------------

@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("name", ["greedy", "sampling", "beam", *RANKED])
def test_zero_new_tokens_return_the_prompt_with_score_zero(tiny_lm, name, use_cache):
    out = generate(tiny_lm, PROMPT, 0, _strategy(name), pad_id=0, use_cache=use_cache)
    assert torch.equal(out.tokens, PROMPT)  # ranked beam search returned padding, [[0, 0, 0], ...]
    assert out.lengths.tolist() == [3, 3]
    assert out.scores.tolist() == [0.0, 0.0]  # was -1e9, the "impossible" score
    assert [s.tolist() for s in out.sequences] == PROMPT.tolist()


@pytest.mark.parametrize("name", ["greedy", "sampling", "beam", *RANKED])
@pytest.mark.parametrize("limit", [-1, torch.tensor([1, -1])], ids=["int", "rows"])
def test_a_negative_max_new_tokens_is_refused(tiny_lm, name, limit):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):  # ranked beam: width T - 1
        generate(tiny_lm, PROMPT, limit, _strategy(name))


@pytest.mark.parametrize("bad", [2.5, True, "3"])
def test_max_new_tokens_must_be_an_integer(tiny_lm, bad):
    with pytest.raises(TypeError, match="max_new_tokens must be an integer"):
        generate(tiny_lm, PROMPT, bad)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cached", "uncached"])
@pytest.mark.parametrize("name", ["greedy", "sampling", *RANKED])
def test_a_row_limit_of_zero_generates_nothing_and_the_others_run_as_alone(tiny_lm, name, use_cache):
    out = generate(tiny_lm, PROMPT, torch.tensor([0, 2]), _strategy(name), pad_id=0, use_cache=use_cache)
    assert out.sequences[0].tolist() == PROMPT[0].tolist()  # was the prompt plus one token
    assert out.lengths.tolist() == [3, 5] and float(out.scores[0]) == 0.0
    alone = generate(tiny_lm, PROMPT[1:], 2, _strategy(name), pad_id=0, use_cache=use_cache)
    if name != "sampling":  # a sampler's draws depend on the batch it shares a generator with
        assert torch.equal(out.sequences[1], alone.sequences[0])


# finding 8: empty batches and empty sequences ---------------------------------------------------

_TINY_WHISPER = dict(n_mels=8, n_audio_ctx=10, n_text_ctx=16, vocab_size=50, dim=32, encoder_depth=2,
                     decoder_depth=2, num_heads=4)


@pytest.mark.parametrize("family", ["vit", "gpt", "bert", "whisper-encode", "attention"])
def test_an_empty_batch_gives_an_empty_result(family):
    torch.manual_seed(0)
    run, shape = {  # (model call, the shape of its output for B = 0)
        "vit": (lambda: ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, num_heads=4).eval()(
            torch.zeros(0, 3, 32, 32)), (0, 5)),
        "gpt": (lambda: GPT(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4).eval()(
            torch.zeros(0, 4, dtype=torch.long)), (0, 4, 50)),
        "bert": (lambda: BERT(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4).eval()(
            torch.zeros(0, 4, dtype=torch.long)), (0, 4, 32)),
        "whisper-encode": (lambda: Whisper(**_TINY_WHISPER).eval().encode(torch.zeros(0, 8, 20)), (0, 10, 32)),
        "attention": (lambda: Attention(32, 4, head_dim=16)(torch.zeros(0, 5, 32)), (0, 5, 32)),  # inner 64
    }[family]
    with torch.no_grad():
        out = run()  # was "cannot reshape tensor of 0 elements into shape [0, T, -1]"
    assert out.shape == shape


@pytest.mark.parametrize("name", ["greedy", "sampling", "beam", "ranked-true"])
def test_generate_on_an_empty_batch_returns_it(tiny_lm, name):
    out = generate(tiny_lm, PROMPT[:0], 4, _strategy(name))
    assert out.tokens.shape == (0, 3) and out.lengths.shape == (0,) and out.scores.shape == (0,)
    assert out.sequences == []


def test_an_empty_sequence_is_refused_in_one_line():
    torch.manual_seed(0)
    gpt = GPT(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4).eval()
    bert = BERT(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4).eval()
    dalle = DALLE(text_vocab_size=20, text_len=4, codebook_size=30, image_grid=2, dim=32, depth=2, num_heads=4)
    for run in (lambda: gpt(torch.zeros(2, 0, dtype=torch.long)), lambda: bert(torch.zeros(2, 0, dtype=torch.long)),
                lambda: Attention(32, 4)(torch.zeros(2, 0, 32)),
                lambda: dalle.eval()(torch.zeros(2, 0, dtype=torch.long))):  # its own embeddings say it first
        with pytest.raises(ValueError, match="empty sequence"):  # was the reshape error
            run()
    with pytest.raises(ValueError, match="at least one token"):
        generate(gpt, torch.zeros(2, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"prompt must be \(B, T\)"):
        generate(gpt, torch.tensor([1, 2, 3]), 3)


# finding 10: the strategies and filters check their arguments ------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: BeamSearch(0), ValueError, "beam_size must be >= 1"),
    (lambda: BeamSearch(-1), ValueError, "beam_size must be >= 1"),
    (lambda: BeamSearch(2.0), TypeError, "beam_size must be an integer"),
    (lambda: BeamSearch(2, length_penalty="1"), TypeError, "length_penalty must be a number"),
    (lambda: Sampling(top_p=0.0), ValueError, r"top_p must be in \(0, 1\]"),
    (lambda: Sampling(top_p=1.5), ValueError, r"top_p must be in \(0, 1\]"),
    (lambda: Sampling(top_k=0), ValueError, "top_k must be >= 1"),  # was: top-k silently off
    (lambda: Sampling(top_k=2.5), TypeError, "top_k must be an integer"),
    (lambda: Sampling(temperature=0.0), ValueError, "temperature must be > 0"),
    (lambda: Sampling(temperature=float("nan")), ValueError, "temperature must be > 0"),
    (lambda: Sampling(temperature=1e39), ValueError, r"temperature must be > 0 and finite in float32"),  # NaN probs
    (lambda: GenerationOptions(temperature=1e39), ValueError, r"temperature must be >= 0 and finite in float32"),
    (lambda: TopK(0), ValueError, "top_k must be >= 1"),
], ids=["beam0", "beam-1", "beam-float", "penalty-str", "top_p0", "top_p>1", "top_k0", "top_k-float", "temp0",
        "temp-nan", "temp-over-float32", "options-temp-over-float32", "TopK0"])
def test_strategies_refuse_bad_arguments_when_built(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_top_p_keeps_the_likeliest_token_so_a_tiny_p_is_greedy(tiny_lm):
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, -1.0, 5.0 - 1e-3]])
    kept = TopP(0.0)(torch.zeros(2, 1, dtype=torch.long), logits).isfinite()
    assert kept.tolist() == [[False, True, False], [True, False, False]]  # was all -inf: NaN probabilities
    tiny = generate(tiny_lm, PROMPT, 5, Sampling(top_p=1e-9, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(tiny.tokens, generate(tiny_lm, PROMPT, 5, Greedy()).tokens)


# finding 11: GenerationOptions types ------------------------------------------------------------

@pytest.mark.parametrize("field, value, error, match", [
    ("max_new_tokens", 2.5, TypeError, "max_new_tokens must be an integer"),
    ("max_new_tokens", "5", TypeError, "max_new_tokens must be an integer"),
    ("max_new_tokens", True, TypeError, "max_new_tokens must be an integer"),
    ("beam_size", 2.0, TypeError, "beam_size must be an integer"),
    ("top_k", 2.5, TypeError, "top_k must be an integer"),
    ("temperature", "1", TypeError, "temperature must be a number"),
    ("top_p", "0.5", TypeError, "top_p must be a number"),
    ("repetition_penalty", None, TypeError, "repetition_penalty must be a number"),
    ("seed", "x", TypeError, "seed must be an integer"),
    ("seed", 1.0, TypeError, "seed must be an integer"),
    ("seed", -1, ValueError, r"seed must be in \[0, 2\*\*64 - 1\]"),
    ("seed", 2**64, ValueError, r"seed must be in \[0, 2\*\*64 - 1\]"),
])
def test_generation_options_check_types_naming_the_field(field, value, error, match):
    with pytest.raises(error, match=match) as caught:
        GenerationOptions(**{field: value})
    assert "\n" not in str(caught.value)


def test_generation_options_take_numpy_integers_and_the_largest_seed(tiny_lm):
    options = GenerationOptions(max_new_tokens=np.int64(3), top_k=np.int32(5), seed=2**64 - 1)
    out = generate(tiny_lm, PROMPT, options.max_new_tokens, options.strategy())
    assert out.tokens.shape == (2, 6)

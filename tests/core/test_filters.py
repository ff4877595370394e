"""Generic decoding options and filters: repetition penalty and logit normalisation equal transformers' processors;
the repetition rules read a left-padded row as the row alone;
`stop` and `on_step` hooks of the shared loop; options validate their ranges."""
import math

import pytest
import torch

from mmkit.core import (
    GenerationOptions, Greedy, LogitNormalization, NoRepeatNGram, RepetitionPenalty, Sampling, generate,
)
from mmkit.core.decoding import BeamSearch


def test_repetition_penalty_equals_transformers():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (3, 7), generator=g)
    logits = torch.randn(3, 50, generator=g)
    want = RepetitionPenaltyLogitsProcessor(1.3)(tokens, logits.clone())
    assert torch.equal(RepetitionPenalty(1.3)(tokens, logits.clone()), want)


def test_logit_normalization_equals_transformers():
    """transformers' `renormalize_logits` processor: rows log-softmaxed, banned (-inf) tokens staying -inf; logits of
    a lower precision come back float32, as transformers' `generate` hands its processors float32 logits."""
    from transformers.generation.logits_process import LogitNormalization as HFLogitNormalization

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (3, 7), generator=g)
    logits = torch.randn(3, 50, generator=g) * 4
    logits[:, [2, 7]] = float("-inf")  # banned before it, as bad_words_ids bans <pad>
    out = LogitNormalization()(tokens, logits.clone())
    assert torch.equal(out, HFLogitNormalization()(tokens, logits.clone()))
    assert torch.allclose(out.exp().sum(dim=-1), torch.ones(3)) and bool(out[:, [2, 7]].isneginf().all())
    half = LogitNormalization()(tokens, logits.bfloat16())
    assert half.dtype == torch.float32
    assert torch.equal(half, HFLogitNormalization()(tokens, logits.bfloat16().float()))


@pytest.mark.parametrize("make", [lambda p: RepetitionPenalty(1.7, p), lambda p: NoRepeatNGram(1, p),
                                  lambda p: NoRepeatNGram(2, p), lambda p: NoRepeatNGram(3, p)])
@pytest.mark.parametrize("beams", [1, 3])
def test_repetition_rules_skip_left_padding(make, beams):
    """Rows of different lengths left-padded with a token some rows hold elsewhere (0) and others never: each
    row's filtered logits equal the row's alone, beam rows (B·K) sharing their row's padding."""
    rows = [[5, 0, 3, 5, 0], [7, 0], [3, 7, 1, 3], [0]]
    width = max(map(len, rows))
    padding = torch.tensor([width - len(r) for r in rows])
    tokens = torch.tensor([[0] * (width - len(r)) + r for r in rows]).repeat_interleave(beams, 0)
    logits = torch.randn(len(rows) * beams, 9, generator=torch.Generator().manual_seed(1))
    out = make(padding)(tokens, logits.clone())
    for b, row in enumerate(rows):
        for k in range(beams):
            i = b * beams + k
            assert torch.equal(out[i], make(None)(torch.tensor([row]), logits[i:i + 1].clone())[0]), (b, k)
    assert not torch.equal(make(None)(tokens, logits.clone()), out)  # the padding would have counted


def _counting_model(vocab: int = 10):
    """Logits that always prefer (last token + 1) mod vocab."""
    def model(tokens, context=None, cache=None):
        nxt = (tokens + 1) % vocab
        return torch.nn.functional.one_hot(nxt, vocab).float() * 5

    return model


def test_stop_ends_rows_and_on_step_sees_every_step():
    seen = []
    out = generate(_counting_model(), torch.tensor([[0], [5]]), 8, use_cache=False,
                   stop=lambda t: t[:, -1] == 3, on_step=lambda t: seen.append(t.shape[1]), pad_id=-1)
    assert out.sequences[0].tolist() == [0, 1, 2, 3]  # stopped after emitting 3
    assert out.sequences[1].tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3]
    assert seen == list(range(2, 10))


@pytest.mark.parametrize("kwargs, kind", [({}, Greedy), ({"temperature": 0.7}, Sampling),
                                          ({"top_k": 5}, Sampling), ({"beam_size": 3}, BeamSearch)])
def test_options_choose_the_strategy(kwargs, kind):
    assert isinstance(GenerationOptions(**kwargs).strategy(), kind)


def test_seeded_sampling_is_reproducible():
    opts = GenerationOptions(temperature=1.0, seed=3)
    model = lambda t, context=None, cache=None: torch.zeros(t.shape[0], t.shape[1], 20)  # noqa: E731
    a = generate(model, torch.zeros(2, 1, dtype=torch.long), 10, opts.strategy(), use_cache=False).tokens
    b = generate(model, torch.zeros(2, 1, dtype=torch.long), 10, opts.strategy(), use_cache=False).tokens
    assert torch.equal(a, b) and len(set(a[0].tolist())) > 1


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 0}, {"temperature": -1}, {"temperature": math.nan},
                                    {"top_p": 1.5}, {"top_k": 0}, {"beam_size": 0},
                                    {"beam_size": 2, "temperature": 0.5}, {"repetition_penalty": 0}])
def test_options_refuse_bad_values(kwargs):
    with pytest.raises(ValueError):
        GenerationOptions(**kwargs)


@pytest.mark.parametrize("temperature", [1e-30, 1e-38, 1e-45, 1e-300])
def test_a_tiny_temperature_samples_the_best_token_not_nan(temperature):
    """logits / 1e-38 overflows to +-inf (softmax of inf - inf is NaN, and torch.multinomial raised); the
    limit of sampling as the temperature falls is the argmax, and a masked (-inf) logit stays masked."""
    from mmkit.core.filters import Temperature

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 20
    logits[:, 7] = float("-inf")
    scaled = Temperature(temperature)(None, logits.clone())
    assert not scaled.isnan().any() and (scaled[:, 7] == float("-inf")).all()
    sampling = Sampling(temperature, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampling.select(scaled), logits.argmax(-1))
    usual = Temperature(0.7)(None, logits.clone())  # an ordinary temperature: plain division, as before
    assert torch.equal(usual, logits / 0.7)


def test_a_huge_guidance_scale_keeps_the_guided_logits_finite():
    """A scale finite in float32 (3e38) overflowed uncond + scale · (cond − uncond) to ±inf, and softmax then
    gave NaN probabilities: such a row is now the same logits shifted by their largest, finite, its best token the
    limit's (the largest cond − uncond), a token the conditional row never samples still never sampled."""
    from mmkit.core.filters import guided

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 10  # rows 0-2 conditional, 3-5 their unconditional twins
    logits[0, 7] = logits[3, 7] = float("-inf")
    cond, uncond = logits.chunk(2)
    out = guided(logits, 3e38)
    assert out.shape == (3, 50) and bool(out.softmax(-1).isfinite().all())
    assert torch.equal(out.argmax(-1), (cond - uncond).nan_to_num(nan=float("-inf")).argmax(-1))
    assert out[0, 7] == float("-inf") and bool((out.amax(-1) == 0).all())
    moderate = guided(logits, 16.0)  # nothing overflows: computed exactly as before
    assert torch.equal(moderate, torch.where(cond.isinf(), cond, uncond + 16.0 * (cond - uncond)))

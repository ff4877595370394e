"""Prompts of different lengths in one batch (`left_padded`, `KVCache.padding`): Whisper's decoder positions each
row from its first real token and masks the padding out, so a padded row's logits are its own alone, and a
batch of ragged prompts generates what each prompt generates alone (greedy; beams and samples in
tests/tasks/test_sequential_batches.py, through sequential transcription). The padding follows the rows through
`reorder` and `fork`."""
from __future__ import annotations

import pytest
import torch

from mmkit.core import BeamSearch, KVCache, generate, left_padded, left_padding_mask
from mmkit.models import Whisper

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Whisper(n_mels=8, n_audio_ctx=16, n_text_ctx=24, vocab_size=40, dim=32, num_heads=2, encoder_depth=1,
                decoder_depth=2).eval()
    with torch.no_grad():
        m.tok_embed.weight.mul_(4)  # peaked logits: no near-ties for an argmax to swap
    return m, m.encode(torch.randn(len(PROMPTS), 8, 32))


def test_left_padded_rows_and_their_padding():
    tokens, padding = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert tokens.tolist() == [[5, 6, 7], [0, 0, 8]] and padding.tolist() == [0, 2]


def test_the_mask_lets_real_tokens_see_real_ones_and_padding_see_padding():
    mask = left_padding_mask(torch.tensor([0, 2]), offset=0, t_query=3)[:, 0]  # (B, T, T_key), before causality
    assert mask[0].all()
    assert mask[1].tolist() == [[True, True, True], [True, True, True], [False, False, True]]
    step = left_padding_mask(torch.tensor([0, 2]), offset=3, t_query=1)[:, 0, 0]  # a decoding step's one query
    assert step.tolist() == [[True] * 4, [False, False, True, True]]


@torch.no_grad()
def test_a_padded_rows_logits_are_its_own(model):
    m, context = model
    tokens, padding = left_padded(PROMPTS, pad_id=0)
    cache = KVCache()
    cache.padding = padding
    batch = m(tokens, context, cache)
    for b, prompt in enumerate(PROMPTS):
        alone = m(torch.tensor([prompt]), context[b : b + 1])
        torch.testing.assert_close(batch[b, int(padding[b]) :], alone[0], rtol=0, atol=1e-5)
    assert torch.isfinite(batch).all()  # the padding positions too: no NaN cached for later steps


@torch.no_grad()
@pytest.mark.parametrize("strategy, limits", [(None, "shared"), (None, "per-row"), (BeamSearch(3, early_stopping=True),
                                                                                     "shared")])
def test_a_ragged_batch_generates_what_each_prompt_generates_alone(model, strategy, limits):
    m, context = model
    new = [9, 4, 12, 6] if limits == "per-row" else [10] * len(PROMPTS)
    tokens, padding = left_padded(PROMPTS, pad_id=0)
    cache = KVCache()
    cache.padding = padding
    g = generate(m, tokens, torch.tensor(new) if limits == "per-row" else new[0], strategy, context=context,
                 eos_id=39, cache=cache)
    for b, prompt in enumerate(PROMPTS):
        alone = generate(m, torch.tensor([prompt]), new[b], strategy, context=context[b : b + 1], eos_id=39)
        assert g.sequences[b][tokens.shape[1] :].tolist() == alone.sequences[0][len(prompt) :].tolist()
        torch.testing.assert_close(g.scores[b], alone.scores[0], rtol=0, atol=1e-5)


def test_the_padding_follows_reorder_and_fork():
    cache = KVCache()
    cache.layer(0).self_attn.append(torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8))
    cache.padding = torch.tensor([0, 1, 3])
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.padding.tolist() == [3, 3, 0]
    assert cache.fork(torch.tensor([1, 2])).padding.tolist() == [3, 0]
    # without the prefix, a fork is laid out anew by the prompt its caller feeds (word timing, language detection)
    assert cache.fork(torch.tensor([1, 2]), keep_prefix=False).padding is None

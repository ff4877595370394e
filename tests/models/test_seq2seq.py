"""Seq2Seq (the 2017 Transformer / MarianMT): logits and generate() tokens against transformers'
MarianMTModel (tiny random init, fp32, eager attention), cached == uncached, batched ==
one-at-a-time, save/load, and the importer's refusals."""
from __future__ import annotations

import pytest
import torch

from mmkit.core import BeamSearch, Greedy, KVCache, generate, sinusoidal_positions
from mmkit.models import Seq2Seq
from mmkit.weights.native import WeightsError
from tests.models._seq2seq_refs import PAD, padded_sources, tiny_marian


@pytest.fixture(scope="module")
def marian_pair():
    ref = tiny_marian(eos_bias=2.8)
    return ref, Seq2Seq.from_hf(ref).eval()


def test_marian_logits_match_transformers(marian_pair):
    ref, model = marian_pair
    src, mask = padded_sources(PAD)
    tgt = torch.randint(1, 98, (6, 7), generator=torch.Generator().manual_seed(2))
    tgt[:, 0] = PAD
    with torch.no_grad():
        expected = ref(input_ids=src, attention_mask=mask.long(), decoder_input_ids=tgt).logits
        got = model(tgt, context=model.encode(src, mask), context_mask=mask)
    assert (got - expected).abs().max() <= 1e-4
    assert model.config["positions"] == "halves" and model.config["activation"] == "silu"


@pytest.mark.parametrize("eos_bias", [2.8, 3.1])
@pytest.mark.parametrize("early_stopping,length_penalty", [(True, 1.0), (False, 1.0), (False, 0.6), ("never", 1.0),
                                                           (True, -0.5)])
def test_marian_beam_tokens_equal_transformers_generate(eos_bias, early_stopping, length_penalty):
    ref = tiny_marian(eos_bias=eos_bias)
    model = Seq2Seq.from_hf(ref).eval()
    src, mask = padded_sources(PAD)
    expected = ref.generate(input_ids=src, attention_mask=mask.long(), num_beams=4, do_sample=False,
                            max_new_tokens=12, early_stopping=early_stopping, length_penalty=length_penalty)
    got = generate(model, torch.full((6, 1), PAD), 12, BeamSearch(4, length_penalty, early_stopping=early_stopping),
                   context=model.encode(src, mask), context_mask=mask, eos_id=0, pad_id=PAD)
    for row, seq in zip(expected, got.sequences):
        assert row[: len(seq)].tolist() == seq.tolist()
        assert (row[len(seq):] == PAD).all()


def test_marian_greedy_tokens_equal_transformers_generate(marian_pair):
    ref, model = marian_pair
    src, mask = padded_sources(PAD)
    expected = ref.generate(input_ids=src, attention_mask=mask.long(), num_beams=1, do_sample=False, max_new_tokens=12)
    got = generate(model, torch.full((6, 1), PAD), 12, Greedy(), context=model.encode(src, mask), context_mask=mask,
                   eos_id=0, pad_id=PAD)
    assert got.tokens.shape == expected.shape and torch.equal(got.tokens, expected)


@pytest.mark.parametrize("strategy", [Greedy(), BeamSearch(3, early_stopping=False), BeamSearch(3)],
                         ids=["greedy", "ranked-beam", "whisper-beam"])
def test_cached_equals_uncached_and_batched_equals_one_at_a_time(marian_pair, strategy):
    _, model = marian_pair
    src, mask = padded_sources(PAD, seed=5)
    memory = model.encode(src, mask)
    kw = dict(eos_id=0, pad_id=PAD)
    start = torch.full((6, 1), PAD)
    cached = generate(model, start, 10, strategy, context=memory, context_mask=mask, **kw)
    uncached = generate(model, start, 10, strategy, context=memory, context_mask=mask, use_cache=False, **kw)
    assert [s.tolist() for s in cached.sequences] == [s.tolist() for s in uncached.sequences]
    for i in range(6):
        n = int(mask[i].sum())  # alone, without the padding
        alone = generate(model, start[:1], 10, strategy, context=model.encode(src[i : i + 1, :n]), **kw)
        assert alone.sequences[0].tolist() == cached.sequences[i].tolist()
        torch.testing.assert_close(alone.scores[0], cached.scores[i], atol=1e-4, rtol=1e-4)


def test_cross_attention_keys_are_computed_once(marian_pair):
    _, model = marian_pair
    src, mask = padded_sources(PAD)
    calls = []
    hooks = [b.cross_attn.kv.register_forward_hook(lambda m, a, o: calls.append(1)) for b in model.decoder.blocks]
    try:
        generate(model, torch.full((6, 1), PAD), 8, BeamSearch(2, early_stopping=True), context=model.encode(src, mask),
                 context_mask=mask, eos_id=None)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == len(model.decoder.blocks)


def test_paper_model_positions_dropout_and_untied_head(tmp_path):
    model = Seq2Seq(vocab_size=50, max_len=20, dim=16, encoder_depth=1, decoder_depth=2, num_heads=2, dropout=0.1,
                    tie_output=False)
    torch.testing.assert_close(model.pos_embed, sinusoidal_positions(20, 16))
    assert model.head is not None and model.logits_bias is None
    src = torch.randint(0, 50, (2, 5))
    tgt = torch.randint(0, 50, (2, 4))
    model.train()
    a = model(tgt, context=model.encode(src))
    b = model(tgt, context=model.encode(src))
    assert not torch.allclose(a, b)  # dropout is live in training
    a.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        expected = model(tgt, context=model.encode(src))
    loaded = Seq2Seq.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(tgt, context=loaded.encode(src)), expected)
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.encode(torch.zeros(1, 21, dtype=torch.long))


def test_step_by_step_logits_equal_full_forward(marian_pair):
    _, model = marian_pair
    src, mask = padded_sources(PAD)
    tgt = torch.randint(1, 98, (6, 6), generator=torch.Generator().manual_seed(3))
    memory = model.encode(src, mask)
    with torch.no_grad():
        full = model(tgt, context=memory, context_mask=mask)
        cache = KVCache()
        steps = [model(tgt[:, t : t + 1], context=memory, cache=cache, context_mask=mask) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_importer_loads_a_directory_and_refuses_other_models(tmp_path, marian_pair):
    ref, model = marian_pair
    ref.save_pretrained(tmp_path / "marian")
    loaded = Seq2Seq.from_hf(tmp_path / "marian")
    assert not loaded.training
    for name, p in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], p)
    with pytest.raises(WeightsError, match="expected a transformers MarianMTModel"):
        Seq2Seq.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(WeightsError, match="no config.json"):
        Seq2Seq.from_hf(tmp_path)
    bad = tiny_marian(share_encoder_decoder_embeddings=False)
    with pytest.raises(WeightsError, match="separate source/target vocabularies"):
        Seq2Seq.from_hf(bad)
    untied = tiny_marian(tie_word_embeddings=False)  # transformers unties all three embeddings: the field named
    with pytest.raises(WeightsError, match=r"differs from model.shared.weight \(config.json: tie_word_embeddings "
                                           "false\); mmkit's Seq2Seq shares them"):
        Seq2Seq.from_hf(untied)

"""LayerDrop (Fan et al., 2019) in imported MarianMT models: in training mode, from one torch seed, the same blocks
skipped, the same dropout masks, logits and every parameter gradient as transformers' `MarianMTModel`; eval mode,
cached decoding and a rate of 0 draw nothing."""
from __future__ import annotations

import pytest
import torch
from _training import block_calls, gradients
from torch import Tensor

from mmkit.core import Encoder, KVCache
from mmkit.core.execution import set_grad_checkpointing
from mmkit.models import Seq2Seq
from mmkit.weights.from_hf_marian import MARIAN_KEYS
from mmkit.weights.hf import fuse_projections
from mmkit.weights.keymap import remap
from tests.models._seq2seq_refs import PAD, padded_sources, tiny_marian

DEPTH = 6  # per stack: at rate 0.5 the seed below skips some blocks of each and runs others
RATES = dict(encoder_layerdrop=0.5, decoder_layerdrop=0.5)


def _marian(attn_implementation: str = "eager", **overrides):
    return tiny_marian(encoder_layers=DEPTH, decoder_layers=DEPTH, dropout=0.1, attention_dropout=0.2,
                       activation_dropout=0.15, attn_implementation=attn_implementation, **{**RATES, **overrides})


def _inputs() -> tuple[Tensor, Tensor, Tensor]:
    src, valid = padded_sources(PAD)
    tgt = torch.randint(1, 98, (6, 7), generator=torch.Generator().manual_seed(3))
    tgt[:, 0] = PAD  # the decoder start
    return src, valid, tgt


@pytest.mark.parametrize("attn_implementation, checkpointing", [("sdpa", False), ("eager", False), ("eager", True)])
def test_an_imported_marian_drops_the_layers_transformers_drops(attn_implementation, checkpointing):
    """Activation checkpointing too: the draw is outside the checkpointed block, so recomputing never redraws it."""
    hf = _marian(attn_implementation)
    model = Seq2Seq.from_hf(hf)
    if checkpointing:
        set_grad_checkpointing(model)
    assert (model.config["encoder_layerdrop"], model.config["decoder_layerdrop"]) == (0.5, 0.5)
    assert (model.encoder.layerdrop, model.decoder.layerdrop) == (0.5, 0.5)
    src, valid, tgt = _inputs()
    runs = {}
    for name, net, stacks in [("theirs", hf, (hf.model.encoder.layers, hf.model.decoder.layers)),
                              ("ours", model, (model.encoder.blocks, model.decoder.blocks))]:
        net.train()
        (enc_ran, h1), (dec_ran, h2) = block_calls(stacks[0]), block_calls(stacks[1])
        torch.manual_seed(1)
        if net is hf:
            logits = hf(input_ids=src, attention_mask=valid.long(), decoder_input_ids=tgt).logits
        else:
            logits = model(tgt, context=model.encode(src, valid), context_mask=valid)
        for handle in h1 + h2:  # before the backward pass, which recomputes checkpointed blocks
            handle.remove()
        logits.square().mean().backward()
        runs[name] = logits, enc_ran, dec_ran
    expected, hf_enc, hf_dec = runs["theirs"]
    got, enc, dec = runs["ours"]
    assert (enc, dec) == (hf_enc, hf_dec)  # the same blocks ran
    assert 0 < len(hf_enc) < DEPTH and 0 < len(hf_dec) < DEPTH  # the seed drops some of each stack and keeps some
    assert (got - expected).abs().max() <= 1e-5
    # transformers' gradients under mmkit's names: the key map and q/k/v fusion that import its weights
    theirs = fuse_projections(remap(gradients(hf), MARIAN_KEYS, "gradients"), "gradients", biasless=())
    ours = gradients(model)
    assert theirs.keys() == ours.keys()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) <= 1e-5
    skipped = [i for i in range(DEPTH) if i not in enc]
    assert all(p.grad is None for p in model.encoder.blocks[skipped[0]].parameters())
    model.eval()
    with torch.no_grad():  # not the full model: LayerDrop (and dropout) acted
        assert (got - model(tgt, context=model.encode(src, valid), context_mask=valid)).abs().max() > 1e-3


def test_eval_mode_ignores_layerdrop_and_draws_nothing():
    hf = _marian()
    model = Seq2Seq.from_hf(hf)
    src, valid, tgt = _inputs()
    state = torch.get_rng_state()
    with torch.no_grad():
        got = model(tgt, context=model.encode(src, valid), context_mask=valid)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        expected = hf(input_ids=src, attention_mask=valid.long(), decoder_input_ids=tgt).logits
    assert (got - expected).abs().max() <= 1e-5


def _no_dropout(model: Seq2Seq) -> Seq2Seq:
    """`model` with every dropout rate 0, so that only LayerDrop could draw random numbers."""
    return Seq2Seq(**{**model.config, "dropout": 0.0, "attn_dropout": 0.0, "activation_dropout": 0.0})


def test_rate_zero_and_cached_decoding_draw_nothing_in_training():
    """At rate 0 (every native recipe) a training forward draws no random number, so the runs of models built
    before LayerDrop stay bit-identical; with a KV cache every block runs (a block skipped at one step would lack
    its keys and values at the next), so training-mode cached decoding equals eval-mode."""
    src, valid, tgt = _inputs()
    torch.manual_seed(0)
    plain = _no_dropout(Seq2Seq.from_hf(tiny_marian(encoder_layers=DEPTH, decoder_layers=DEPTH))).train()
    assert (plain.encoder.layerdrop, plain.decoder.layerdrop) == (0.0, 0.0)
    dropping = _no_dropout(Seq2Seq.from_hf(_marian())).train()
    for model, draws in [(plain, False), (dropping, True)]:
        state = torch.get_rng_state()
        model(tgt, context=model.encode(src, valid), context_mask=valid)
        assert torch.equal(torch.get_rng_state(), state) != draws  # a test that can fail: rate 0.5 does draw
    memory = dropping.encode(src, valid)  # training: drawn
    state, cache = torch.get_rng_state(), KVCache()
    steps = [dropping(tgt[:, t : t + 1], context=memory, context_mask=valid, cache=cache) for t in range(tgt.shape[1])]
    assert torch.equal(torch.get_rng_state(), state)
    dropping.eval()
    with torch.no_grad():
        full = dropping(tgt, context=memory, context_mask=valid)
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-5


def test_a_skipped_last_block_still_keeps_the_wanted_positions():
    """`keep` is the last block's job; when LayerDrop skips that block the stack still returns `keep` positions."""
    torch.manual_seed(0)
    encoder = Encoder(16, 2, 2, layerdrop=1.0).train()
    x = torch.randn(2, 5, 16)
    out = encoder(x, keep=1)
    assert out.shape == (2, 1, 16)
    assert torch.equal(out, encoder.norm(x[:, :1]))  # every block skipped
    with pytest.raises(ValueError, match="layerdrop"):
        Encoder(16, 2, 2, layerdrop=1.5)


def test_exports_keep_the_layerdrop_rates(tmp_path):
    model = Seq2Seq.from_hf(_marian(decoder_layerdrop=0.25))
    again = Seq2Seq.from_pretrained(model.save_pretrained(tmp_path / "marian"))
    assert (again.encoder.layerdrop, again.decoder.layerdrop) == (0.5, 0.25)

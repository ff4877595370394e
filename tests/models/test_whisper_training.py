"""Imported Whisper trains as transformers' `WhisperForConditionalGeneration` does: in training mode, from one torch
seed, the same LayerDrop draws (the same blocks skipped in each stack), the same dropout masks (embeddings,
attention probabilities, after each output projection and the feed-forward activation), logits and every parameter
gradient, with sdpa and eager attention; eval mode draws nothing; native models drop exactly as before the rates."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from _training import block_calls, gradients
from torch import Tensor

from mmkit.core import Decoder, Encoder
from mmkit.core.blocks import layer_norm
from mmkit.models import Whisper
from mmkit.models.whisper import NORM_EPS
from mmkit.weights import WeightsError
from mmkit.weights.from_hf_whisper import WHISPER_KEYS, whisper_config
from mmkit.weights.hf import fuse_projections
from mmkit.weights.keymap import remap
from tests.models.test_training_dropout import dropout_layout

transformers = pytest.importorskip("transformers")

DEPTH = 4  # per stack: at these rates the seed below skips some blocks of each and runs others
RATES = dict(dropout=0.1, attention_dropout=0.2, activation_dropout=0.15, encoder_layerdrop=0.4, decoder_layerdrop=0.5)
N_MELS, AUDIO_CTX, VOCAB = 16, 12, 100
# configs/whisper_espeak.yaml's model (its vocab_size is the data's)
RECIPE = dict(n_mels=80, n_audio_ctx=200, n_text_ctx=96, vocab_size=40, dim=128, encoder_depth=3, decoder_depth=2,
              num_heads=4, mlp_ratio=4.0, dropout=0.0)


def _hf_whisper(attn_implementation: str = "eager", **rates):
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=DEPTH, decoder_layers=DEPTH, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=N_MELS,
        max_source_positions=AUDIO_CTX, max_target_positions=16, pad_token_id=99, bos_token_id=98, eos_token_id=97,
        decoder_start_token_id=96, begin_suppress_tokens=None, suppress_tokens=None,
        attn_implementation=attn_implementation, **{**RATES, **rates})
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # beyond the N(0, 0.02) init, so that every mask moves the outputs visibly
        for name, p in model.named_parameters():
            if "embed_positions" not in name or "decoder" in name:
                is_gain = p.ndim == 1 and "layer_norm" in name and name.endswith("weight")
                p.normal_(1.0 if is_gain else 0.0, 0.2)
    return model


def _inputs() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(2)
    mel = torch.randn(2, N_MELS, 2 * AUDIO_CTX, generator=g)
    tokens = torch.randint(0, 96, (2, 7), generator=g)
    tokens[:, 0] = 96  # the decoder start
    return mel, tokens


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_an_imported_whisper_trains_with_transformers_dropout_and_layerdrop(attn_implementation):
    hf = _hf_whisper(attn_implementation)
    model = Whisper.from_hf(hf)
    assert {k: model.config[k] for k in ("dropout", "resid_dropout", "attn_dropout", "activation_dropout",
                                         "encoder_layerdrop", "decoder_layerdrop")} == dict(
        dropout=0.1, resid_dropout=0.1, attn_dropout=0.2, activation_dropout=0.15, encoder_layerdrop=0.4,
        decoder_layerdrop=0.5)
    mel, tokens = _inputs()
    runs = {}
    for name, net, stacks in [("theirs", hf, (hf.model.encoder.layers, hf.model.decoder.layers)),
                              ("ours", model, (model.encoder.blocks, model.decoder.blocks))]:
        net.train()
        (enc_ran, h1), (dec_ran, h2) = block_calls(stacks[0]), block_calls(stacks[1])
        torch.manual_seed(1)
        if net is hf:
            logits = hf(input_features=mel, decoder_input_ids=tokens, use_cache=False).logits
        else:
            logits = model(tokens, model.encode(mel))
        for handle in h1 + h2:
            handle.remove()
        logits.square().mean().backward()
        runs[name] = logits, enc_ran, dec_ran
    expected, hf_enc, hf_dec = runs["theirs"]
    got, enc, dec = runs["ours"]
    assert (enc, dec) == (hf_enc, hf_dec)  # the same blocks ran
    assert 0 < len(hf_enc) < DEPTH and 0 < len(hf_dec) < DEPTH  # the seed drops some of each stack and keeps some
    assert (got - expected).abs().max() <= 1e-5  # float32 rounding: ~1e-6 at logits up to ~4
    # transformers' gradients under mmkit's names (the importer's key map and q/k/v fusion); its fixed audio
    # sinusoids are a frozen parameter there, a buffer here
    theirs = fuse_projections(remap(gradients(hf), WHISPER_KEYS, "gradients"), "gradients")
    del theirs["stem.pos_embed"]
    ours = gradients(model)
    assert theirs.keys() == ours.keys()
    assert max((ours[k] - theirs[k]).abs().max() for k in ours) <= 1e-5
    skipped = next(i for i in range(DEPTH) if i not in dec)
    assert all(p.grad is None for p in model.decoder.blocks[skipped].parameters())
    model.eval()
    with torch.no_grad():  # not the eval output: dropout and LayerDrop acted
        assert (got - model(tokens, model.encode(mel))).abs().max() > 1e-3


def test_eval_mode_draws_nothing_and_matches_transformers():
    hf = _hf_whisper()
    model = Whisper.from_hf(hf)
    assert not model.training
    mel, tokens = _inputs()
    state = torch.get_rng_state()
    with torch.no_grad():
        got = model(tokens, model.encode(mel))
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        expected = hf(input_features=mel, decoder_input_ids=tokens).logits
    assert (got - expected).abs().max() <= 1e-5


def test_the_importer_reads_and_checks_the_rates(tmp_path):
    """WhisperConfig's fields, absent: its defaults (0); out of [0, 1): refused in one line, naming the field."""
    hf = _hf_whisper(**{k: 0.0 for k in RATES})
    cfg = hf.config.to_dict()
    converted = whisper_config({k: v for k, v in cfg.items() if k not in RATES}, str(tmp_path / "config.json"))
    assert {k: converted[k] for k in ("dropout", "resid_dropout", "attn_dropout", "encoder_layerdrop")} == dict(
        dropout=0.0, resid_dropout=0.0, attn_dropout=0.0, encoder_layerdrop=0.0)
    for field, value in [("attention_dropout", 1.0), ("decoder_layerdrop", -0.1), ("dropout", "0.1")]:
        with pytest.raises(WeightsError, match=f"config.json: field '{field}' must be") as err:
            whisper_config({**cfg, field: value}, str(tmp_path / "config.json"))
        assert "\n" not in str(err.value)
    # zero rates (every published checkpoint's) leave the config as it was before the rates were fields
    assert Whisper.from_hf(hf).config.keys() == {"n_mels", "n_audio_ctx", "n_text_ctx", "vocab_size", "dim",
                                                  "encoder_depth", "decoder_depth", "num_heads", "mlp_ratio",
                                                  "dropout", "drop_path_rate"}


def test_exports_keep_the_rates_and_exports_without_them_load_without(tmp_path):
    model = Whisper.from_hf(_hf_whisper())
    directory = model.save_pretrained(tmp_path / "whisper")
    again = Whisper.from_pretrained(directory)
    assert again.config == model.config
    assert dropout_layout(again) == dropout_layout(model)
    assert (again.encoder.layerdrop, again.decoder.layerdrop) == (0.4, 0.5)
    path = directory / "config.json"
    doc = json.loads(path.read_text())
    doc["config"] = {k: v for k, v in doc["config"].items() if k not in (
        "resid_dropout", "attn_dropout", "activation_dropout", "encoder_layerdrop", "decoder_layerdrop")}
    path.write_text(json.dumps(doc))
    old = Whisper.from_pretrained(directory)  # as an mmkit from before the rates wrote it: embeddings drop alone
    assert {name for name, p in dropout_layout(old).items() if p} == {"drop"}
    assert (old.encoder.layerdrop, old.decoder.layerdrop) == (0.0, 0.0)


def _as_before(model: Whisper, drop_path_rate: float) -> Whisper:
    """`model` with its stacks built as Whisper built them before the training rates (the core's defaults), holding
    the same weights."""
    before = copy.deepcopy(model)
    norm = layer_norm(NORM_EPS)
    before.encoder = Encoder(RECIPE["dim"], RECIPE["encoder_depth"], RECIPE["num_heads"], RECIPE["mlp_ratio"],
                             norm_layer=norm, drop_path_rate=drop_path_rate)
    before.decoder = Decoder(RECIPE["dim"], RECIPE["decoder_depth"], RECIPE["num_heads"], RECIPE["mlp_ratio"],
                             cross_attention=True, norm_layer=norm, drop_path_rate=drop_path_rate)
    before.load_state_dict(model.state_dict())
    return before


@pytest.mark.parametrize("overrides", [{}, dict(dropout=0.1, drop_path_rate=0.1)])
def test_a_native_whisper_draws_exactly_as_before(overrides):
    """The recipe's model (and one with its two old rates set): the same config, dropout layout, training output
    and random numbers drawn as the stacks built before the rates existed; at rate 0 a training pass draws none."""
    torch.manual_seed(0)
    model = Whisper(**{**RECIPE, **overrides}).train()
    assert "resid_dropout" not in model.config and "encoder_layerdrop" not in model.config
    assert {name for name, p in dropout_layout(model).items() if p} == ({"drop"} if overrides else set())
    before = _as_before(model, overrides.get("drop_path_rate", 0.0)).train()
    mel = torch.randn(2, 80, 400, generator=torch.Generator().manual_seed(3))
    tokens = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(4))
    results = []
    for net in (model, before):
        torch.manual_seed(5)
        start = torch.get_rng_state()
        results.append((net(tokens, net.encode(mel)), torch.get_rng_state(), start))
    (got, state, start), (expected, expected_state, _) = results
    assert torch.equal(got, expected) and torch.equal(state, expected_state)
    assert torch.equal(state, start) != bool(overrides)  # a test that can fail: the rates do draw

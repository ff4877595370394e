"""Whisper: contract tests on a tiny native model, and parity with transformers'
WhisperForConditionalGeneration (encoder output, logits, greedy decoding, checkpoint import)."""
from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmkit.audio import SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from mmkit.core import BeamSearch, Greedy, KVCache, generate
from mmkit.models import Whisper
from mmkit.weights import WeightsError

VOCAB = 1000
SOT, EOT = 996, 997  # decoder_start_token_id / eos_token_id of the tiny configs


# --- contract tests on a tiny native model (short audio context: fast) -------------------------

@pytest.fixture(scope="module")
def tiny() -> Whisper:
    torch.manual_seed(0)
    model = Whisper(n_mels=80, n_audio_ctx=24, n_text_ctx=32, vocab_size=50, dim=32, encoder_depth=2,
                    decoder_depth=2, num_heads=4)
    with torch.no_grad():  # beyond the 0.02 init, so that outputs depend visibly on every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_mel() -> torch.Tensor:
    return torch.randn(2, 80, 48, generator=torch.Generator().manual_seed(0))


def test_shapes_and_input_checks(tiny, tiny_mel):
    ctx = tiny.encode(tiny_mel)
    assert ctx.shape == (2, 24, 32)
    tokens = torch.randint(0, 50, (2, 5))
    assert tiny(tokens, ctx).shape == (2, 5, 50)
    with pytest.raises(ValueError, match=r"\(B, 80, 48\)"):
        tiny.encode(tiny_mel[..., :40])
    with pytest.raises(ValueError, match=r"\(B, 80, 48\)"):
        tiny.encode(torch.randn(2, 128, 48))
    with pytest.raises(ValueError, match="needs context"):
        tiny(tokens)
    with pytest.raises(ValueError, match="max_len 32"):
        tiny(torch.zeros(1, 33, dtype=torch.long), ctx[:1])


def test_backward_reaches_every_parameter(tiny_mel):
    torch.manual_seed(0)
    model = Whisper(n_audio_ctx=24, n_text_ctx=16, vocab_size=30, dim=32, encoder_depth=1, decoder_depth=1,
                    num_heads=4, dropout=0.1).train()
    tokens = torch.randint(0, 30, (2, 6))
    logits = model(tokens[:, :-1], model.encode(tiny_mel))
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 30), tokens[:, 1:].reshape(-1))
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    # the sinusoidal table is a fixed buffer, saved with the weights but never trained
    assert "stem.pos_embed" in model.state_dict() and "stem.pos_embed" not in dict(model.named_parameters())


def test_decoder_is_causal_and_head_is_tied(tiny, tiny_mel):
    ctx = tiny.encode(tiny_mel)
    tokens = torch.randint(0, 50, (2, 8))
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 50
    a, b = tiny(tokens, ctx), tiny(changed, ctx)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    assert not any(k.startswith(("head", "proj_out")) for k in tiny.state_dict())


def test_cached_logits_step_by_step_equal_full_forward(tiny, tiny_mel):
    ctx = tiny.encode(tiny_mel)
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = tiny(tokens, ctx)
        cache = KVCache()
        steps = [tiny(tokens[:, :3], ctx, cache)] + [tiny(tokens[:, t : t + 1], None, cache) for t in range(3, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", [Greedy(), BeamSearch(beam_size=3)], ids=["greedy", "beam"])
def test_generate_cached_equals_uncached(tiny, tiny_mel, strategy):
    ctx = tiny.encode(tiny_mel)
    prompt = torch.tensor([[1, 2, 3], [1, 4, 3]])
    a = generate(tiny, prompt, 12, strategy, context=ctx, eos_id=7, use_cache=True)
    b = generate(tiny, prompt, 12, strategy, context=ctx, eos_id=7, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-5)


def test_save_load_round_trip(tiny, tiny_mel, tmp_path):
    tiny.save_pretrained(tmp_path)
    loaded = Whisper.from_pretrained(tmp_path).eval()
    assert loaded.config == tiny.config
    tokens = torch.randint(0, 50, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens, loaded.encode(tiny_mel)), tiny(tokens, tiny.encode(tiny_mel)),
                                   rtol=0, atol=0)


def test_load_into_shorter_windows_and_text_context(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    short = Whisper.from_pretrained(tmp_path, n_audio_ctx=16, n_text_ctx=20).eval()
    assert short.stem.pos_embed.shape == (16, 32) and short.pos_embed.weight.shape == (20, 32)
    torch.testing.assert_close(short.stem.pos_embed, tiny.stem.pos_embed[:16], rtol=0, atol=0)
    # The first positions mean the same: the decoder's first step on a given context agrees.
    context = torch.randn(1, 16, 32)
    tokens = torch.randint(0, 50, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(short(tokens, context), tiny(tokens, context), rtol=0, atol=0)
    longer = Whisper.from_pretrained(tmp_path, n_audio_ctx=30)  # fixed sinusoids: more rows are known
    torch.testing.assert_close(longer.stem.pos_embed[:24], tiny.stem.pos_embed, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exceeds the checkpoint's 32 learned text positions"):
        Whisper.from_pretrained(tmp_path, n_text_ctx=64)


# --- transformers parity ----------------------------------------------------------------------

def _hf_whisper(n_mels: int, n_audio_ctx: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=n_mels,
        max_source_positions=n_audio_ctx, max_target_positions=64, pad_token_id=999, bos_token_id=998,
        eos_token_id=EOT, decoder_start_token_id=SOT, begin_suppress_tokens=None, suppress_tokens=None)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    # Whisper's N(0, 0.02) init leaves activations so small that an erf-vs-tanh GELU or a
    # misplaced norm hides below 1e-4; larger weights make the comparison discriminating.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "encoder.embed_positions" in name:
                continue  # the fixed sinusoids
            is_gain = p.ndim == 1 and "layer_norm" in name and name.endswith("weight")
            p.normal_(1.0 if is_gain else 0.0, 0.3 if "embed_tokens" in name else 0.2)
    return model


@pytest.fixture(scope="module")
def hf_whisper():
    return _hf_whisper(n_mels=80, n_audio_ctx=1500)


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    """(2, 80, 3000) log-Mel of two 30 s-padded synthetic clips: what the encoder sees in use."""
    rng = np.random.default_rng(0)
    t = np.arange(4 * SAMPLE_RATE) / SAMPLE_RATE
    audio = np.stack([0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size),
                      0.3 * np.sin(2 * np.pi * 1250 * t) * (t < 2.5)]).astype(np.float32)
    return log_mel_spectrogram(pad_or_trim(audio))


@pytest.fixture(scope="module")
def decoder_tokens() -> torch.Tensor:
    tokens = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = SOT
    return tokens


@pytest.fixture(scope="module")
def reference(hf_whisper, mel, decoder_tokens) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        enc = hf_whisper.model.encoder(mel).last_hidden_state
        logits = hf_whisper(encoder_outputs=(enc,), decoder_input_ids=decoder_tokens).logits
    assert logits.std() > 1  # a non-degenerate reference
    return {"encoder": enc, "logits": logits}


@pytest.fixture(scope="module")
def imported(hf_whisper) -> Whisper:
    return Whisper.from_hf(hf_whisper)


def test_from_hf_encoder_and_logits_match_transformers(imported, reference, mel, decoder_tokens):
    assert not imported.training
    assert imported.config["n_audio_ctx"] == 1500 and imported.config["mlp_ratio"] == 4.0
    with torch.no_grad():
        enc = imported.encode(mel)
        torch.testing.assert_close(enc, reference["encoder"], atol=1e-4, rtol=0)
        torch.testing.assert_close(imported(decoder_tokens, enc), reference["logits"], atol=1e-4, rtol=0)


def test_from_hf_128_mel_variant_matches_transformers():
    hf = _hf_whisper(n_mels=128, n_audio_ctx=100)  # large-v3's front end; short context keeps it fast
    model = Whisper.from_hf(hf)
    mel = log_mel_spectrogram(np.random.default_rng(3).standard_normal(200 * 160).astype(np.float32), n_mels=128)
    tokens = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(input_features=mel[None], decoder_input_ids=tokens).logits
        torch.testing.assert_close(model(tokens, model.encode(mel[None])), ref, atol=1e-4, rtol=0)


def test_greedy_generate_matches_a_greedy_loop_on_transformers(imported, hf_whisper, reference, mel):
    # Reference: argmax over HF logits, full recomputation every step, no logit processors
    # (HF's `generate` adds Whisper-specific processors that cannot all be switched off).
    enc = reference["encoder"]
    prompt = torch.tensor([[SOT, 5, 6], [SOT, 7, 6]])
    ref = prompt
    with torch.no_grad():
        for _ in range(15):
            logits = hf_whisper(encoder_outputs=(enc,), decoder_input_ids=ref).logits[:, -1]
            ref = torch.cat([ref, logits.argmax(-1, keepdim=True)], dim=1)
    ours = generate(imported, prompt, 15, Greedy(), context=imported.encode(mel))  # KV cache on
    assert len(set(ref[:, 3:].flatten().tolist())) > 3  # not a degenerate repeat-one-token output
    assert torch.equal(ours.tokens, ref)


def test_from_hf_directory_safetensors(hf_whisper, reference, mel, decoder_tokens, tmp_path):
    hf_whisper.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model = Whisper.from_hf(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(decoder_tokens, model.encode(mel)), reference["logits"], atol=1e-4, rtol=0)


def test_from_hf_directory_pytorch_bin_without_prefix(hf_whisper, reference, mel, decoder_tokens, tmp_path):
    # A `WhisperModel`-style state dict (no "model." prefix, no proj_out) in pytorch_model.bin,
    # read with torch.load(weights_only=True).
    hf_whisper.config.save_pretrained(tmp_path)
    state = {k.removeprefix("model."): v.clone() for k, v in hf_whisper.state_dict().items() if k != "proj_out.weight"}
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = Whisper.from_hf(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(model(decoder_tokens, model.encode(mel)), reference["logits"], atol=1e-4, rtol=0)


def _broken_checkpoint(hf_whisper, tmp_path, edit) -> str:
    hf_whisper.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return str(path)


def test_from_hf_missing_key_names_file_and_key(hf_whisper, tmp_path):
    path = _broken_checkpoint(hf_whisper, tmp_path, lambda s: s.pop("model.decoder.layers.1.fc2.bias"))
    with pytest.raises(WeightsError) as err:
        Whisper.from_hf(tmp_path)
    assert path in str(err.value) and "missing keys: decoder.blocks.1.mlp.fc2.bias" in str(err.value)


def test_from_hf_missing_projection_names_file_and_fused_part(hf_whisper, tmp_path):
    path = _broken_checkpoint(hf_whisper, tmp_path, lambda s: s.pop("model.decoder.layers.0.encoder_attn.v_proj.bias"))
    with pytest.raises(WeightsError) as err:
        Whisper.from_hf(tmp_path)
    assert path in str(err.value) and "decoder.blocks.0.cross_attn.kv.v.bias" in str(err.value)


def test_from_hf_unknown_key_and_wrong_shape_are_refused(hf_whisper, tmp_path):
    def add_k_bias(s):
        s["model.encoder.layers.0.self_attn.k_proj.bias"] = torch.zeros(64)

    path = _broken_checkpoint(hf_whisper, tmp_path / "a", add_k_bias)
    with pytest.raises(WeightsError, match="no mapping: model.encoder.layers.0.self_attn.k_proj.bias") as err:
        Whisper.from_hf(tmp_path / "a")
    assert path in str(err.value)

    def shrink(s):
        s["model.encoder.conv1.weight"] = s["model.encoder.conv1.weight"][:, :40].contiguous()

    path = _broken_checkpoint(hf_whisper, tmp_path / "b", shrink)
    with pytest.raises(WeightsError) as err:
        Whisper.from_hf(tmp_path / "b")
    assert str(err.value) == (f"{path}: field n_mels=80 disagrees with the weights: stem.conv1.weight is (64, 40, 3) "
                              "in the weights but (64, 80, 3) by the config")


def test_from_hf_refuses_other_models_and_variants(tmp_path):
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20,
                                                                n_positions=8))
    gpt2.save_pretrained(tmp_path)
    with pytest.raises(WeightsError, match="GPT2LMHeadModel is not supported; mmkit imports "
                                           "WhisperForConditionalGeneration, WhisperModel here") as err:
        Whisper.from_hf(tmp_path)  # config.json's architectures names it first
    assert str(tmp_path) in str(err.value)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["architectures"]  # without it, the model type says it
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="expected a Whisper config, got model_type='gpt2'"):
        Whisper.from_hf(tmp_path)
    with pytest.raises(WeightsError, match="expected a transformers WhisperForConditionalGeneration"):
        Whisper.from_hf(gpt2)
    small = dict(vocab_size=20, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=4,
                 max_target_positions=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3)
    scaled = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**small, scale_embedding=True))
    with pytest.raises(WeightsError, match="scale_embedding"):
        Whisper.from_hf(scaled)
    untied = transformers.WhisperForConditionalGeneration(
        transformers.WhisperConfig(**small, tie_word_embeddings=False))
    with pytest.raises(WeightsError, match="untied proj_out"):
        Whisper.from_hf(untied)


def test_from_hf_repo_id_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache, and HF_HUB_OFFLINE=1 (conftest)
    with pytest.raises(WeightsError, match="no-such-owner/no-such-whisper: not a local directory"):
        Whisper.from_hf("no-such-owner/no-such-whisper")
    with pytest.raises(WeightsError, match="no config.json"):
        Whisper.from_hf(tmp_path)


@pytest.mark.parametrize("name, hf_params", [("tiny", 37_760_640), ("base", 72_593_920), ("tiny.en", 37_760_256)])
def test_named_sizes_have_the_published_parameter_counts(name, hf_params):
    # hf_params: the Hub checkpoints' counts (openai/whisper-tiny, -base, -tiny.en). mmkit keeps the
    # sinusoid table as a buffer (transformers: a frozen parameter) and a zero key-bias slot in each
    # fused qkv projection (transformers' k_proj has no bias): one dim per attention module.
    model = Whisper.from_name(name)
    cfg = model.config
    attention_modules = cfg["encoder_depth"] + 2 * cfg["decoder_depth"]
    ours = sum(p.numel() for p in model.parameters()) + model.stem.pos_embed.numel()
    assert ours - attention_modules * cfg["dim"] == hf_params
    with pytest.raises(ValueError, match="known sizes: tiny, base"):
        Whisper.from_name("huge")

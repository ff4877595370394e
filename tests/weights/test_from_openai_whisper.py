"""openai-whisper checkpoint files (.pt) -> mmkit Whisper: parity with openai/whisper's own model
(tiny random init, offline: encoder output, logits, greedy decoding; 80 and 128 Mel bins), bare
fp16 state dicts, and the refusals (missing, unknown or misshapen tensors, dims mmkit cannot
express, unsafe or foreign files)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from mmkit.audio import log_mel_spectrogram
from mmkit.core import Greedy, generate
from mmkit.models import Whisper
from mmkit.weights import WeightsError

from _pickle_payload import Payload

whisper = pytest.importorskip("whisper")
from whisper.model import ModelDimensions  # noqa: E402 - only once openai-whisper is known present

SOT = 50258  # <|startoftranscript|> of the multilingual vocabulary
ATOL = 1e-4


def _reference(n_mels: int = 80, n_audio_ctx: int = 32, n_vocab: int = 51865, dim: int = 64, heads: int = 4,
               layers: tuple[int, int] = (2, 2)) -> whisper.model.Whisper:
    dims = ModelDimensions(n_mels=n_mels, n_audio_ctx=n_audio_ctx, n_audio_state=dim, n_audio_head=heads,
                           n_audio_layer=layers[0], n_vocab=n_vocab, n_text_ctx=64, n_text_state=dim,
                           n_text_head=heads, n_text_layer=layers[1])
    torch.manual_seed(0)
    model = whisper.model.Whisper(dims)
    # Replaces PyTorch's default init (and the uninitialised decoder positions) with weights large
    # enough that an erf-vs-tanh GELU or a misplaced norm shows above 1e-4.
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_gain = p.ndim == 1 and name.endswith("weight")  # LayerNorm gains: the only 1-D weights
            p.normal_(1.0 if is_gain else 0.0, 0.3 if "token_embedding" in name else 0.2)
    return model.eval()


def _save(model: whisper.model.Whisper, path: Path, state: dict | None = None, dims: dict | None = None) -> Path:
    """As openai-whisper's published checkpoints are written."""
    state = dict(model.state_dict()) if state is None else state
    torch.save({"dims": asdict(model.dims) if dims is None else dims, "model_state_dict": state}, path)
    return path


def _mel(n_mels: int, n_audio_ctx: int, batch: int = 2) -> torch.Tensor:
    """(batch, n_mels, 2·n_audio_ctx) log-Mel of noise: the value range the encoder sees in use."""
    audio = 0.1 * np.random.default_rng(0).standard_normal((batch, 2 * n_audio_ctx * 160)).astype(np.float32)
    return log_mel_spectrogram(audio, n_mels=n_mels)


def _assert_parity(model: Whisper, reference: whisper.model.Whisper, mel: torch.Tensor, tokens: torch.Tensor):
    with torch.no_grad():
        ref_enc = reference.encoder(mel)
        ref_logits = reference.decoder(tokens, ref_enc)
        enc = model.encode(mel)
        torch.testing.assert_close(enc, ref_enc, atol=ATOL, rtol=0)
        torch.testing.assert_close(model(tokens, enc), ref_logits, atol=ATOL, rtol=0)
    assert ref_logits.std() > 1  # a non-degenerate reference


@pytest.fixture(scope="module")
def reference() -> whisper.model.Whisper:
    return _reference()


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory) -> Path:
    return _save(reference, tmp_path_factory.mktemp("openai") / "tiny-random.pt")


@pytest.fixture(scope="module")
def imported(checkpoint) -> Whisper:
    return Whisper.from_openai(checkpoint)


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    return _mel(80, 32)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    tokens = torch.randint(0, 51865, (2, 9), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = SOT
    return tokens


def test_encoder_and_logits_match_openai_whisper(imported, reference, mel, tokens):
    assert not imported.training
    assert imported.config == dict(n_mels=80, n_audio_ctx=32, n_text_ctx=64, vocab_size=51865, dim=64, encoder_depth=2,
                                   decoder_depth=2, num_heads=4, mlp_ratio=4.0, dropout=0.0, drop_path_rate=0.0)
    _assert_parity(imported, reference, mel, tokens)


def test_128_mel_variant_matches_openai_whisper(tmp_path):
    reference = _reference(n_mels=128, n_audio_ctx=50, n_vocab=51866)  # large-v3's front end and vocabulary
    model = Whisper.from_openai(_save(reference, tmp_path / "v3.pt"))
    assert model.config["n_mels"] == 128 and model.config["vocab_size"] == 51866
    tokens = torch.randint(0, 51866, (1, 6), generator=torch.Generator().manual_seed(4))
    _assert_parity(model, reference, _mel(128, 50, batch=1), tokens)


def test_greedy_generate_matches_a_greedy_loop_on_openai_whisper(imported, reference, mel):
    # Reference: argmax over openai/whisper's logits, recomputed in full every step (no KV-cache
    # hooks, no logit filters); ours: `generate` with its KV cache.
    prompt = torch.tensor([[SOT, 5, 6], [SOT, 7, 6]])
    ref = prompt
    with torch.no_grad():
        audio = reference.encoder(mel)
        for _ in range(15):
            ref = torch.cat([ref, reference.decoder(ref, audio)[:, -1].argmax(-1, keepdim=True)], dim=1)
        ours = generate(imported, prompt, 15, Greedy(), context=imported.encode(mel))
    assert len(set(ref[:, 3:].flatten().tolist())) > 3  # not a degenerate repeat-one-token output
    assert torch.equal(ours.tokens, ref)


def test_bare_fp16_state_dict_of_a_published_size_infers_dims(tmp_path):
    # tiny's width, heads and depths (the heads are what shapes cannot tell), shortened windows and
    # vocabulary to stay fast; fp16 as in the published files. Rounding the reference to fp16
    # first keeps the comparison exact.
    reference = _reference(n_audio_ctx=16, n_vocab=300, dim=384, heads=6, layers=(4, 4))
    with torch.no_grad():
        for t in reference.state_dict().values():  # parameters and the sinusoid buffer
            t.copy_(t.half().float())
    path = tmp_path / "bare.pt"
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, path)
    model = Whisper.from_openai(path)
    assert {k: model.config[k] for k in ("dim", "num_heads", "encoder_depth", "decoder_depth", "vocab_size",
                                         "n_audio_ctx", "n_text_ctx")} == dict(
        dim=384, num_heads=6, encoder_depth=4, decoder_depth=4, vocab_size=300, n_audio_ctx=16, n_text_ctx=64)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    tokens = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(2))
    _assert_parity(model, reference, _mel(80, 16), tokens)


def test_bare_state_dict_of_unknown_heads_is_refused(reference, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(reference.state_dict(), path)
    with pytest.raises(WeightsError, match="width 64 with 2\\+2 layers is no published Whisper size") as err:
        Whisper.from_openai(path)
    assert str(path) in str(err.value) and "'dims'" in str(err.value)


# ---------------------------------------------------------------- refusals

def _broken(reference, path: Path, edit) -> Path:
    state = dict(reference.state_dict())
    edit(state)
    return _save(reference, path, state=state)


def test_missing_key_names_file_and_key(reference, tmp_path):
    path = _broken(reference, tmp_path / "a.pt", lambda s: s.pop("decoder.blocks.1.mlp.2.bias"))
    with pytest.raises(WeightsError) as err:
        Whisper.from_openai(path)
    assert str(path) in str(err.value) and "missing keys: decoder.blocks.1.mlp.fc2.bias" in str(err.value)

    path = _broken(reference, tmp_path / "b.pt", lambda s: s.pop("decoder.blocks.0.cross_attn.value.bias"))
    with pytest.raises(WeightsError) as err:
        Whisper.from_openai(path)
    assert str(path) in str(err.value) and "decoder.blocks.0.cross_attn.kv.v.bias" in str(err.value)


def test_unknown_key_and_wrong_shape_are_refused(reference, tmp_path):
    def add_key_bias(s):  # openai's `key` projection has no bias: a checkpoint with one is another model
        s["encoder.blocks.0.attn.key.bias"] = torch.zeros(64)

    path = _broken(reference, tmp_path / "a.pt", add_key_bias)
    with pytest.raises(WeightsError, match="no mapping: encoder.blocks.0.attn.key.bias") as err:
        Whisper.from_openai(path)
    assert str(path) in str(err.value)

    def shrink(s):
        s["encoder.conv1.weight"] = s["encoder.conv1.weight"][:, :40].contiguous()

    path = _broken(reference, tmp_path / "b.pt", shrink)
    with pytest.raises(WeightsError) as err:
        Whisper.from_openai(path)
    assert str(err.value) == (f"{path}: field n_mels=80 disagrees with the weights: stem.conv1.weight is (64, 40, 3) "
                              "in the weights but (64, 80, 3) by the config")


@pytest.mark.parametrize("edit, message", [
    (dict(n_text_state=128), "n_audio_state=64 != n_text_state=128"),
    (dict(n_text_head=8), "n_audio_head=4 != n_text_head=8"),
    (dict(n_vocab=None), "missing: n_vocab"),
    (dict(n_mels=80.0), "positive integers: n_mels=80.0"),
], ids=["widths", "heads", "missing-field", "float"])
def test_dims_mmkit_cannot_express_are_refused(reference, tmp_path, edit, message):
    dims = {k: v for k, v in {**asdict(reference.dims), **edit}.items() if v is not None}
    path = _save(reference, tmp_path / "dims.pt", dims=dims)
    with pytest.raises(WeightsError, match=message) as err:
        Whisper.from_openai(path)
    assert str(path) in str(err.value)


def test_files_that_are_not_checkpoints_are_refused(reference, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(WeightsError, match=f"{text}: not a checkpoint torch.load\\(weights_only=True\\) can read"):
        Whisper.from_openai(text)
    pickled_module = tmp_path / "module.pt"  # torch.save(model): needs unpickling whisper's classes
    torch.save(reference, pickled_module)
    refusal = f"{pickled_module}: holds pickled Python code \\(whisper.model.Whisper\\) that mmkit will not run"
    with pytest.raises(WeightsError, match=refusal):
        Whisper.from_openai(pickled_module)
    marker = tmp_path / "marker"
    evil = _save(reference, tmp_path / "evil.pt", dims={**asdict(reference.dims), "n_mels": Payload(marker)})
    with pytest.raises(WeightsError, match=str(evil)):
        Whisper.from_openai(evil)
    assert not marker.exists()
    lightning = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, lightning)
    with pytest.raises(WeightsError, match=f"{lightning}: not an openai-whisper checkpoint .* keys epoch, state_dict"):
        Whisper.from_openai(lightning)
    with pytest.raises(WeightsError, match="checkpoint file not found: .*nope.pt"):
        Whisper.from_openai(tmp_path / "nope.pt")

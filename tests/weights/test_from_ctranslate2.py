"""CTranslate2 Whisper import (issue 13): a tiny random transformers Whisper is converted with
CTranslate2's own `TransformersConverter` (offline, from a local folder); `whisper_from_ctranslate2`
reads its model.bin without ctranslate2 and the mmkit model gives transformers' encoder output
and logits (float32 export: <= 1e-4; float16 export: the fp16 rounding of the weights only; int8 / int16 exports
read as the values CTranslate2 computes with). Other specs and scales that do not fit are refused by name.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmkit.models.whisper import Whisper
from mmkit.weights import WeightsError
from mmkit.weights.from_ctranslate2 import read_ctranslate2_model, whisper_from_ctranslate2

ct2 = pytest.importorskip("ctranslate2", reason="the reference converter comes with the ctranslate2 package")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from mmkit.cli.bench.transcribe import write_toy_checkpoint

    return write_toy_checkpoint(tmp_path_factory.mktemp("hf"), d_model=32, encoder_layers=1, decoder_layers=2,
                                heads=2, n_text_tokens=300, multilingual=False, n_audio_ctx=50)


def _convert(hf_dir, out, quantization=None, copy_files=None):
    import logging

    logging.getLogger("ctranslate2").setLevel(logging.WARNING)
    converter = ct2.converters.TransformersConverter(str(hf_dir), copy_files=copy_files)
    return converter.convert(str(out), quantization=quantization, force=True)


@pytest.mark.parametrize("quantization,tol", [(None, 1e-4), ("float16", 2e-2)])
def test_ctranslate2_export_matches_transformers(hf_dir, tmp_path, quantization, tol):
    import transformers

    ref = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    converted = whisper_from_ctranslate2(_convert(hf_dir, tmp_path / "ct2", quantization))
    assert converted.config == dict(n_mels=80, n_audio_ctx=50, n_text_ctx=448, vocab_size=ref.config.vocab_size,
                                    dim=32, encoder_depth=1, decoder_depth=2, num_heads=2, mlp_ratio=4.0,
                                    alignment_heads=[[1, 0], [1, 1]])  # the converter's default: the last half
    model = Whisper.from_converted(converted)
    torch.manual_seed(0)
    mel, tokens = torch.randn(2, 80, 100), torch.randint(0, ref.config.vocab_size, (2, 7))
    with torch.inference_mode():
        want_ctx = ref.model.encoder(mel).last_hidden_state
        want = ref(input_features=mel, decoder_input_ids=tokens).logits
        ctx = model.encode(mel)
        got = model(tokens, ctx)
    assert (ctx - want_ctx).abs().max() <= tol * max(1.0, want_ctx.abs().max())
    assert (got - want).abs().max() <= tol * max(1.0, want.abs().max())
    if quantization is None:
        assert torch.equal(model.tok_embed.weight, ref.model.decoder.embed_tokens.weight)


@pytest.mark.parametrize("quantization,step", [("int8", 127), ("int8_float32", 127), ("int16", 2 ** 10)])
def test_quantized_exports_are_read_as_the_values_ctranslate2_computes_with(hf_dir, tmp_path, quantization, step):
    """An int8 export (the folders faster-whisper users fetch) or int16 one: every weight within half a
    quantization step of the float32 export's (int8: a row's largest magnitude / 127; int16: the tensor's / 2^10),
    the unquantized tensors equal, and the model's logits within that rounding of transformers'."""
    import transformers

    exact = whisper_from_ctranslate2(_convert(hf_dir, tmp_path / "fp32")).state
    converted = whisper_from_ctranslate2(_convert(hf_dir, tmp_path / "q", quantization))
    assert converted.state.keys() == exact.keys()
    changed = 0
    for key, want in exact.items():
        got = converted.state[key]
        assert got.dtype == torch.float32 and got.shape == want.shape, key
        if torch.equal(got, want):
            continue
        changed += 1
        rows = want.reshape(want.shape[0], -1) if step == 127 else want.reshape(1, -1)
        bound = rows.abs().amax(1) / step / 2 * (1 + 1e-5) + 1e-7
        assert ((got - want).reshape(rows.shape).abs() <= bound[:, None]).all(), key
    assert changed >= 10  # the projections and convolutions, not the norms and embeddings
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    model = Whisper.from_converted(converted)
    torch.manual_seed(0)
    mel, tokens = torch.randn(2, 80, 100), torch.randint(0, ref.config.vocab_size, (2, 7))
    with torch.inference_mode():
        want, got = ref(input_features=mel, decoder_input_ids=tokens).logits, model(tokens, model.encode(mel))
    assert 0 < (got - want).abs().max() <= 0.05 * want.abs().max()


def test_scales_that_do_not_fit_and_other_files_are_refused(hf_dir, tmp_path):
    from mmkit.weights.from_ctranslate2 import dequantized

    weight = torch.ones(3, 4, dtype=torch.int8)
    for variables, message in (({"a/weight_scale": torch.ones(3)}, "scales no int8 or int16 variable a/weight"),
                               ({"a/weight": weight, "a/weight_scale": torch.ones(2)}, "is not 3 finite positive"),
                               ({"a/weight": weight, "a/weight_scale": torch.tensor([1.0, 0.0, 1.0])},
                                "is not 3 finite positive"),
                               ({"a/weight": weight}, "a/weight is torch.int8 without its scale")):
        with pytest.raises(WeightsError, match=message):
            dequantized(variables, "model.bin")
    with pytest.raises(WeightsError, match="no CTranslate2 model.bin"):
        whisper_from_ctranslate2(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00\x00\x05\x00Whis")
    with pytest.raises(WeightsError, match="not a readable CTranslate2 model.bin"):
        read_ctranslate2_model(tmp_path / "model.bin")
    (tmp_path / "model.bin").write_bytes(b"\x02\x00\x00\x00")
    with pytest.raises(WeightsError, match="binary version 2"):
        whisper_from_ctranslate2(tmp_path)


def test_transcribe_takes_a_ctranslate2_folder_as_its_model(hf_dir, tmp_path):
    """`--model CT2_DIR` (the one resolver, `load_speech_model`): the weights of the Hugging Face
    original exactly (float32 export), the suppressed tokens listed in CTranslate2's config.json and
    English-only by vocabulary size (the folder has no generation_config.json), and `mmkit transcribe` writes the
    same tokens as from the original directory."""
    import json

    import numpy as np
    import soundfile as sf

    from mmkit.cli import main
    from mmkit.inference import load_speech_model

    ct2_dir = Path(_convert(hf_dir, tmp_path / "ct2", copy_files=["tokenizer.json"]))
    assert not (ct2_dir / "generation_config.json").exists()
    model, tok = load_speech_model(ct2_dir)
    ref_model, ref_tok = load_speech_model(hf_dir)
    ours, ref = model.state_dict(), ref_model.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)
    config = json.loads((ct2_dir / "config.json").read_text())
    assert tok.generation_config == {"suppress_tokens": config["suppress_ids"], "is_multilingual": False,
                                     "begin_suppress_tokens": config["suppress_ids_begin"]}  # 1,908 < 51,865 ids
    assert tok.suppress_tokens == ref_tok.suppress_tokens and tok.begin_suppress_tokens == ref_tok.begin_suppress_tokens
    wav = tmp_path / "clip.wav"
    sf.write(str(wav), (0.1 * np.random.default_rng(0).standard_normal(24_000)).astype(np.float32), 16_000)
    tokens = {}
    for name, source in (("hf", hf_dir), ("ct2", ct2_dir)):
        assert main(["transcribe", str(wav), "--model", str(source), "--temperature", "0", "--max-new-tokens", "8",
                     "-f", "json", "-o", str(tmp_path / name), "--quiet"]) == 0
        doc = json.loads((tmp_path / name / "clip.json").read_text())
        tokens[name] = [t for s in doc["segments"] for t in s["tokens"]]
    assert tokens["ct2"] == tokens["hf"] and tokens["hf"]


def test_tensors_ctranslate2_stores_once_read_as_each_of_their_names(hf_dir, tmp_path):
    """CTranslate2's converter stores identical tensors once and names the others aliases of it (zero biases, unit
    gains: a freshly initialised or fine-tuned model has many): each is read under its own name, the tied
    projection apart, and the model is transformers' exactly."""
    import transformers

    ref = transformers.WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    ref.save_pretrained(tmp_path / "hf")
    for name in ("tokenizer.json", "generation_config.json"):
        if (hf_dir / name).is_file():
            (tmp_path / "hf" / name).write_bytes((hf_dir / name).read_bytes())
    out = _convert(tmp_path / "hf", tmp_path / "ct2")
    _, _, aliases = read_ctranslate2_model(Path(out) / "model.bin")
    assert len(aliases) > 10 and aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    model = Whisper.from_converted(whisper_from_ctranslate2(out))
    mel, tokens = torch.randn(1, 80, 100), torch.randint(0, ref.config.vocab_size, (1, 5))
    with torch.inference_mode():
        want = ref(input_features=mel, decoder_input_ids=tokens).logits
        assert (model(tokens, model.encode(mel)) - want).abs().max() <= 1e-4

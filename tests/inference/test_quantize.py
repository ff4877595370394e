"""int8 (`Int8Linear`: int8 weights, per-row int8 activations, for every nn.Linear) and bf16 autocast paths of inference
(issue 13): one quantize function for any module; the Transcriber's encoder and decoder under each
path agree with fp32 within stated tolerances on a tiny random Whisper; `mmkit transcribe
--precision/--quantize` logs its choice once. fp32 stays exact (the default changes nothing).
"""
from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from mmkit.audio import SAMPLE_RATE
from mmkit.core import KVCache
from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.inference import Transcriber, greedy_options, save_speech_checkpoint
from mmkit.inference.quantize import Int8Linear, apply_quantization, describe, quantize_linear_int8
from mmkit.models.whisper import Whisper


def _whisper(vocab_size: int = 40) -> Whisper:
    torch.manual_seed(0)
    return Whisper(n_mels=80, n_audio_ctx=50, n_text_ctx=16, vocab_size=vocab_size, dim=64, encoder_depth=2,
                   decoder_depth=2, num_heads=2).eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_int8_replaces_every_linear_and_nothing_else():
    m = _whisper()
    n_linear = sum(isinstance(x, nn.Linear) for x in m.modules())
    embed = m.tok_embed.weight.clone()
    assert m.head is None  # tied to the embedding
    q = quantize_linear_int8(m)
    assert q is m and n_linear == 2 * 4 + 2 * 7  # encoder: qkv/proj/fc1/fc2; decoder: + cross q/kv/proj
    assert not any(type(x) is nn.Linear for x in q.modules())
    quantized = [x for x in q.modules() if isinstance(x, Int8Linear)]
    assert len(quantized) == n_linear + 1  # + the tied vocabulary projection, untied into an int8 copy
    assert q.head in quantized and q.head.weight().shape == embed.shape
    assert torch.equal(q.tok_embed.weight, embed)  # the embedding itself stays fp32


def _dynamic_reference(m: nn.Module) -> nn.Module:
    """torch's own dynamic int8 quantization (per-channel weights, one activation scale per call)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), {nn.Linear: torch.ao.quantization.
                                                      per_channel_dynamic_qconfig}, dtype=torch.qint8)


def test_int8_weights_are_quantize_dynamics_and_rows_get_their_own_scale():
    """The weights are bit for bit those of torch's quantize_dynamic with per-channel weights. The
    activations get one scale per row: a row alone equals that row inside a batch of rows 10^4 times
    larger, and it equals torch's layer on that row alone up to the grid (torch: the row's own min/max;
    Int8Linear: its max |value| over a grid holding -1, 0 and 1)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 32, bias=False)).eval()
    m[0].weight.data[3] = 0.0  # an all-zero row: the smallest scale (eps), as the observer gives
    ours, ref = quantize_linear_int8(copy.deepcopy(m)), _dynamic_reference(m)
    for a, b in ((ours[0], ref[0]), (ours[2], ref[2])):
        assert isinstance(a, Int8Linear) and (a.in_features, a.out_features) == (b.in_features, b.out_features)
        wb, bb = b._weight_bias()
        assert torch.equal(a.weight().int_repr(), wb.int_repr())
        assert torch.equal(a.weight().q_per_channel_scales(), wb.q_per_channel_scales())
        assert (a.bias is None and bb is None) or torch.equal(a.bias, bb)
    assert "in_features=48, out_features=96, bias=True" in repr(ours[0])
    x = torch.randn(5, 48)
    with torch.no_grad():
        alone = ours(x[:1])
        assert torch.equal(ours(torch.cat([x[:1], 1e4 * x[1:]]))[:1], alone)  # the batch changes nothing
        assert _rel(ref(x[:1]), m(x[:1])) < 0.03 and _rel(alone, m(x[:1])) < 0.03
        # one scale per call: the large rows coarsen the small row's grid
        assert _rel(ref(torch.cat([x[:1], 1e4 * x[1:]]))[:1], m(x[:1])) > 0.3


def test_int8_rows_are_independent_at_any_row_count_and_exact_at_the_grid():
    """Few rows (a decoding step) and many rows take different code paths: the same values. A zero row gives
    the bias; a row whose values sit on the grid (k/63 of its max) loses only the weights' rounding."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 40).eval()
    q = Int8Linear(lin)
    x = torch.randn(300, 64)
    x[5] = 0.0
    with torch.no_grad():
        full = q(x.view(1, -1, 64))[0]
        parts = torch.cat([q(x[i: i + 37]) for i in range(0, len(x), 37)])
        assert torch.equal(full, parts) and torch.equal(full[5], lin.bias.detach())
        # both kernels give these values: fbgemm's fixed-scale one (x86), and the fallback for engines
        # without it, the dynamic kernel with an anchor row
        q.fixed_grid = not q.fixed_grid
        assert torch.equal(q(x), full) and torch.equal(torch.cat([q(x[i: i + 37]) for i in range(0, 300, 37)]), full)
        q.fixed_grid = not q.fixed_grid
        steps = torch.randint(-63, 64, (3, 64)).float()
        steps[:, 0] = 63  # each row's largest |value|: its scale
        on_grid = steps / 63 * torch.tensor([[0.5], [2.0], [7.0]])
        w = q.weight().dequantize()
        assert torch.allclose(q(on_grid), on_grid @ w.T + lin.bias, atol=1e-4)
        assert not torch.equal(w, lin.weight.detach())  # the weights really are int8


def test_int8_linear_is_copyable_and_takes_any_leading_shape():
    torch.manual_seed(0)
    q = Int8Linear(nn.Linear(16, 8, bias=False))
    x = torch.randn(2, 3, 5, 16)
    with torch.no_grad():
        y = q(x)
        assert y.shape == (2, 3, 5, 8) and torch.equal(copy.deepcopy(q)(x), y)
        assert torch.equal(y[1, 2], q(x[1, 2]))


def test_keep_fp32_patterns_leave_those_linears_fp32():
    """The transcriber's choice by measurement: the encoder's attention output projection and fc2 stay
    fp32 (`INT8_KEEP_FP32`), every other Linear of both stacks and the vocabulary projection are int8."""
    from mmkit.inference.transcriber import INT8_KEEP_FP32

    q = quantize_linear_int8(_whisper(), INT8_KEEP_FP32)
    kinds = {name: "int8" if isinstance(m, Int8Linear) else "fp32"
             for name, m in q.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}
    fp32 = sorted(name for name, kind in kinds.items() if kind == "fp32")
    assert fp32 == [f"encoder.blocks.{i}.{layer}" for i in (0, 1) for layer in ("attn.proj", "mlp.fc2")]
    assert kinds["head"] == kinds["encoder.blocks.0.attn.qkv"] == kinds["decoder.blocks.1.mlp.fc2"] == "int8"
    assert len(kinds) == 2 * 4 + 2 * 7 + 1


def test_untied_int8_head_speeds_the_vocabulary_projection_without_touching_fp32():
    """`untie_head` only adds an inference-time head; a model never quantized keeps head None
    (checkpoint keys unchanged), and the int8 head's logits agree with the tied fp32 projection."""
    from mmkit.inference.quantize import untie_head
    from mmkit.models.gpt import GPT

    torch.manual_seed(0)
    gpt = GPT(vocab_size=300, max_len=32, dim=64, depth=2, num_heads=2).eval()
    keys = set(gpt.state_dict())
    fp32 = copy.deepcopy(gpt)
    assert untie_head(gpt) == 1 and untie_head(gpt) == 0  # idempotent
    tokens = torch.randint(0, 300, (2, 9))
    with torch.inference_mode():
        assert torch.allclose(gpt(tokens), fp32(tokens), atol=1e-5)  # untied copy, still fp32
        q = quantize_linear_int8(gpt)
        assert _rel(q(tokens), fp32(tokens)) < 0.05
    assert set(fp32.state_dict()) == keys and fp32.head is None


def test_int8_logits_agree_with_fp32():
    """Tolerance: int8 weights per output channel + per-row int8 activations keep the encoder
    output and the decoder logits within 5% (relative L2) of fp32 on this model; top-1 of the
    logits agrees at >= 90% of positions (random weights make near-ties, real weights agree more)."""
    fp32 = _whisper()
    q = quantize_linear_int8(copy.deepcopy(fp32))
    torch.manual_seed(1)
    mel = torch.randn(3, 80, 100)
    tokens = torch.randint(0, 40, (3, 12))
    with torch.inference_mode():
        ctx_f, ctx_q = fp32.encode(mel), q.encode(mel)
        logits_f, logits_q = fp32(tokens, ctx_f), q(tokens, ctx_q)
    assert _rel(ctx_q, ctx_f) < 0.05, _rel(ctx_q, ctx_f)
    assert _rel(logits_q, logits_f) < 0.05, _rel(logits_q, logits_f)
    assert (logits_q.argmax(-1) == logits_f.argmax(-1)).float().mean() >= 0.9
    assert _rel(logits_q, logits_f) > 0  # the int8 path really ran


def test_bf16_autocast_logits_agree_with_fp32():
    """Tolerance: bf16 (8-bit mantissa) autocast within 3% relative L2 of fp32; top-1 >= 90%. The
    blocks run in bf16, the logits come out fp32 (`output_logits` leaves autocast when decoding).
    Emulated on CPUs without AVX512-BF16/AMX (slow but correct), so the model is tiny."""
    m = _whisper()
    torch.manual_seed(1)
    mel, tokens = torch.randn(2, 80, 100), torch.randint(0, 40, (2, 10))
    with torch.inference_mode():
        ref = m(tokens, m.encode(mel))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(tokens, m.encode(mel))
    assert low.dtype == torch.float32
    assert 0 < _rel(low, ref) < 0.03, _rel(low, ref)
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_quantize_refuses_unknown_kinds_and_non_cpu_models():
    with pytest.raises(ValueError, match="--quantize must be one of"):
        apply_quantization(nn.Linear(2, 2), "int4")
    assert isinstance(apply_quantization(nn.Linear(2, 2), "none"), nn.Linear)
    with pytest.raises(ValueError, match="runs on the CPU; the model is on meta"):
        quantize_linear_int8(nn.Linear(2, 2, device="meta"))
    assert describe("fp32", "int8") == "int8 Linear weights and per-row activations, fp32"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("q_export")
    tok = CharTokenizer.build(["hello world", "good morning"])
    path = save_speech_checkpoint(_whisper(tok.vocab_size), tok, root / "export", {"language": "en"})
    wav = root / "clip.wav"
    sf.write(str(wav), (0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32),
             SAMPLE_RATE)
    return path, wav, tok


def test_transcriber_fp32_default_is_unchanged_and_int8_bf16_decode_close(export):
    """The default (fp32, no quantization) is exactly the plain model; greedy tokens of the int8 and
    bf16 paths match fp32 on >= 70% of positions of this random model (its logits are near-ties)."""
    path, wav, tok = export
    from mmkit.inference import load_speech_model

    def tokens(precision: str, quantize: str) -> list[int]:
        model, t = load_speech_model(path)
        tr = Transcriber(model, t, greedy_options(t), 4, precision, quantize)
        assert tr.precision == precision and tr.quantize == quantize
        return [x for s in next(tr.transcribe_files([wav])).segments for x in s.tokens]

    model, t = load_speech_model(path)
    plain = Transcriber(model, t, greedy_options(t), 4)
    assert plain.precision == "fp32" and plain.quantize == "none" and plain._autocast().__class__.__name__ == "nullcontext"
    ref = [x for s in next(plain.transcribe_files([wav])).segments for x in s.tokens]
    assert len(ref) > 5
    for precision, quantize in (("fp32", "int8"), ("bf16", "none")):
        other = tokens(precision, quantize)
        same = sum(a == b for a, b in zip(ref, other)) / max(len(ref), len(other))
        assert same >= 0.7, (precision, quantize, ref, other)
    model, t = load_speech_model(path)
    auto = Transcriber(model, t, greedy_options(t), 4, "auto", "int8")
    assert auto.precision == "fp32"  # int8 Linear layers take fp32 activations
    with pytest.raises(ValueError, match="int8 Linear layers run on fp32 activations"):
        Transcriber(load_speech_model(path)[0], t, greedy_options(t), 4, "bf16", "int8")


def test_cli_logs_the_choice_once_and_refuses_bad_values(export, tmp_path, caplog, capsys):
    path, wav, _ = export
    from mmkit.cli import main

    with caplog.at_level(logging.INFO, logger="mmkit.inference"):  # the line names the tool
        assert main(["transcribe", str(wav), "--model", str(path), "--quantize", "int8", "--temperature", "0",
                     "-f", "json", "-o", str(tmp_path), "--quiet"]) == 0
    lines = [r.getMessage() for r in caplog.records if "int8" in r.getMessage()]
    assert lines == ["transcriber: int8 Linear weights and per-row activations except encoder.blocks.*.attn.proj, "
                     "encoder.blocks.*.mlp.fc2, fp32"]
    assert json.loads((tmp_path / "clip.json").read_text())["segments"]
    with pytest.raises(SystemExit) as e:
        main(["transcribe", str(wav), "--model", str(path), "--quantize", "int4"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_int8_clip_towers_keep_the_zero_shot_ranking():
    """`mmkit label --quantize int8` quantizes both CLIP towers with the same function; on a tiny
    random CLIP (dim 64) the image-text cosine similarities stay within 10% (relative L2) of fp32 and the
    top-1 text of each image agrees for >= 90% of 32 images."""
    from mmkit.models import CLIP

    torch.manual_seed(0)
    config = dict(visual=dict(embed_dim=32, image_size=32, patch_size=8, dim=64, depth=2, num_heads=2),
                  text=dict(embed_dim=32, max_len=12, dim=64, depth=2, num_heads=2))
    fp32 = CLIP.from_config(config).eval()
    q = quantize_linear_int8(copy.deepcopy(fp32))
    images, texts = torch.randn(32, 3, 32, 32), torch.randint(1, 100, (10, 12))
    with torch.inference_mode():
        ref = fp32.encode_image(images, normalize=True) @ fp32.encode_text(texts, normalize=True).T
        low = q.encode_image(images, normalize=True) @ q.encode_text(texts, normalize=True).T
    assert 0 < _rel(low, ref) < 0.10, _rel(low, ref)  # measured 0.066
    assert (low.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9

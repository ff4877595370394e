"""fp32 decoding on oneDNN's packed weights (`mmkit.inference.packed`, issue 13): the same arithmetic as
`nn.Linear` (float rounding apart), invisible to parameters, state dicts, copies, exports and in-place edits, used
only for fp32 inference on the CPU at a decoding step's rows, and what the decoding tools run (generate-text,
translate, transcribe, the text-to-image generator)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmkit.core import Greedy, generate
from mmkit.inference.packed import MAX_ROWS, PackedLinear, PackedProjection, has_packed_layers, pack_linear, \
    packing_available
from mmkit.inference.quantize import Int8Linear, prepare_arithmetic
from mmkit.models import GPT

pytestmark = [pytest.mark.skipif(not packing_available(), reason="this PyTorch build has no oneDNN fp32 packing"),
              pytest.mark.usefixtures("one_thread")]


def _linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(96, 40, bias=bias).eval()


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=300, max_len=64, dim=64, depth=2, num_heads=4).eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 96), (3, 96), (70, 96), (2, 5, 96), (0, 96), (2, 0, 96), (MAX_ROWS + 1, 96)])
def test_a_packed_layer_computes_what_the_linear_does(bias, shape):
    plain = _linear(bias)
    packed = PackedLinear(plain)
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected, got = plain(x), packed(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    used = 0 < x.numel() <= MAX_ROWS * 96  # more rows: F.linear, and no copy made
    assert (torch.float32 in packed.packed_copy.copies) == used
    assert packed.weight is plain.weight and packed.bias is plain.bias  # the same parameters


def test_rows_get_what_they_get_alone_and_strided_input_is_read_right():
    packed = PackedLinear(_linear())
    x = torch.randn(16, 2 * 96)[:, ::2]  # not contiguous
    with torch.inference_mode():
        whole = packed(x)
        assert torch.equal(whole[5:6], packed(x[5:6].clone()))
        torch.testing.assert_close(whole, _linear()(x), atol=1e-5, rtol=1e-5)


def test_gradients_autocast_other_dtypes_and_devices_compute_as_the_linear():
    plain = _linear()
    packed = PackedLinear(copy.deepcopy(plain))
    x = torch.randn(4, 96, requires_grad=True)
    packed(x).sum().backward()  # with gradients: F.linear, and they reach the parameters
    assert packed.weight.grad is not None and x.grad is not None and not packed.packed_copy.copies
    double = PackedLinear(_linear().double())
    with torch.inference_mode():
        torch.testing.assert_close(double(x.detach().double()), _linear().double()(x.detach().double()))
    meta = PackedLinear(nn.Linear(96, 40, device="meta"))
    assert meta(torch.randn(2, 96, device="meta")).shape == (2, 40)
    assert not double.packed_copy.copies and not meta.packed_copy.copies


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_under_a_bf16_autocast_the_layer_computes_what_autocast_does(rows):
    """bf16 autocast casts the weight to bf16 at every call (GPT-2 small's blocks: 65 ms a decoding step here);
    where oneDNN packs bf16 (native-bf16 CPUs) the layer multiplies a bf16 packed copy instead (15 ms), the same
    bf16 values; elsewhere it is F.linear under autocast."""
    plain = _linear()
    packed = PackedLinear(plain)
    x = torch.randn(rows, 96)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = packed(x), plain(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert (torch.bfloat16 in packed.packed_copy.copies) == packing_available(torch.bfloat16)
    torch.testing.assert_close(got.float(), expected.float(), atol=1e-2, rtol=1e-2)
    if packing_available(torch.bfloat16):  # measured bit-identical on the AMD EPYC
        assert (got.float() - expected.float()).abs().max() <= 2 ** -6 * expected.float().abs().max()


def test_an_edited_weight_is_repacked():
    """The packed copy follows the weight: an in-place edit (an optimizer step, `load_state_dict`, a test's
    widening of a loaded model's parameters) or a new tensor is what the next call multiplies by."""
    plain = _linear()
    packed = PackedLinear(copy.deepcopy(plain))
    x = torch.randn(3, 96)
    with torch.no_grad():
        packed(x)
        first = packed.packed_copy.copies[torch.float32][0]
        packed.weight.mul_(2.0)
        torch.testing.assert_close(packed(x), x @ (2 * plain.weight).T + plain.bias, atol=1e-5, rtol=1e-5)
        assert packed.packed_copy.copies[torch.float32][0] is not first
        other = nn.Linear(96, 40)
        packed.load_state_dict(other.state_dict())
        torch.testing.assert_close(packed(x), other(x), atol=1e-5, rtol=1e-5)
        packed.weight = nn.Parameter(torch.zeros(40, 96))
        torch.testing.assert_close(packed(x), other.bias.expand(3, -1), atol=1e-6, rtol=0)


def test_the_state_dict_copies_and_pickles_are_the_linears():
    import pickle

    plain = _linear()
    packed = PackedLinear(plain)
    x = torch.randn(2, 96)
    with torch.inference_mode():
        packed(x)
    assert list(packed.state_dict()) == ["weight", "bias"]
    for twin in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        assert not twin.packed_copy.copies  # not carried: remade on use
        with torch.inference_mode():
            torch.testing.assert_close(twin(x), plain(x), atol=1e-5, rtol=1e-5)


def test_a_packed_gpt_decodes_as_the_plain_one_and_saves_the_same_tensors(tmp_path):
    plain = _gpt()
    packed = copy.deepcopy(plain)
    assert pack_linear(packed) == 2 * 4 + 1  # qkv, proj, fc1, fc2 a block, + the tied projection
    assert has_packed_layers(packed) and packed.head is None  # the tie stays: one parameter, one key
    assert isinstance(packed.tok_embed.packed_projection, PackedProjection)
    prompt = torch.randint(0, 300, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(packed(prompt), plain(prompt), atol=1e-4, rtol=0)
        assert torch.equal(generate(packed, prompt, 12, Greedy()).tokens, generate(plain, prompt, 12, Greedy()).tokens)
    assert torch.float32 in packed.tok_embed.packed_projection.copies
    state, expected = packed.state_dict(), plain.state_dict()
    assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    assert sum(p.numel() for p in packed.parameters()) == sum(p.numel() for p in plain.parameters())
    packed.save_pretrained(tmp_path / "export")
    again = GPT.from_pretrained(tmp_path / "export").eval()
    with torch.inference_mode():
        torch.testing.assert_close(again(prompt), plain(prompt), atol=0, rtol=0)


def test_the_packed_projection_follows_a_changed_embedding():
    plain = _gpt()
    packed = copy.deepcopy(plain)
    pack_linear(packed)
    prompt = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        packed(prompt)
        for model in (plain, packed):
            model.tok_embed.weight.mul_(1.5)
        torch.testing.assert_close(packed(prompt), plain(prompt), atol=1e-4, rtol=0)
        packed.load_state_dict(_gpt().state_dict())
        torch.testing.assert_close(packed(prompt), _gpt()(prompt), atol=1e-4, rtol=0)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # the projection in fp32 there too
        assert packed(prompt).dtype == torch.float32


def test_training_a_packed_model_trains_every_layer():
    model = _gpt().train()
    pack_linear(model)
    model(torch.randint(0, 300, (1, 4))).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.dim() > 1)


def test_a_model_of_another_dtype_is_left_as_it_is():
    model = _gpt().double()
    assert pack_linear(model) == 0 and not has_packed_layers(model)
    assert getattr(model.tok_embed, "packed_projection", None) is None


@pytest.mark.parametrize("precision, quantize, packed", [("fp32", "none", True), ("auto", "none", True),
                                                          ("bf16", "none", True), ("fp32", "int8", False)])
def test_fp32_and_bf16_on_the_cpu_pack(precision, quantize, packed):
    model = _gpt()
    prepare_arithmetic(model, precision, quantize, "test", pack=True)
    assert has_packed_layers(model) == packed
    untouched = _gpt()
    prepare_arithmetic(untouched, "fp32", "none", "test")  # a tool that does not decode
    assert not has_packed_layers(untouched)


def test_int8_after_fp32_makes_the_packed_layers_int8():
    model = _gpt()
    prepare_arithmetic(model, "fp32", "none", "test", pack=True)
    prepare_arithmetic(model, "fp32", "int8", "test", pack=True)
    assert not has_packed_layers(model)
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 2 * 4 + 1  # the head untied for int8


def test_the_decoding_tools_run_packed(tmp_path):
    from mmkit.inference.text_generation import TextGenerator
    from tests._gpt import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = GPT(vocab_size=tokenizer.vocab_size, max_len=64, dim=32, depth=2, num_heads=4).eval()
    plain = copy.deepcopy(model)
    generator = TextGenerator(model, tokenizer, eos_id=tokenizer.eos_id)
    assert has_packed_layers(generator.model)
    generator.export(tmp_path / "gpt")  # the weights as they are
    again = GPT.from_pretrained(tmp_path / "gpt")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in plain.state_dict().items())


def test_small_weights_stay_plain_where_a_oneDNN_call_costs_more(monkeypatch):
    """Outside the test suite (whose conftest packs every layer) a layer of fewer than 2**18 weights stays plain."""
    monkeypatch.delenv("MMKIT_PACKED_MIN_ELEMENTS")
    model = GPT(vocab_size=1024, max_len=64, dim=256, depth=1, num_heads=4).eval()
    assert pack_linear(model) == 3  # fc1 and fc2 (1024 x 256), the projection (1024 x 256); not qkv, proj
    packed = {name for name, m in model.named_modules() if isinstance(m, PackedLinear)}
    assert packed == {"decoder.blocks.0.mlp.fc1", "decoder.blocks.0.mlp.fc2"}
    assert hasattr(model.tok_embed, "packed_projection")
    assert pack_linear(_gpt()) == 0


@pytest.mark.slow
def test_a_compiled_packed_model_traces_the_plain_product():
    model = _gpt()
    pack_linear(model)
    prompt = torch.randint(0, 300, (1, 6), generator=torch.Generator().manual_seed(3))
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(prompt), _gpt()(prompt), atol=1e-4, rtol=0)

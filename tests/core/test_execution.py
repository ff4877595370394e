"""Activation checkpointing and compiled stacks (`mmkit.core.execution`): the same numbers as the plain stack,
less memory kept for the backward pass, and decoding with a KV cache untouched. Every family's compile and
checkpointing contract is in tests/models/test_contract.py."""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from mmkit.core import Greedy, compile_stacks, generate, set_grad_checkpointing
from mmkit.models import GPT, ViT


def _vit(depth: int = 4, **kw) -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=depth, num_heads=4, **kw)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes autograd keeps for the backward pass of `model(x)`, and the output."""
    kept = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return kept, out


def test_checkpointing_keeps_less_for_the_backward_pass_and_gives_the_same_gradients():
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain, ckpt = _vit().train(), _vit().train()
    assert set_grad_checkpointing(ckpt) == 1
    grads = []
    for model in (plain, ckpt):
        kept, out = _saved_bytes(model, x)
        out.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        if model is plain:
            plain_kept = kept
    assert kept < plain_kept / 4, (kept, plain_kept)  # block inputs only: 4 blocks' activations not kept
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-7, msg=name)


def test_checkpointing_redraws_the_same_dropout_and_drop_path_masks():
    # The recomputation restores the RNG state, so the backward pass sees the forward pass's masks.
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grads = []
    for on in (False, True):
        model = _vit(drop_path_rate=0.3).train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.2
        set_grad_checkpointing(model, on)
        torch.manual_seed(5)
        model(x).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_checkpointing_is_idle_without_gradients_and_switches_off():
    x = torch.randn(2, 3, 32, 32)
    model = _vit().eval()
    with torch.no_grad():
        before = model(x)
        model.set_grad_checkpointing()  # every model's method (timm's name)
        assert model.encoder.grad_checkpointing
        assert torch.equal(model(x), before)
    model.set_grad_checkpointing(False)
    assert not model.encoder.grad_checkpointing


def test_a_model_without_stacks_is_refused_by_name():
    with pytest.raises(ValueError, match="^Linear has no block stack that supports gradient checkpointing$"):
        set_grad_checkpointing(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="^Linear has no block stack to compile$"):
        compile_stacks(nn.Linear(2, 2))


def test_compiled_stacks_keep_parameter_names_and_cached_decoding_stays_eager():
    """A compiled GPT: the same state_dict keys (checkpoints read the same), the full pass compiled, and
    cached greedy decoding (each step a new cache length: eager) gives the uncompiled model's tokens."""
    torch.manual_seed(0)
    model = GPT(vocab_size=50, max_len=32, dim=32, depth=2, num_heads=4).eval()
    keys = list(model.state_dict())
    prompt = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = generate(model, prompt, 8, strategy=Greedy()).tokens
        full = model(expected)
        torch._dynamo.reset()
        compile_stacks(model, backend="eager", fullgraph=True)
        assert list(model.state_dict()) == keys
        torch.testing.assert_close(model(expected), full, rtol=1e-6, atol=1e-6)
        assert torch.equal(generate(model, prompt, 8, strategy=Greedy()).tokens, expected)
        assert torch.equal(generate(model, prompt, 8, strategy=Greedy(), use_cache=False).tokens, expected)


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor on the CPU needs a C++ compiler (g++)")
def test_inductor_compiles_a_stack_to_the_same_outputs():
    """The real code generator (C++ on the CPU), once: a one-block ViT, forward and checkpointed backward."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain, compiled = _vit(depth=1).train(), _vit(depth=1).train()
    torch._dynamo.reset()
    compile_stacks(compiled)  # inductor, the default
    set_grad_checkpointing(compiled)
    outs = []
    for model in (plain, compiled):
        out = model(x)
        out.square().mean().backward()
        outs.append((out, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_a_copy_of_a_compiled_model_runs_its_own_weights():
    """`copy.deepcopy` (EMA, SWA) or pickling of a model with compiled stacks: the copy runs the copy's
    parameters, not the original's (a compiled bound method would have kept the original), and comes back
    uncompiled, as `nn.Module.compile` does (a compiled function does not pickle)."""
    import copy
    import pickle

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = _vit(depth=2).eval()
    torch._dynamo.reset()
    compile_stacks(model, backend="eager")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.encoder.parameters():
            p.mul_(2.0)
        plain = _vit(depth=2).eval()
        plain.load_state_dict(twin.state_dict())
        torch.testing.assert_close(twin(x), plain(x), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(twin(x), model(x))
        again = pickle.loads(pickle.dumps(model))
        assert again.encoder._compiled_run is None and model.encoder._compiled_run is not None
        torch.testing.assert_close(again(x), model(x), rtol=1e-6, atol=1e-6)


def test_layerdrop_training_runs_the_blocks_compiled_one_at_a_time():
    """A compiled stack trained with LayerDrop ran eager: the draws between blocks break one graph of the whole
    stack. Now each block runs compiled (the four blocks of the same shape share graphs, their parameters the
    graphs' inputs), the draws eager between them: the same blocks dropped and the same outputs and gradients as
    the plain stack under the same seed; evaluation still runs the whole stack's graph."""
    from mmkit.core.stack import Encoder

    graphs: list[int] = []

    def counting(gm, example_inputs):  # a backend that counts the graphs it is given and runs them as they are
        graphs.append(len(example_inputs))
        return gm.forward

    torch.manual_seed(0)
    plain = Encoder(dim=16, depth=4, num_heads=2, layerdrop=0.5).train()
    compiled = Encoder(dim=16, depth=4, num_heads=2, layerdrop=0.5).train()
    compiled.load_state_dict(plain.state_dict())
    torch._dynamo.reset()
    compile_stacks(compiled, backend=counting)
    x = torch.randn(2, 5, 16)
    for seed in range(4):  # different blocks dropped each call
        outs = []
        for model in (plain, compiled):
            model.zero_grad()
            torch.manual_seed(seed)
            out = model(x)
            out.square().sum().backward()
            outs.append((out, [p.grad.clone() if p.grad is not None else None for p in model.parameters()]))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-6, atol=1e-6)
        for a, b in zip(outs[0][1], outs[1][1]):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))
    # two block graphs served every block of the four calls: the first block's input needs no gradient, the others' do
    assert len(graphs) == 2, graphs
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), plain.eval()(x), rtol=1e-6, atol=1e-6)
    assert len(graphs) == 3  # the whole stack's graph for evaluation

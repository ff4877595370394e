"""Contract tests over one table of model families (timm's habit: every registered model passes
the same checks): forward shapes, a backward pass with finite gradients for every parameter,
save_pretrained/from_pretrained round trip with identical outputs, and for decoders cached ==
uncached decoding through `mmkit.core.generate`.

Adding a family is one `Family(...)` row in FAMILIES (about five lines):

    Family("bert", lambda: BERT(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4),
           run=lambda m, g: m(_ids(g, 50, 2, 6)),       # the forward output from a seeded generator
           shapes=[(2, 6, 50)],                          # shapes of the output's tensors, in order
           prompt=None),                                 # decoders: (model, g) -> (prompt, context)

Models must be tiny (seconds on CPU), random-init, fp32, and follow PretrainedMixin.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from torch import Tensor, nn

from mmkit.core import BeamSearch, Greedy, generate
from mmkit.models import BERT, CLIP, DALLE, GPT, T5, VQGAN, DalleBart, Seq2Seq, ViT, Whisper

Run = Callable[[nn.Module, torch.Generator], Any]
Prompt = Callable[[nn.Module, torch.Generator], "tuple[Tensor, Tensor | None]"]


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], nn.Module]  # a tiny random-init model
    run: Run  # its forward pass on seeded inputs (call with a fresh generator for equal inputs)
    shapes: list[tuple[int, ...]]  # shapes of the tensors `run` returns, in order
    prompt: Prompt | None = None  # decoders only: (prompt ids, context) for `generate`


def _ids(g: torch.Generator, vocab: int, *shape: int) -> Tensor:
    return torch.randint(0, vocab, shape, generator=g)


def _images(g: torch.Generator, size: int = 32) -> Tensor:
    return torch.randn(2, 3, size, size, generator=g)


def _mel(g: torch.Generator) -> Tensor:
    return torch.randn(2, 8, 20, generator=g)  # (B, n_mels, 2·n_audio_ctx)


_TINY_CLIP = dict(
    visual=dict(embed_dim=16, image_size=32, patch_size=8, dim=32, depth=2, num_heads=4),
    text=dict(embed_dim=16, vocab_size=60, max_len=12, dim=32, depth=2, num_heads=4),
)
_TINY_WHISPER = dict(n_mels=8, n_audio_ctx=10, n_text_ctx=16, vocab_size=50, dim=32, encoder_depth=2,
                     decoder_depth=2, num_heads=4)

def _bert(m: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # hidden states, MLM logits and class logits: every head in the backward pass
    hidden = m(ids, attention_mask=ids.ne(m.pad_id))
    return hidden, m.mlm_logits(hidden), m.classify(ids, attention_mask=ids.ne(m.pad_id))


FAMILIES = [
    Family("vit", lambda: ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, num_heads=4),
           run=lambda m, g: m(_images(g)), shapes=[(2, 5)]),
    Family("vit-map", lambda: ViT(image_size=32, patch_size=8, num_classes=5, dim=32, depth=2, num_heads=4,
                                  class_token=False, global_pool="map"),
           run=lambda m, g: m(_images(g)), shapes=[(2, 5)]),
    Family("clip", lambda: CLIP.from_config(_TINY_CLIP),
           run=lambda m, g: m(_images(g), _ids(g, 60, 3, 12)), shapes=[(2, 16), (3, 16), ()]),
    Family("gpt", lambda: GPT(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4),
           run=lambda m, g: m(_ids(g, 50, 2, 6)), shapes=[(2, 6, 50)],
           prompt=lambda m, g: (_ids(g, 50, 2, 3), None)),
    Family("bert", lambda: BERT(vocab_size=50, max_len=16, dim=32, depth=2, num_heads=4, num_classes=3),
           run=lambda m, g: _bert(m, 1 + _ids(g, 49, 2, 6)), shapes=[(2, 6, 32), (2, 6, 50), (2, 3)]),
    Family("roberta", lambda: BERT(vocab_size=50, max_len=18, type_vocab_size=1, dim=32, depth=2, num_heads=4,
                                   norm_eps=1e-5, positions="roberta", pad_id=1, num_classes=3,
                                   pooler=False, classifier_head="dense_tanh"),
           run=lambda m, g: _bert(m, 2 + _ids(g, 48, 2, 6)), shapes=[(2, 6, 32), (2, 6, 50), (2, 3)]),
    Family("whisper", lambda: Whisper(**_TINY_WHISPER),
           run=lambda m, g: m(_ids(g, 50, 2, 5), context=m.encode(_mel(g))), shapes=[(2, 5, 50)],
           prompt=lambda m, g: (_ids(g, 50, 2, 2), m.encode(_mel(g)))),
    Family("seq2seq", lambda: Seq2Seq(vocab_size=50, max_len=16, dim=32, encoder_depth=2, decoder_depth=2, num_heads=4,
                                      logits_bias=True),
           run=lambda m, g: m(_ids(g, 50, 2, 5), context=m.encode(_ids(g, 50, 2, 7))), shapes=[(2, 5, 50)],
           prompt=lambda m, g: (_ids(g, 50, 2, 1), m.encode(_ids(g, 50, 2, 7)))),
    Family("t5", lambda: T5(vocab_size=50, dim=32, num_heads=4, head_dim=6, mlp_dim=48, encoder_depth=2,
                            decoder_depth=2, num_buckets=8, max_distance=16, feed_forward="gated-gelu_tanh"),
           run=lambda m, g: m(_ids(g, 50, 2, 5), context=m.encode(_ids(g, 50, 2, 7))), shapes=[(2, 5, 50)],
           prompt=lambda m, g: (_ids(g, 50, 2, 1), m.encode(_ids(g, 50, 2, 7)))),
    Family("vqgan", lambda: VQGAN(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), z_channels=8,
                                  codebook_size=16, code_dim=8, norm_groups=4),
           run=lambda m, g: m(torch.rand(2, 3, 16, 16, generator=g)), shapes=[(2, 3, 16, 16), (), (2, 8, 8)]),
    # DALLE's image positions take ids >= text_vocab_size only, which the shared decoder checks'
    # random ids do not respect: its cached == uncached sampling is in tests/models/test_dalle.py.
    Family("dalle", lambda: DALLE(text_vocab_size=20, text_len=4, codebook_size=30, image_grid=2, dim=32, depth=2,
                                  num_heads=4),
           # the logits that predict image codes, over the codebook (the rest are -inf by design)
           run=lambda m, g: m(torch.cat([_ids(g, 20, 2, 4), 20 + _ids(g, 30, 2, 3)], 1))[:, 3:, 20:],
           shapes=[(2, 4, 30)]),
    Family("dalle_bart", lambda: DalleBart(text_vocab_size=50, text_len=8, codebook_size=49, image_vocab_size=50,
                                           image_len=16, dim=32, depth=2, num_heads=4, glu_dim=48, bos_id=49),
           run=lambda m, g: m(_ids(g, 50, 2, 5), context=m.encode(_ids(g, 50, 2, 7)))[..., :49],  # BOS is -inf
           shapes=[(2, 5, 49)], prompt=lambda m, g: (_ids(g, 50, 2, 1), m.encode(_ids(g, 50, 2, 7)))),
]
DECODERS = [f for f in FAMILIES if f.prompt is not None]


def _tensors(out: Any) -> list[Tensor]:
    return [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, Tensor)]


def _outputs(model: nn.Module, family: Family) -> list[Tensor]:
    return _tensors(family.run(model, torch.Generator().manual_seed(0)))


@pytest.fixture(params=FAMILIES, ids=lambda f: f.name)
def family(request) -> Family:
    torch.manual_seed(0)
    return request.param


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_shapes_are_finite(family, mode):
    model = family.build().train(mode == "train")
    out = _outputs(model, family)
    assert [tuple(t.shape) for t in out] == family.shapes
    assert all(torch.isfinite(t).all() for t in out)


def test_backward_reaches_every_parameter_with_finite_grads(family):
    model = family.build().train()
    loss = sum(t.float().square().mean() for t in _outputs(model, family))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_save_pretrained_round_trip_is_exact(family, tmp_path):
    model = family.build().eval()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = type(model).from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    with torch.no_grad():
        for a, b in zip(_outputs(model, family), _outputs(loaded, family), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load_in_one_line(family, tmp_path, bad):
    """Every family's checkpoint, native or imported (`from_converted`): a model with a NaN or inf weight
    answers every input with NaN, which the tools would turn into labels, bare NaN in JSON or garbage text."""
    from mmkit.weights import WeightsError
    from mmkit.weights.native import Converted

    model = family.build().eval()
    name, tensor = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()][-1]
    with torch.no_grad():
        tensor.view(-1)[0] = bad
    directory = model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(WeightsError, match=rf"model.safetensors: non-finite weights \(NaN or infinity\) in {name}$"):
        type(model).from_pretrained(directory)
    with pytest.raises(WeightsError, match=rf"^hf-dir: non-finite weights \(NaN or infinity\) in {name}$"):
        type(model).from_converted(Converted(model.config, model.state_dict(), "hf-dir", False))


@pytest.mark.parametrize("strategy", [Greedy(), BeamSearch(beam_size=2)], ids=["greedy", "beam2"])
@pytest.mark.parametrize("decoder", DECODERS, ids=lambda f: f.name)
def test_cached_decoding_equals_recomputation(decoder, strategy):
    torch.manual_seed(0)
    model = decoder.build().eval()
    with torch.no_grad():
        prompt, context = decoder.prompt(model, torch.Generator().manual_seed(1))
        runs = [generate(model, prompt, 8, strategy=strategy, context=context, use_cache=c) for c in (True, False)]
    cached, full = (r.tokens for r in runs)
    assert cached.shape[1] > prompt.shape[1]
    assert torch.equal(cached, full)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda f: f.name)
def test_beams_share_the_context_of_every_encoder_decoder(decoder):
    """Every family with cross-attention says its rows may share a context (`beams_share_context`, which the
    beam search reads), and a beam search with each row's context once gives the tokens of the same search with
    it repeated to every beam; decoder-only families say nothing."""
    torch.manual_seed(0)
    model = decoder.build().eval()
    crosses = any(getattr(m, "cross", False) for m in model.modules())
    assert bool(getattr(model, "beams_share_context", False)) == crosses
    if not crosses:
        return
    with torch.no_grad():
        prompt, context = decoder.prompt(model, torch.Generator().manual_seed(1))
    shared = generate(model, prompt, 6, BeamSearch(3), context=context)
    model.beams_share_context = False  # this instance only
    repeated = generate(model, prompt, 6, BeamSearch(3), context=context)
    assert torch.equal(shared.tokens, repeated.tokens)
    torch.testing.assert_close(shared.scores, repeated.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda f: f.name)
def test_incremental_logits_equal_the_full_pass(decoder):
    # The cache contract itself: one token at a time with a KVCache gives the full pass's logits.
    from mmkit.core import KVCache

    torch.manual_seed(0)
    model = decoder.build().eval()
    with torch.no_grad():
        prompt, context = decoder.prompt(model, torch.Generator().manual_seed(1))
        tokens = torch.cat([prompt, _ids(torch.Generator().manual_seed(2), 50, prompt.shape[0], 4)], dim=1)
        full = model(tokens, context=context)
        cache = KVCache()
        steps = [model(tokens[:, i : i + 1], context=context if i == 0 else None, cache=cache)
                 for i in range(tokens.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_compiles_whole_and_checkpoints_to_the_same_numbers(family):
    """Every family's block stacks compile without a graph break (`fullgraph=True`) and, with activation
    checkpointing on as well, give the plain model's outputs and gradients (dropout included: the same masks).
    aot_eager is the autograd half of inductor without its code generation (tests/core/test_execution.py runs
    inductor itself); Dynamo's "eager" debug backend would redraw dropout masks under checkpointing."""
    from mmkit.core import compile_stacks, set_grad_checkpointing

    plain = family.build().train()
    model = family.build().train()
    model.load_state_dict(plain.state_dict())
    torch._dynamo.reset()
    assert compile_stacks(model, backend="aot_eager", fullgraph=True) == set_grad_checkpointing(model) > 0
    results = []
    for m in (plain, model):
        torch.manual_seed(1)
        out = _outputs(m, family)
        sum(t.float().square().mean() for t in out).backward()
        results.append((out, [p.grad for p in m.parameters()]))
    (out, grads), (out_c, grads_c) = results
    for a, b in zip(out_c, out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_whole_forward_compiles_without_a_graph_break(family):
    """`torch.compile(model, fullgraph=True)`, embeddings and heads included: input checks that read tensor
    values (id ranges, position overflow) run in eager mode only, where they cost a sync and no graph break."""
    model = family.build().eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        for a, b in zip(_outputs(compiled, family), _outputs(model, family), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)

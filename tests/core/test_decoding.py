"""The decoding loop: cached = uncached for every strategy, beam search optimality on a
hand-made model, logit filters on known distributions."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmkit.core import (
    BeamSearch, Greedy, KVCache, Sampling, SuppressAtBegin, SuppressTokens, TopK, TopP, generate,
)

PROMPT = torch.tensor([[3, 14, 15], [9, 2, 6]])


# --- KV-cached incremental decoding equals full recomputation -------------------------------

def test_cached_logits_step_by_step_equal_full_forward(tiny_lm):
    tokens = torch.randint(0, 37, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = tiny_lm(tokens)
        cache = KVCache()
        steps = [tiny_lm(tokens[:, :4], cache=cache)]  # prompt in one go, then one token per step
        for t in range(4, 12):
            steps.append(tiny_lm(tokens[:, t : t + 1], cache=cache))
            assert cache.length == t + 1
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_equals_reference_argmax_loop(tiny_lm):
    tokens = PROMPT
    with torch.no_grad():
        for _ in range(8):
            tokens = torch.cat([tokens, tiny_lm(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    out = generate(tiny_lm, PROMPT, 8, Greedy())
    assert torch.equal(out.tokens, tokens)
    assert out.lengths.tolist() == [11, 11]


def test_greedy_cached_equals_uncached(tiny_lm):
    a = generate(tiny_lm, PROMPT, 10, Greedy(), use_cache=True)
    b = generate(tiny_lm, PROMPT, 10, Greedy(), use_cache=False)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-5)


def test_greedy_stops_rows_at_eos_and_pads(tiny_lm):
    free = generate(tiny_lm, PROMPT, 10, Greedy(), use_cache=False)
    eos_id = int(free.tokens[1, 4])  # row 1's second new token
    expected = []
    for row in free.tokens[:, 3:].tolist():
        expected.append(3 + (row.index(eos_id) + 1 if eos_id in row else len(row)))
    assert expected[1] == 5
    for use_cache in (True, False):
        out = generate(tiny_lm, PROMPT, 10, Greedy(), eos_id=eos_id, pad_id=36, use_cache=use_cache)
        assert out.lengths.tolist() == expected
        for r, n in enumerate(expected):
            assert torch.equal(out.sequences[r], free.tokens[r, :n])
            assert (out.tokens[r, n:] == 36).all()


@pytest.mark.parametrize("eos", [False, True])
def test_beam_search_cached_equals_uncached(tiny_lm, eos):
    eos_id = int(generate(tiny_lm, PROMPT, 3, use_cache=False).tokens[1, 4]) if eos else None
    kw = dict(strategy=BeamSearch(beam_size=3), eos_id=eos_id, pad_id=0)
    a = generate(tiny_lm, PROMPT, 8, use_cache=True, **kw)
    b = generate(tiny_lm, PROMPT, 8, use_cache=False, **kw)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.lengths, b.lengths)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-5)
    if eos:  # the eos path really ran: some hypothesis finished early
        assert any(s[-1] == eos_id for s in a.sequences)


def test_sampling_with_seeded_generator_cached_equals_uncached(tiny_lm):
    def run(use_cache: bool) -> torch.Tensor:
        strategy = Sampling(temperature=0.9, top_k=10, top_p=0.95, generator=torch.Generator().manual_seed(7))
        return generate(tiny_lm, PROMPT, 12, strategy, use_cache=use_cache).tokens

    a, b = run(True), run(False)
    assert torch.equal(a, b)
    other = generate(tiny_lm, PROMPT, 12, Sampling(generator=torch.Generator().manual_seed(8))).tokens
    assert not torch.equal(a, other)  # the seed matters, so equality above is not vacuous


@pytest.mark.parametrize("strategy", [Greedy(), BeamSearch(beam_size=3)], ids=["greedy", "beam"])
def test_cross_attention_cached_equals_uncached_and_projects_context_once(tiny_seq2seq, strategy):
    model = tiny_seq2seq
    torch.manual_seed(0)
    with torch.no_grad():
        context = model.encoder(torch.randn(2, 9, 32))  # (B, S, dim)
    calls = []
    hooks = [blk.cross_attn.kv.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
             for blk in model.decoder.blocks]
    prompt = torch.tensor([[1], [2]])
    a = generate(model, prompt, 7, strategy, context=context, use_cache=True)
    cached_calls, calls[:] = list(calls), []
    b = generate(model, prompt, 7, strategy, context=context, use_cache=False)
    for h in hooks:
        h.remove()
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-5)
    rows = 2 * (strategy.beam_size if isinstance(strategy, BeamSearch) else 1)
    assert cached_calls == [rows] * len(model.decoder.blocks)  # K/V of the context: once per layer
    assert len(calls) == 7 * len(model.decoder.blocks)  # recomputed every step without a cache


@pytest.mark.parametrize("early_stopping", [None, False], ids=["openai", "ranked"])
@pytest.mark.parametrize("cache", ["new", "given", "none"])
def test_beams_sharing_their_context_decode_as_with_it_repeated(tiny_seq2seq, early_stopping, cache):
    """A model whose cross-attention groups rows (`beams_share_context`) gets each row's context once, not once
    a beam: the same tokens and scores, its keys and values projected and cached for B rows, not B·K; a given
    cache keeps its B rows of them, while the self-attention entries follow the beams."""
    model, K = tiny_seq2seq, 3
    torch.manual_seed(0)
    with torch.no_grad():
        context = model.encoder(torch.randn(2, 9, 32))
    prompt = torch.tensor([[1, 5], [2, 7]])
    calls = []
    hooks = [blk.cross_attn.kv.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
             for blk in model.decoder.blocks]

    def run(share: bool):
        model.beams_share_context = share
        given = None
        if cache == "given":  # the prompt's first token and the context's keys/values cached, as Whisper's
            given = KVCache()
            with torch.no_grad():
                model(prompt[:, :1], context=context, cache=given)
        out = generate(model, prompt, 6, BeamSearch(K, early_stopping=early_stopping), context=context,
                       use_cache=cache != "none", cache=given)
        return out, given

    try:
        (shared, given), shared_calls, calls[:] = run(True), list(calls), []
        repeated, _ = run(False)
    finally:
        for h in hooks:
            h.remove()
        del model.beams_share_context
    assert torch.equal(shared.tokens, repeated.tokens) and torch.equal(shared.lengths, repeated.lengths)
    torch.testing.assert_close(shared.scores, repeated.scores, atol=1e-5, rtol=1e-5)
    assert set(shared_calls) == {2}  # B rows, never B·K
    assert set(calls) == ({2} if cache == "given" else {2 * K})
    if cache == "given":
        assert all(b.cross_attn.keys.shape[0] == 2 and b.self_attn.keys.shape[0] == 2 * K for b in given.layers)


def test_sampled_rows_sharing_their_context_decode_as_with_it_repeated(tiny_seq2seq):
    """Best-of-N (Whisper's fallback): N sampled rows of each context row, the context given once a row to a model
    that groups rows, its cross-attention entries cached once a row: the tokens of the same run with the context
    repeated, also after finished rows are dropped from the cache and the context (`_drop_finished`)."""
    model, n = tiny_seq2seq, 3
    torch.manual_seed(0)
    with torch.no_grad():
        context = model.encoder(torch.randn(2, 9, 32))
    prompt = torch.tensor([[1, 5], [1, 5], [1, 5], [2, 7], [2, 7], [2, 7]])
    eos = int(generate(model, prompt, 4, Greedy(), context=context.repeat_interleave(n, 0)).tokens[0, 3])

    def run(share: bool):
        model.beams_share_context = share
        strategy = Sampling(temperature=1.5, generator=torch.Generator().manual_seed(3))
        cache = KVCache()
        with torch.no_grad():  # the cross-attention entries cached first, as the transcriber's prompt pass does
            model(prompt[::n, :1], context=context, cache=cache)
        rep = torch.arange(2).repeat_interleave(n)
        cache.reorder(rep, cross=not share)
        return generate(model, prompt, 10, strategy, context=context if share else context[rep], eos_id=eos,
                        cache=cache)

    try:
        shared, repeated = run(True), run(False)
    finally:
        del model.beams_share_context
    assert torch.equal(shared.tokens, repeated.tokens) and torch.equal(shared.lengths, repeated.lengths)
    torch.testing.assert_close(shared.scores, repeated.scores, atol=1e-5, rtol=1e-5)
    assert len(set(shared.lengths.tolist())) > 1  # rows finished at different steps: some were dropped early


# --- beam search on a hand-made model --------------------------------------------------------

class PrefixTable:
    """A fake decoder: the next-token distribution is looked up by the generated suffix."""

    def __init__(self, table: dict[tuple[int, ...], list[float]], vocab: int, prompt_len: int) -> None:
        self.table, self.vocab, self.prompt_len = table, vocab, prompt_len

    def probs(self, suffix: tuple[int, ...]) -> list[float]:
        return self.table.get(suffix, [1.0 / self.vocab] * self.vocab)

    def __call__(self, tokens, context=None, cache=None):
        logits = torch.zeros(tokens.shape[0], tokens.shape[1], self.vocab)
        for b, row in enumerate(tokens.tolist()):
            logits[b, -1] = torch.tensor(self.probs(tuple(row[self.prompt_len :]))).log()
        return logits


def _brute_force_best(model: PrefixTable, max_new: int, eos_id: int | None) -> tuple[tuple[int, ...], float]:
    """Best sum-log-prob / length over every sequence that ends in eos or reaches max_new; the length counts
    the tokens before eos (openai/whisper's `MaximumLikelihoodRanker` ranks sequences cut at EOT)."""
    best: tuple[tuple[int, ...], float] = ((), -math.inf)
    for n in range(1, max_new + 1):
        for seq in itertools.product(range(model.vocab), repeat=n):
            if eos_id is not None and eos_id in seq[:-1]:
                continue
            if n < max_new and (eos_id is None or seq[-1] != eos_id):
                continue
            lp = sum(math.log(model.probs(seq[:i])[tok]) for i, tok in enumerate(seq))
            length = max(n - (eos_id is not None and seq[-1] == eos_id), 1)
            if lp / length > best[1]:
                best = (seq, lp / length)
    return best


def test_beam_search_beats_greedy_on_hand_made_model():
    model = PrefixTable({
        (): [0.05, 0.5, 0.4, 0.05],
        (1,): [0.1, 0.32, 0.29, 0.29],  # greedy's first choice leads nowhere good: 0.5 * 0.32 = 0.16
        (2,): [0.02, 0.03, 0.05, 0.9],  # the runner-up leads to 0.4 * 0.9 = 0.36
    }, vocab=4, prompt_len=1)
    prompt = torch.tensor([[0]])
    greedy = generate(model, prompt, 2, Greedy(), use_cache=False)
    beam = generate(model, prompt, 2, BeamSearch(beam_size=2), use_cache=False)
    best_seq, best_score = _brute_force_best(model, 2, None)
    assert best_seq == (2, 3)
    assert beam.tokens[0, 1:].tolist() == [2, 3]
    assert beam.scores[0].item() == pytest.approx(best_score) == pytest.approx(math.log(0.36) / 2)
    assert greedy.tokens[0, 1:].tolist() == [1, 1]
    assert greedy.scores[0].item() == pytest.approx(math.log(0.16))


def test_beam_search_prefers_a_finished_hypothesis_with_better_normalised_score():
    eos = 0
    model = PrefixTable({
        (): [0.02, 0.5, 0.45, 0.03],
        (1,): [0.02, 0.34, 0.33, 0.31],
        (1, 1): [0.1, 0.4, 0.3, 0.2],
        (2,): [0.95, 0.02, 0.02, 0.01],  # [2, eos]: log(0.45 * 0.95) / 1 (eos not counted)
    }, vocab=4, prompt_len=1)
    prompt = torch.tensor([[1]])
    best_seq, best_score = _brute_force_best(model, 3, eos)
    assert best_seq == (2, eos)
    beam = generate(model, prompt, 3, BeamSearch(beam_size=2), eos_id=eos, use_cache=False)
    assert beam.sequences[0].tolist() == [1, 2, eos] and beam.lengths.tolist() == [3]
    assert beam.scores[0].item() == pytest.approx(best_score)
    greedy = generate(model, prompt, 3, Greedy(), eos_id=eos, use_cache=False)
    assert greedy.sequences[0].tolist() == [1, 1, 1, 1]
    assert beam.scores[0].item() == pytest.approx(math.log(0.45 * 0.95))


def test_beam_search_does_not_count_eos_in_the_length():
    """openai's ranker divides by the tokens before EOT: a finished [2, eos] with log p = -1.0 scores -1.0,
    and loses to a 3-token beam with log p = -2.4 (-0.8). Counting EOS (-0.5) would keep the short one."""
    eos = 0
    model = PrefixTable({
        (): [0.02, 0.5, 0.45, 0.03],
        (2,): [math.exp(-1.0) / 0.45, 0.1, 0.05, 0.0325],  # [2, eos]: log p = -1.0
        (1,): [0.02, 0.45, 0.3, 0.23],
        (1, 1): [0.01, math.exp(-2.4) / (0.5 * 0.45), 0.3, 0.2869],  # [1, 1, 1]: log p = -2.4
    }, vocab=4, prompt_len=1)
    prompt = torch.tensor([[1]])
    best_seq, best_score = _brute_force_best(model, 3, eos)
    assert best_seq == (1, 1, 1) and best_score == pytest.approx(-0.8)
    beam = generate(model, prompt, 3, BeamSearch(beam_size=2), eos_id=eos, use_cache=False)
    assert beam.sequences[0].tolist() == [1, 1, 1, 1]
    assert beam.scores[0].item() == pytest.approx(-0.8, abs=1e-4)  # float32 log-softmax


@pytest.mark.parametrize("early_stopping", [None, False, True], ids=["openai", "ranked-false", "ranked-true"])
def test_beam_n_best_rows_are_ranked_hypotheses_headed_by_the_single_best(tiny_lm, early_stopping):
    """`BeamSearch(n_best=n)`: B·n rows, row b's hypotheses at b·n.., best first, the first the n_best=1 result,
    all distinct; cached == uncached."""
    eos_id = int(generate(tiny_lm, PROMPT, 3, use_cache=False).tokens[1, 4])
    kw = dict(eos_id=eos_id, pad_id=0)
    one = generate(tiny_lm, PROMPT, 8, BeamSearch(4, early_stopping=early_stopping), **kw)
    three = generate(tiny_lm, PROMPT, 8, BeamSearch(4, early_stopping=early_stopping, n_best=3), **kw)
    uncached = generate(tiny_lm, PROMPT, 8, BeamSearch(4, early_stopping=early_stopping, n_best=3), use_cache=False,
                        **kw)
    B = PROMPT.shape[0]
    assert three.tokens.shape[0] == len(three.sequences) == three.lengths.shape[0] == three.scores.shape[0] == 3 * B
    assert torch.equal(three.tokens, uncached.tokens)
    for b in range(B):
        rows = three.sequences[3 * b: 3 * b + 3]
        assert torch.equal(rows[0], one.sequences[b]) and float(three.scores[3 * b]) == float(one.scores[b])
        assert len({tuple(r.tolist()) for r in rows}) == 3
        assert all(torch.equal(r[: PROMPT.shape[1]], PROMPT[b]) for r in rows)
        scores = three.scores[3 * b: 3 * b + 3].tolist()
        assert scores == sorted(scores, reverse=True)


def test_beam_n_best_is_at_most_the_beam_size():
    with pytest.raises(ValueError, match=r"n_best must be in \[1, beam_size 4\]"):
        BeamSearch(4, n_best=5)
    with pytest.raises(TypeError, match="n_best must be an integer"):
        BeamSearch(4, n_best=2.0)


def test_a_row_short_of_n_best_hypotheses_fills_them_with_its_prompt_at_minus_infinity():
    """Two tokens, one of them banned: a 2-beam search finds one hypothesis; the second row is the prompt, -inf."""
    model = PrefixTable({}, vocab=2, prompt_len=1)
    ban = lambda tokens, logits: logits.index_fill(1, torch.tensor([1]), float("-inf"))  # noqa: E731
    out = generate(model, torch.tensor([[1]]), 2, BeamSearch(2, early_stopping=False, n_best=2), eos_id=None,
                   pad_id=1, logit_filters=[ban], use_cache=False)
    assert out.sequences[0].tolist() == [1, 0, 0] and out.scores[0].item() == pytest.approx(math.log(0.5))  # 2 lp / 2
    assert out.sequences[1].tolist() == [1] and out.scores[1].item() == -math.inf


# --- logit filters ---------------------------------------------------------------------------

def _kept(logits: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row > -math.inf).flatten().tolist() for row in logits]


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [0.0, -1.0, 2.0, 1.0, -3.0]])
    out = TopK(2)(torch.zeros(2, 1), logits.clone())
    assert _kept(out) == [[1, 4], [2, 3]]
    torch.testing.assert_close(out[0, [1, 4]], logits[0, [1, 4]])  # kept logits unchanged
    assert _kept(TopK(99)(torch.zeros(2, 1), logits.clone())) == [[0, 1, 2, 3, 4]] * 2


@pytest.mark.parametrize("p,kept", [(0.45, [2]), (0.6, [2, 0]), (0.8, [2, 0, 3]), (0.95, [2, 0, 3, 1])])
def test_top_p_keeps_smallest_set_reaching_mass_p(p, kept):
    probs = torch.tensor([[0.25, 0.10, 0.50, 0.15]])  # sorted: 0.5 (id 2), 0.25 (0), 0.15 (3), 0.1 (1)
    out = TopP(p)(torch.zeros(1, 1), probs.log())
    assert _kept(out) == [sorted(kept)]


def test_top_p_per_row():
    logits = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).log()
    assert _kept(TopP(0.7)(torch.zeros(2, 1), logits)) == [[0, 1], [2]]


def test_suppress_tokens():
    logits = torch.zeros(2, 6)
    assert _kept(SuppressTokens([3, 1])(torch.zeros(2, 4), logits)) == [[0, 2, 4, 5]] * 2


def test_suppress_at_begin_only_at_first_generated_position():
    f = SuppressAtBegin([0, 5], begin_index=3)
    assert _kept(f(torch.zeros(1, 3), torch.zeros(1, 6))) == [[1, 2, 3, 4]]
    assert _kept(f(torch.zeros(1, 4), torch.zeros(1, 6))) == [[0, 1, 2, 3, 4, 5]]


def test_filters_are_applied_by_generate(tiny_lm):
    free = generate(tiny_lm, PROMPT, 6, Greedy()).tokens[:, 3:]
    banned = free.unique().tolist()
    out = generate(tiny_lm, PROMPT, 6, Greedy(), logit_filters=[SuppressTokens(banned)]).tokens[:, 3:]
    assert not set(out.flatten().tolist()) & set(banned)
    first = generate(tiny_lm, PROMPT, 6, Greedy(), logit_filters=[SuppressAtBegin(free[:, 0].tolist(), 3)])
    assert not set(first.tokens[:, 3].tolist()) & set(free[:, 0].tolist())


@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 3, 16), (8, 1, 16), (4, 5, 16), (16, 16)])
def test_tied_logits_equal_linear_for_few_and_many_rows(shape):
    import torch.nn.functional as F

    from mmkit.core import tied_logits

    x, weight = torch.randn(*shape), torch.randn(50, 16)
    out = tied_logits(x, weight)
    assert out.shape == (*shape[:-1], 50) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight), rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    tied_logits(x, weight).sum().backward()  # differentiable either way
    torch.testing.assert_close(x.grad, weight.sum(0).expand_as(x), rtol=1e-5, atol=1e-5)


def test_decoding_under_bf16_autocast_takes_fp32_logits():
    """Without gradients (decoding) the vocabulary projection leaves autocast: fp32 logits, so that
    bf16 rounding does not swap near-tied tokens; with gradients (training) autocast decides."""
    import torch.nn.functional as F
    from torch import nn

    from mmkit.core.heads import output_logits

    torch.manual_seed(0)
    emb, head, x = nn.Embedding(50, 16), nn.Linear(16, 50, bias=False), torch.randn(3, 16)
    hidden = x.bfloat16()  # what a bf16-autocast decoder hands the head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            tied, untied = output_logits(hidden, emb, None), output_logits(hidden, emb, head)
        trained = output_logits(x, emb, None)
    assert tied.dtype == untied.dtype == torch.float32 and trained.dtype == torch.bfloat16
    torch.testing.assert_close(tied, F.linear(hidden.float(), emb.weight), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(untied, head(hidden.float()), rtol=1e-5, atol=1e-5)


class _TimestampVocab:
    """Text ids 0-4, <|endoftext|> 5, <|notimestamps|> 6, timestamps 7-16 (0.00 s .. 0.18 s)."""

    eot, no_timestamps, timestamp_begin = 5, 6, 7


def _after(generated: list[int], text_logit: float = 10.0, max_index=None) -> list[list[int]]:
    """Ids TimestampRules leaves open after a 2-token prompt and `generated`."""
    from mmkit.core.filters import TimestampRules

    tokens = torch.tensor([[1, 2, *generated]])
    logits = torch.zeros(1, 17)
    logits[:, :6] = text_logit  # text and EOT likelier than the timestamps: the "timestamps win" rule stays out
    return _kept(TimestampRules(_TimestampVocab(), 2, max_initial_index=2, max_index=max_index)(tokens, logits))


def test_timestamp_rules_pair_timestamps_never_go_back_and_respect_the_window_end():
    assert _after([]) == [[7, 8, 9]]  # first a timestamp, no later than max_initial_index
    assert _after([7, 3]) == [[0, 1, 2, 3, 4, 5, *range(8, 17)]]  # text open: no empty segment, no way back
    assert _after([7, 3, 9]) == [[5, *range(9, 17)]]  # a single timestamp: its pair (>= it) or the end
    assert _after([7, 3, 9, 9]) == [[0, 1, 2, 3, 4, 5]]  # after a pair: text or the end
    assert _after([7, 3], max_index=torch.tensor([3])) == [[0, 1, 2, 3, 4, 5, 8, 9, 10]]  # window ends at 7 + 3
    assert _after([7, 3], text_logit=0.0) == [list(range(8, 17))]  # timestamps' total mass wins: one is forced

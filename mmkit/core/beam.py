"""The two beam searches of the decoding loop (`mmkit.core.generate`).

`ranked_beam_search`: ranked beam search with a length penalty and early stopping, vectorised over
the batch: the rules of GNMT (Wu et al., 2016, §7) and transformers' `generate(num_beams=...)`, which
it reproduces token for token (the seq2seq importers' parity tests check it).

Per step, the 2K best continuations of each row's K beams are ranked; those among the first
K that end in EOS (or reach the length limit) become finished hypotheses, scored by
sum log p / lp(length), and the K best others keep running. A row is done when its K
finished hypotheses cannot be beaten (`early_stopping`: True stops at K finished; False
estimates the best running score at the current length; "never" at the maximum length).
Each row may have its own maximum length (a translation's limit follows its own source): a
row then ends at its limit exactly as it would alone.

`openai_beam_search`: openai/whisper's simpler rule (`BeamSearch(early_stopping=None)`), what
Whisper decoding with a beam size uses.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

_NEG = -1.0e9  # transformers' "impossible" score: finite, so sums stay ordered


def length_norm(n: Tensor | float, alpha: float, form: str) -> Tensor | float:
    """lp(n): n ** alpha ("length", transformers) or ((5 + n) / 6) ** alpha ("gnmt")."""
    return ((5 + n) / 6) ** alpha if form == "gnmt" else n**alpha


def ranked_beam_search(
    next_logprobs: Callable[[Tensor], Tensor],
    reorder: Callable[[Tensor], None],
    prompt: Tensor,
    max_new_tokens: int | Tensor,
    beam_size: int,
    length_penalty: float,
    early_stopping: bool | str,
    penalty_form: str,
    eos_id: int | None,
    pad_id: int,
    n_best: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """
    Args:
        next_logprobs: tokens (B·K, T) -> next-token log-probabilities (B·K, V), float, after
            the logit filters (applied to log-probabilities, as transformers' processors are).
        reorder: called with the (B·K,) source row of every new beam (cache and context follow).
        prompt: (B, T) start tokens.
        max_new_tokens: tokens to generate at most, one for all rows or (B,) per row.
        n_best: finished hypotheses returned per row (<= beam_size), best first: transformers'
            `num_return_sequences` with beams.

    Returns:
        tokens (B·n_best, T_max) right-padded with pad_id (row b's hypotheses at b·n_best ...), lengths
        (B·n_best,), scores (B·n_best,) (normalised). A row that finished fewer than n_best possible hypotheses
        (fewer allowed continuations than beams, say) fills the others with its prompt at score -inf.
    """
    B, P = prompt.shape
    K, device = beam_size, prompt.device
    limits = torch.as_tensor(max_new_tokens, device=device).expand(B)  # (B,)
    steps = int(limits.max())
    running = prompt.repeat_interleave(K, dim=0).view(B, K, P)
    run_lp = torch.zeros(B, K, device=device)
    run_lp[:, 1:] = _NEG  # identical beams at the start: expand only the first
    done_seq = torch.full((B, K, P + steps), pad_id, dtype=prompt.dtype, device=device)
    done_len = torch.full((B, K), P, device=device)
    done_score = torch.full((B, K), _NEG, device=device)
    done_any = torch.zeros(B, K, dtype=torch.bool, device=device)
    # A row with nothing to generate is finished before the first step (whose limit check comes after
    # a token): its prompt is its hypothesis, with score 0 (no generated token), not padding at _NEG.
    empty = limits == 0
    done_seq[:, 0, :P] = torch.where(empty[:, None], prompt, done_seq[:, 0, :P])
    done_score[:, 0] = torch.where(empty, 0.0, _NEG)
    done_any[:, 0] = empty
    open_rows = ~empty
    top_k_mask = torch.arange(2 * K, device=device) < K
    offsets = (torch.arange(B, device=device) * K)[:, None]
    for step in range(steps):
        logp = next_logprobs(running.view(B * K, -1))
        V = logp.shape[-1]
        cand = (logp.view(B, K, V) + run_lp[..., None]).view(B, K * V)
        top_lp, top_idx = cand.topk(2 * K, dim=1)  # 2K: at most K of them end here
        src, tok = top_idx // V, top_idx % V  # (B, 2K)
        seqs = torch.cat([running.gather(1, src[..., None].expand(-1, -1, running.shape[2])), tok[..., None]], 2)
        last, at_limit = step == steps - 1, limits == step + 1  # (B,): rows making their last token
        ends = (tok == eos_id) if eos_id is not None else torch.zeros_like(tok, dtype=torch.bool)
        ends = ends | at_limit[:, None]
        # finished hypotheses: only among the first K candidates, while the row may still improve
        n_new = step + 1
        score = top_lp / length_norm(float(n_new), length_penalty, penalty_form)
        full = done_any.all(dim=1, keepdim=True) & (early_stopping is True)
        take = ends & top_k_mask & open_rows[:, None] & ~full
        score = torch.where(take, score, torch.full_like(score, _NEG))
        padded = torch.nn.functional.pad(seqs, (0, done_seq.shape[2] - seqs.shape[2]), value=pad_id)
        merged = torch.cat([done_score, score], dim=1).topk(K, dim=1).indices  # (B, K)
        done_seq = torch.cat([done_seq, padded], 1).gather(1, merged[..., None].expand(-1, -1, done_seq.shape[2]))
        done_len = torch.cat([done_len, torch.full_like(done_len, P + n_new).repeat(1, 2)], 1).gather(1, merged)
        done_any = torch.cat([done_any, take], 1).gather(1, merged)
        done_score = torch.cat([done_score, score], 1).gather(1, merged)
        # running beams: the K best candidates that did not end
        keep = (top_lp + ends.float() * _NEG).topk(K, dim=1).indices  # (B, K)
        running, run_lp = seqs.gather(1, keep[..., None].expand(-1, -1, seqs.shape[2])), top_lp.gather(1, keep)
        if last:
            break
        reorder((src.gather(1, keep) + offsets).view(-1))
        open_rows &= ~at_limit & _may_improve(run_lp, done_score, done_any, n_new, limits, length_penalty,
                                              early_stopping, penalty_form)
        if not bool(open_rows.any()) or bool(ends.all()) or (early_stopping is True and bool(done_any.all())):
            break
    done_seq, done_len = done_seq[:, :n_best], done_len[:, :n_best]  # sorted: the merge's top-K is
    # a hypothesis descends from a possible beam by possible tokens (an impossible one scores about _NEG or -inf)
    found = done_any[:, :n_best] & (done_score[:, :n_best] > _NEG / 2)
    done_seq = torch.where(found[..., None], done_seq, pad_id)
    done_seq[:, :, :P] = torch.where(found[..., None], done_seq[:, :, :P], prompt[:, None])
    done_len = torch.where(found, done_len, P)
    done_score = torch.where(found, done_score[:, :n_best], float("-inf"))
    width = int(done_len.max())
    return done_seq[:, :, :width].reshape(B * n_best, width), done_len.reshape(-1), done_score.reshape(-1)


def _may_improve(run_lp: Tensor, done_score: Tensor, done_any: Tensor, n_new: int, max_new: Tensor, alpha: float,
                 early_stopping: bool | str, form: str) -> Tensor:
    """(B,) rows whose best running beam might still beat their worst finished hypothesis (with
    early_stopping=True a row also closes once it holds K finished hypotheses, see the caller)."""
    n = max_new.float() if early_stopping == "never" and alpha > 0 else float(n_new)
    best = run_lp[:, 0] / length_norm(n, alpha, form)
    worst = torch.where(done_any, done_score.min(dim=1, keepdim=True).values, torch.full_like(done_score, _NEG))
    return (best[:, None] > worst).any(dim=1)


def openai_beam_search(
    next_logits: Callable[[Tensor], Tensor],
    reorder: Callable[[Tensor], None],
    prompt: Tensor,
    max_new_tokens: int,
    beam_size: int,
    length_penalty: float,
    eos_id: int | None,
    n_best: int = 1,
) -> tuple[list[Tensor], Tensor]:
    """Beam search as openai/whisper's `BeamSearchDecoder`: per step each row keeps the K best
    continuations that do not end and collects those that end in EOS, until it holds K finished
    ones; the best by sum log p / length ** length_penalty wins (rows short of K finished let
    their live beams compete). `length` counts the generated tokens before EOS, not EOS itself:
    openai's `MaximumLikelihoodRanker` ranks the sequences cut at EOS, and counting it would
    favour short hypotheses.

    Args:
        next_logits: tokens (B·K, T) -> next-token logits (B·K, V), float, after the logit filters.
        reorder: called with the (B·K,) source row of every new beam (the cache follows).
        prompt: (B, T) start tokens.

    Returns:
        the `n_best` best sequences of each row, best first (prompt included, EOS too if it ended; row b's
        at b·n_best ...), and their (B·n_best,) scores.
    """
    B, T = prompt.shape
    K, device = beam_size, prompt.device
    tokens = prompt.repeat_interleave(K, dim=0)  # (B*K, T)
    sum_lp = torch.zeros(B, K, device=device)
    sum_lp[:, 1:] = float("-inf")  # identical beams at start: expand only the first
    hyps: list[list[tuple[float, Tensor]]] = [[] for _ in range(B)]

    def score(lp: float, n_new: int) -> float:
        return lp / max(n_new, 1) ** length_penalty

    for step in range(max_new_tokens):
        logits = next_logits(tokens)
        V = logits.shape[-1]
        cand = (sum_lp[..., None] + logits.log_softmax(dim=-1).view(B, K, V)).view(B, K * V)
        top_lp, top_idx = cand.topk(2 * K, dim=1)  # 2K: at most K can end in EOS
        rows, new_tok, new_lp = [], [], []
        for b in range(B):
            kept = 0
            for lp, idx in zip(top_lp[b].tolist(), top_idx[b].tolist()):
                src, tok = b * K + idx // V, idx % V
                if eos_id is not None and tok == eos_id:
                    if len(hyps[b]) < K and lp > float("-inf"):
                        seq = torch.cat([tokens[src], tokens.new_tensor([tok])])
                        hyps[b].append((score(lp, step), seq))  # step tokens before EOS
                    continue
                rows.append(src), new_tok.append(tok), new_lp.append(lp)
                kept += 1
                if kept == K:
                    break
        index = torch.tensor(rows, device=device)
        tokens = torch.cat([tokens.index_select(0, index), torch.tensor(new_tok, device=device)[:, None]], dim=1)
        sum_lp = torch.tensor(new_lp, device=device).view(B, K)
        reorder(index)
        if all(len(h) >= K for h in hyps):
            break
    n_new = tokens.shape[1] - T
    for b in range(B):  # rows without K finished hypotheses compete with their live beams
        for k in range(K):
            if len(hyps[b]) < K or eos_id is None:
                hyps[b].append((score(float(sum_lp[b, k]), n_new), tokens[b * K + k]))
    # sorted() is stable: among equal scores the first found ranks first, as max() picks it
    best = [hyp for h in hyps for hyp in sorted(h, key=lambda s: -s[0])[:n_best]]
    return [seq for _, seq in best], torch.tensor([sc for sc, _ in best], device=device)

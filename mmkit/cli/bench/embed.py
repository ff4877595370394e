"""Sentence-embedding speed: `mmkit embed`'s path (`mmkit.inference.embed.Embedder`: length-sorted
batches of near-equal lengths, no mask when a batch is all one length) against a plain transformers loop
(`BertModel`, SDPA attention, batches in input order padded to their longest text, mean pooling over the
mask, L2 normalisation) on the same weights and the same token ids; the fp32 embeddings are checked equal.
mmkit's int8 path (`embed --quantize int8`) runs beside them against the same fp32 reference, with the
cosine similarity of its vectors to the reference's (mean, min) and the share of texts whose nearest
neighbour among the others is the same. The texts are real sentences by default: a seeded sample of the
WordNet recipe's definitions and usage examples (Debian wordnet-base; 3-80 tokens, 20 on average).
All run in one process in interleaved rounds whose order alternates; figures are medians. Never asserted
on: a script that prints ratios.

    mmkit bench embed                              # the recipe's and BERT-base's shapes, random weights
    mmkit bench embed --sentences 2000 --batch-size 64 --texts fortunes
"""
from __future__ import annotations

import copy
import random
import statistics
import sys
from typing import Any, Sequence

import torch

from mmkit.cli.bench.common import (
    add_precision_option, add_run_options, add_sizes_option, bench_precisions, interleaved, reduced_path_lines,
    torch_threads, write_json,
)
from mmkit.cli.options import Parser, at_least

TEXTS = ("wordnet", "fortunes", "synthetic")

# A fixed word list for the synthetic sentences: lengths vary as in real text (3 to 60 words).
_WORDS = ("the a of to and in is was for on with as by at from that this an be are it which or one new "
          "first time year people way day man thing woman life child world school state family student group "
          "country problem hand part place case week company system program question work government number "
          "night point home water room mother area money story fact month lot right study book eye job word").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(int(rng.triangular(3, 60, 8)))) + "." for _ in range(n)]


def bench_texts(kind: str, n: int) -> list[str]:
    """`n` texts: a seeded sample of an embedded corpus ("wordnet": the recipe's definitions and usage
    examples; "fortunes": quotations and jokes, often several sentences) or "synthetic" word sequences
    (3-60 words from a fixed list; no package needed)."""
    from mmkit.data.corpora import corpus_texts

    if kind not in TEXTS:
        raise ValueError(f"unknown texts {kind!r}; use one of {', '.join(TEXTS)}")
    if kind == "synthetic":
        return sentences(n)
    texts = corpus_texts(kind)
    return random.Random(0).sample(texts, min(n, len(texts)))


def _agreement(vectors: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Cosine similarity of unit vectors to the reference's (mean, min), and the share of texts whose
    nearest other text is the same in both."""
    cosine = (vectors * reference).sum(-1)
    nearest = []
    for v in (vectors, reference):
        sims = v @ v.T
        nearest.append(sims.fill_diagonal_(float("-inf")).argmax(-1))
    return dict(cosine_mean=float(cosine.mean()), cosine_min=float(cosine.min()),
                neighbour=float((nearest[0] == nearest[1]).float().mean()))


def _reference_loop(ref: torch.nn.Module, ids: list[list[int]], batch_size: int, pad_id: int) -> torch.Tensor:
    out = []
    for start in range(0, len(ids), batch_size):
        rows = ids[start : start + batch_size]
        T = max(map(len, rows))
        batch = torch.tensor([r + [pad_id] * (T - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
        hidden = ref(input_ids=batch, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(out)


def run_embed_bench(dim: int = 768, depth: int = 12, num_heads: int = 12, vocab_size: int = 30522,
                    n_sentences: int = 512, batch_size: int = 32, max_len: int = 128, rounds: int = 3,
                    warmup: int = 1, threads: int | None = None, texts: str = "wordnet",
                    int8: bool = True, bf16: bool = False) -> dict[str, Any]:
    """Sentences/s of both implementations (and of mmkit int8, mmkit bf16) on random weights of the given shape.

    Returns:
        `sentences_per_s` per implementation, `ratio` (mmkit / transformers, > 1: mmkit faster),
        `max_abs_diff` of the fp32 embeddings, with int8 `int8_ratio` and `int8_agreement` (`_agreement`,
        against transformers' fp32), with bf16 `bf16_ratio` and `bf16_agreement`, the raw `seconds` and
        the settings.
    """
    from transformers import BertConfig, BertModel

    from mmkit.data.bert_tokenizer import EncoderTokenizer
    from mmkit.inference.embed import Embedder
    from mmkit.inference.encoder import LoadedEncoder
    from mmkit.models import BERT

    if min(rounds, batch_size, n_sentences) < 1 or warmup < 0:
        raise ValueError("rounds, batch size and sentences must be >= 1 and warmup >= 0")
    with torch_threads(threads):
        kind, texts = texts, bench_texts(texts, n_sentences)
        tok = EncoderTokenizer.train(texts, vocab_size=min(vocab_size, 2000))
        torch.manual_seed(0)
        ref = BertModel(BertConfig(vocab_size=vocab_size, hidden_size=dim, num_hidden_layers=depth,
                                   num_attention_heads=num_heads, intermediate_size=4 * dim,
                                   max_position_embeddings=max_len, attn_implementation="sdpa"),
                        add_pooling_layer=False).eval()
        embedder = Embedder(LoadedEncoder(BERT.from_hf(ref).eval(), tok), batch_size)
        ids, _ = embedder.tokenize(texts)
        # Both sides tokenize (the same tokenizer, so the same ids) inside the timed call.
        runs = {"mmkit": lambda: torch.from_numpy(embedder.embed(texts)),
                "transformers": lambda: _reference_loop(ref, embedder.tokenize(texts)[0], batch_size, tok.pad_id)}
        if int8:
            quantized = Embedder(LoadedEncoder(copy.deepcopy(embedder.encoder.model), tok), batch_size, "int8")
            runs["mmkit int8"] = lambda: torch.from_numpy(quantized.embed(texts))
        if bf16:  # the same weights under bf16 autocast (emulated, slowly, where the CPU lacks it)
            low = Embedder(embedder.encoder, batch_size, precision="bf16")
            runs["mmkit bf16"] = lambda: torch.from_numpy(low.embed(texts))
        seconds, outputs = interleaved(runs, rounds, warmup)
        rate = {k: len(texts) / statistics.median(v) for k, v in seconds.items()}
        extra: dict[str, Any] = {}
        for path in [k for k, on in (("int8", int8), ("bf16", bf16)) if on]:
            extra[f"{path}_ratio"] = rate[f"mmkit {path}"] / rate["transformers"]
            extra[f"{path}_agreement"] = _agreement(outputs[f"mmkit {path}"], outputs["transformers"])
        return dict(**extra, model=f"random BERT dim {dim} depth {depth} vocab {vocab_size}", batch_size=batch_size,
                    texts=kind, sentences=len(texts), mean_tokens=sum(map(len, ids)) / len(ids), rounds=rounds,
                    threads=torch.get_num_threads(), sentences_per_s=rate,
                    ratio=rate["mmkit"] / rate["transformers"], seconds=seconds,
                    max_abs_diff=float((outputs["mmkit"] - outputs["transformers"]).abs().max()))


def format_report(result: dict[str, Any]) -> str:
    r = result
    reduced = reduced_path_lines(
        r, "sentences_per_s", "sentences/s", lambda kind, option: f"mmkit embed {option:<19}",
        lambda a: f"cosine mean {a['cosine_mean']:.4f}, min {a['cosine_min']:.4f}; "
                  f"{100 * a['neighbour']:.1f}% same nearest neighbour")
    return "\n".join([
        f"Sentence embeddings: {r['model']}, {r['sentences']} {r['texts']} sentences ({r['mean_tokens']:.1f} tokens "
        "on average), "
        f"batch {r['batch_size']}, {r['threads']} threads, median of {r['rounds']}",
        f"  mmkit embed (sorted batches)    {r['sentences_per_s']['mmkit']:8.1f} sentences/s",
        f"  transformers loop + mean pool   {r['sentences_per_s']['transformers']:8.1f} sentences/s",
        f"  mmkit / transformers            {r['ratio']:8.2f}x   (goal >= 1.5x)",
        f"  max |difference| of embeddings  {r['max_abs_diff']:8.1e}",
    ] + reduced)


# Named shapes (dim, depth, num_heads, vocab_size): the WordNet recipe's model and BERT-base.
SIZES = {"wordnet": (128, 3, 4, 8000), "bert-base": (768, 12, 12, 30522)}


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="mmkit bench embed", description=__doc__.split("\n\n")[0])
    add_sizes_option(p, SIZES)
    p.add_argument("--sentences", type=at_least(1), default=512)
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--texts", choices=TEXTS, default="wordnet",
                   help="wordnet (default: the recipe's sentences), fortunes or synthetic (no package needed)")
    p.add_argument("--no-int8", action="store_true", help="no mmkit --quantize int8 row")
    add_precision_option(p)
    add_run_options(p)
    args = p.parse_args(argv)
    bf16 = "bf16" in bench_precisions(args.precision)
    results = []
    try:
        for size in args.sizes:
            dim, depth, heads, vocab = SIZES[size]
            results.append(run_embed_bench(dim, depth, heads, vocab, args.sentences, args.batch_size, 128,
                                           args.rounds, args.warmup, args.threads, args.texts, not args.no_int8,
                                           bf16))
            print(format_report(results[-1]), flush=True)
    except (ValueError, OSError) as e:
        print(f"mmkit bench embed: error: {e}", file=sys.stderr)
        return 2
    write_json(args.json, results)
    return 0

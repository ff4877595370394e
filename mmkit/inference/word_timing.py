"""Word-level timestamps, as openai/whisper's `timing.py` (`transcribe(word_timestamps=True)`): the decoder reads
a window's text again without timestamps, the cross-attention of its alignment heads (Radford et al., 2022; heads
chosen per checkpoint) is normalised per frame and median-filtered, dynamic time warping aligns tokens to 20 ms
frames, and tokens are grouped into words with punctuation merged; openai's duration heuristics then clip words
at pauses and sentence ends. Every step, tie-break and rounding is openai's, so the words are its words.
"""
from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.audio import HOP_LENGTH, SAMPLE_RATE
from mmkit.core import KVCache
from mmkit.core.attention import attention_maps

PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # openai's defaults: merged into the next word
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # ... into the previous word
MEDFILT_WIDTH = 7  # attention frames
TOKENS_PER_SECOND = SAMPLE_RATE // (2 * HOP_LENGTH)  # 50 alignment frames a second (20 ms each)
# languages written without spaces: words are split wherever the tokens decode to whole characters
UNICODE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class WordTiming:
    """One word of a window: its text, tokens, times in seconds from the window's start, mean token probability."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def alignment_heads(model: nn.Module) -> list[tuple[int, int]]:
    """(decoder layer, head) pairs whose cross-attention aligns text to audio: the model's own
    (`Whisper.alignment_heads`, from the checkpoint) or openai's default, every head of the last half of
    the decoder layers; sorted, the order of openai's sparse mask."""
    heads = getattr(model, "alignment_heads", None)
    if heads is None:
        depth, n_heads = len(model.decoder.blocks), model.decoder.blocks[0].cross_attn.num_heads
        heads = [(layer, h) for layer in range(depth // 2, depth) for h in range(n_heads)]
    return sorted((int(layer), int(h)) for layer, h in heads)


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding `width` (odd) along the last dimension, reflect-padded; inputs no longer than
    width // 2 come back unfiltered (openai's `median_filter`)."""
    pad = width // 2
    if x.shape[-1] <= pad:  # reflect padding needs more frames than it adds
        return x
    padded = F.pad(x, (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).sort()[0][..., pad]


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost monotonic path through an (N, M) cost matrix: (row indices, column indices) along it.
    The costs accumulate in float32 and ties go right, then down, as openai's `dtw_cpu`; computed one
    anti-diagonal at a time (each cell needs only the two diagonals before it)."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    cost[0, 0] = 0
    trace = np.full((n + 1, m + 1), -1, np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[i, j] = x[i - 1, j - 1] + np.choose(t, [c0, c1, c2])  # float64 sum, stored float32 as openai's
        trace[i, j] = t
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        i, j = (i - 1, j - 1) if t == 0 else (i - 1, j) if t == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def split_on_unicode(tok: Any, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Pieces of `tokens` that each decode to whole characters (a token that ends inside a character's bytes
    joins the next ones)."""
    full, replacement = tok.decode_with_timestamps(tokens), "\ufffd"
    words: list[str] = []
    word_tokens: list[list[int]] = []
    current: list[int] = []
    offset = 0
    for t in tokens:
        current.append(t)
        decoded = tok.decode_with_timestamps(current)
        at = offset + decoded.index(replacement) if replacement in decoded else -1
        if at < 0 or (at < len(full) and full[at] == replacement):  # whole, or the text itself has a U+FFFD there
            words.append(decoded)
            word_tokens.append(current)
            current = []
            offset += len(decoded)
    return words, word_tokens


def split_to_words(tok: Any, tokens: Sequence[int], language: str | None) -> tuple[list[str], list[list[int]]]:
    """Words of `tokens` and their tokens (openai's `split_to_word_tokens`): at spaces and punctuation, or,
    for languages written without spaces, at every whole character; special tokens are words of their own."""
    pieces, piece_tokens = split_on_unicode(tok, tokens)
    if language in UNICODE_LANGUAGES:
        return pieces, piece_tokens
    words: list[str] = []
    word_tokens: list[list[int]] = []
    for piece, ids in zip(pieces, piece_tokens):
        # "" is in string.punctuation (a substring test): blank pieces stand alone, as openai's do
        if ids[0] >= tok.eot or piece.startswith(" ") or piece.strip() in string.punctuation or not words:
            words.append(piece)
            word_tokens.append(ids)
        else:
            words[-1] += piece
            word_tokens[-1].extend(ids)
    return words, word_tokens


@torch.no_grad()
def find_alignment(model: nn.Module, tok: Any, sot_sequence: list[int], text_tokens: list[int], mel: Tensor,
                   num_frames: int, language: str | None,
                   autocast: Callable[[], ContextManager] | None = None) -> list[WordTiming]:
    """Words of one window's text tokens with times from the window's start (openai's `find_alignment`): its
    features encoded, then `align_windows`.

    Args:
        sot_sequence: <|startoftranscript|> [<|lang|> <|task|>], without <|notimestamps|>.
        mel: (n_mels, 2·n_audio_ctx) the window's features, as decoded.
        num_frames: Mel frames of audio in the window: attention beyond them (the padding) is not read.
    """
    if not text_tokens:
        return []
    with _precision(autocast, mel.device):
        context = model.encode(mel[None].to(next(model.parameters()).dtype))
    return align_windows(model, tok, [sot_sequence], [text_tokens], context, [num_frames], [language], autocast)[0]


@torch.no_grad()
def align_windows(model: nn.Module, tok: Any, sot_sequences: Sequence[list[int]], texts: Sequence[list[int]],
                  context: Tensor, num_frames: Sequence[int], languages: Sequence[str | None],
                  autocast: Callable[[], ContextManager] | None = None,
                  cache: KVCache | None = None) -> list[list[WordTiming]]:
    """Words of B windows' text tokens, each with times from its window's start: openai's `find_alignment`, its
    decoder pass batched. The decoder reads every window's [sot sequence, <|notimestamps|>, text, <|endoftext|>]
    once, right-padded to the longest; the rest (normalisation, median filter, DTW, word split) is per window.

    Args:
        sot_sequences: per window, <|startoftranscript|> [<|lang|> <|task|>]: one length for all.
        texts: per window, its decoded text tokens (no timestamps); an empty one gets no words.
        context: (B, positions, dim) the windows' encoder output, as decoded (positions: n_audio_ctx, or fewer
            with `audio_context`, at least num_frames // 2).
        num_frames: per window, Mel frames of audio in it: attention beyond them (the padding) is not read.
        languages: per window, its language code (None: English-only checkpoints), for the word split.
        cache: a `KVCache` holding the B windows' cross-attention keys/values (decoding's: its self-attention
            prefix is left out), so that the forward does not project them again; None: computed here.
    """
    out: list[list[WordTiming]] = [[] for _ in texts]
    rows = [b for b, text in enumerate(texts) if text]
    if not rows:
        return out
    n_sot = len(sot_sequences[rows[0]])
    sequences = [[*sot_sequences[b], tok.no_timestamps, *texts[b], tok.eot] for b in rows]
    width = max(len(s) for s in sequences)
    # Right padding needs no mask: in a causal decoder no real position attends to a later one, so each row's
    # logits and cross-attention are its own (equal to the one-window pass); the padded rows are cut off below,
    # before the normalisation over tokens.
    tokens = torch.tensor([s + [tok.eot] * (width - len(s)) for s in sequences], device=context.device)
    heads = alignment_heads(model)
    layers = sorted({layer for layer, _ in heads})
    # only the alignment layers' maps are recorded: every layer's would hold B·layers·heads·T·positions floats
    watched = nn.ModuleList(model.decoder.blocks[layer].cross_attn for layer in layers)
    index = torch.tensor(rows, device=context.device)
    cache = cache.fork(index, keep_prefix=False) if cache is not None else None
    with _precision(autocast, context.device):
        # the hooks project the alignment layers' keys again from the context (`attention_weights`), the forward
        # reads the cache's
        logits, maps = attention_maps(watched, lambda: model(tokens, context[index], cache), cross=True)
    weights = torch.stack([maps[layers.index(layer)][:, h] for layer, h in heads], dim=1)  # (B', A, T, S)
    for i, b in enumerate(rows):
        n = len(texts[b])
        out[b] = _timed_words(tok, texts[b], logits[i, n_sot: n_sot + n],
                              weights[i, :, : len(sequences[i]), : num_frames[b] // 2].float(), n_sot, languages[b])
    return out


def _precision(autocast: Callable[[], ContextManager] | None, device: torch.device) -> ContextManager:
    return autocast() if autocast is not None else torch.autocast(device.type, enabled=False)


def _timed_words(tok: Any, text_tokens: list[int], logits: Tensor, weights: Tensor, n_sot: int,
                 language: str | None) -> list[WordTiming]:
    """One window's words from (n, V) logits at <|notimestamps|> and the text (each predicting the next text
    token) and (A, T, frames) alignment heads' attention over its T tokens and its audio's frames."""
    probs = logits[:, : tok.eot].float().softmax(dim=-1)
    token_probs = probs[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()
    # openai's softmax over the first num_frames // 2 keys alone: the full softmax's slice, renormalised
    weights = weights / weights.sum(dim=-1, keepdim=True)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)  # per frame, over the tokens
    weights = median_filter((weights - mean) / std, MEDFILT_WIDTH)
    matrix = weights.mean(dim=0)[n_sot:-1]  # (1 + text tokens, frames): <|notimestamps|> and the text
    text_indices, time_indices = dtw(-matrix.double().cpu().numpy())

    words, word_tokens = split_to_words(tok, text_tokens + [tok.eot], language)
    if len(word_tokens) <= 1:  # <|endoftext|> alone
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND  # the frame where each token's row begins
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    word_probs = [np.mean(token_probs[i:j]) for i, j in zip(boundaries[:-1], boundaries[1:])]
    return [WordTiming(w, ids, float(s), float(e), float(p))
            for w, ids, s, e, p in zip(words, word_tokens, starts, ends, word_probs)]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Opening punctuation joins the next word, closing punctuation the previous one; what was merged is left
    as an empty word (openai's `merge_punctuations`, in place)."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word, following.tokens = previous.word + following.word, previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word, previous.tokens = previous.word + following.word, previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def _clip_at_sentence_ends(alignment: list[WordTiming], max_duration: float) -> None:
    """Words at sentence boundaries are at most `max_duration` long (openai's hack, pending a VAD)."""
    for i in range(1, len(alignment)):
        if alignment[i].end - alignment[i].start > max_duration:
            if alignment[i].word in SENTENCE_END_MARKS:
                alignment[i].end = alignment[i].start + max_duration
            elif alignment[i - 1].word in SENTENCE_END_MARKS:
                alignment[i].start = alignment[i].end - max_duration


def _fit_to_segment(segment: dict, words: list[dict], last_speech: float, median: float, maximum: float) -> None:
    """openai's clipping of a segment's first word after a pause, and the choice between the segment's and the
    words' start and end (the segment's when the first/last word is implausibly long)."""
    if words[0]["end"] - last_speech > median * 4 and (
            words[0]["end"] - words[0]["start"] > maximum
            or (len(words) > 1 and words[1]["end"] - words[0]["start"] > maximum * 2)):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > maximum:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - maximum)
            words[0]["end"] = words[1]["start"] = boundary
        words[0]["start"] = max(0, words[0]["end"] - maximum)
    if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
        words[0]["start"] = max(0, min(words[0]["end"] - median, segment["start"]))
    else:
        segment["start"] = words[0]["start"]
    if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
        words[-1]["end"] = max(words[-1]["start"] + median, segment["end"])
    else:
        segment["end"] = words[-1]["end"]


def add_word_timestamps(segments: list[dict], alignment: list[WordTiming], eot: int, time_offset: float,
                        last_speech_timestamp: float, prepended: str = PREPEND_PUNCTUATIONS,
                        appended: str = APPEND_PUNCTUATIONS) -> None:
    """Give each of a window's segments ({"start", "end", "tokens"} dicts, times in seconds from the file's
    start) its "words" ({"word", "start", "end", "probability"}) from the window's `alignment` (of the
    segments' text tokens, in order), adjusting the segments' start and end as openai's `add_word_timestamps`.
    Times stay unrounded floats where openai's are, so that later decisions (seek, pauses) are its own."""
    if not segments:
        return
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations) if len(durations) > 0 else 0.0))
    maximum = median * 2
    if len(durations) > 0:
        _clip_at_sentence_ends(alignment, maximum)
    merge_punctuations(alignment, prepended, appended)
    index = 0
    for segment in segments:
        text_tokens = [t for t in segment["tokens"] if t < eot]
        saved, words = 0, []
        while index < len(alignment) and saved < len(text_tokens):
            timing = alignment[index]
            if timing.word:
                words.append(dict(word=timing.word, start=round(time_offset + timing.start, 2),
                                  end=round(time_offset + timing.end, 2), probability=timing.probability))
            saved += len(timing.tokens)
            index += 1
        if words:
            _fit_to_segment(segment, words, last_speech_timestamp, median, maximum)
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def window_text_tokens(segments: list[dict], eot: int) -> list[int]:
    """The text tokens of a window's segments, in order (what `find_alignment` aligns)."""
    return [t for t in itertools.chain.from_iterable(s["tokens"] for s in segments) if t < eot]


def last_end(segments: list[dict]) -> float | None:
    """The end of the last word of `segments`, or of the last segment if none has words (openai's `get_end`)."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s["words"])),
                segments[-1]["end"] if segments else None)


# openai's fixed set for the hallucination check (its defaults, whatever marks the words were merged with)
PUNCTUATION = PREPEND_PUNCTUATIONS + APPEND_PUNCTUATIONS


def word_anomaly_score(word: dict) -> float:
    """How implausible a word is: improbable (< 0.15), very short (< 0.133 s) or very long (> 2 s)."""
    probability, duration = word.get("probability", 0.0), word["end"] - word["start"]
    score = 1.0 if probability < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_segment_anomaly(segment: dict | None) -> bool:
    """A segment whose first 8 words (punctuation aside) are mostly anomalous: a likely hallucination
    (openai's `is_segment_anomaly`; `punctuation` is tested as a substring, as openai's)."""
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in PUNCTUATION][:8]
    score = sum(word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def next_words_segment(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)

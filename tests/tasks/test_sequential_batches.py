"""`long_form="sequential"` batches files: the current windows of up to `batch_size` files are encoded and decoded
together, each file's previous text left-padded to one length. Every file's transcript equals the one it gets
alone (`batch_size=1`, which is openai's `transcribe()`: tests/tasks/test_transcribe_sequential.py), for greedy
and beam search (whose rows of different token limits decode apart), the temperature fallback with best-of
sampling, word timestamps (the batch's words aligned together) and language detection, with files of different
lengths that finish at different times and a file whose decoding or alignment fails in the middle."""
from __future__ import annotations

import numpy as np
import pytest
from test_transcribe_sequential import PROMPT, _openai_model, _pair
from whisper_fixtures import synth_speechlike

from mmkit.inference import DecodingOptions, Transcriber
from mmkit.inference.sequential import sequential_transcripts

pytest.importorskip("whisper")
pytestmark = pytest.mark.usefixtures("single_thread")

CHECKS = dict(compression_ratio_threshold=1.6, logprob_threshold=-0.7, no_speech_threshold=None)  # some retried
NO_CHECKS = dict(compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None)
CASES = {  # id: decoding options (all sequential, conditioned on the previous text)
    "greedy-detect-prompt": dict(temperatures=(0.0,), initial_prompt="Names.", **NO_CHECKS),
    "long-prompt": dict(temperatures=(0.0,), initial_prompt=PROMPT, language="en", **NO_CHECKS),  # prefixes full
    "beam4": dict(temperatures=(0.0,), beam_size=4, language="en", **NO_CHECKS),
    "fallback-best-of": dict(temperatures=(0.0, 0.4, 0.8), best_of=3, language="en", **CHECKS),
    "words": dict(temperatures=(0.0,), word_timestamps=True, language="en", **NO_CHECKS),
}


@pytest.fixture(scope="module")
def seeking(tmp_path_factory):
    return _pair(_openai_model(), tmp_path_factory.mktemp("batches") / "seeking.pt")[2:]


@pytest.fixture(scope="module")
def files():
    """Five files of 70, 12, 45, 95 and 3 s: the short ones finish early and others take their places (and, with
    beam search, rows of different token limits meet in one batch)."""
    return [(f"f{n}.wav", synth_speechlike(seconds, seed=n)) for n, seconds in enumerate((70, 12, 45, 95, 3))]


def _rows(t) -> tuple:
    return (t.path, t.error, t.text, t.language, [(s.start, s.end, s.text, s.tokens, s.temperature,
                                                   [(w.word, w.start, w.end, w.probability) for w in s.words or []])
                                                  for s in t.segments])


@pytest.mark.parametrize("case", list(CASES))
def test_files_batched_get_the_transcripts_they_get_alone(seeking, files, case, monkeypatch):
    model, tok = seeking
    options = DecodingOptions(long_form="sequential", repetition_guard=False, **CASES[case])
    batches, aligned = [], []
    decode_context, align_words = Transcriber.decode_context, Transcriber.align_words

    def spy(self, context, windows, languages, prefixes, max_index, cache=None):
        batches.append([len(p) for p in prefixes])
        return decode_context(self, context, windows, languages, prefixes, max_index, cache)

    def align_spy(self, context, cache, windows, spans, languages):
        aligned.append(len(windows))
        return align_words(self, context, cache, windows, spans, languages)

    alone = [_rows(t) for t in sequential_transcripts(Transcriber(model, tok, options, batch_size=1), files)]
    monkeypatch.setattr(Transcriber, "decode_context", spy)
    monkeypatch.setattr(Transcriber, "align_words", align_spy)
    batched = [_rows(t) for t in sequential_transcripts(Transcriber(model, tok, options, batch_size=3), files)]
    assert batched == alone
    assert all(text for _, _, text, _, _ in alone)
    assert max(len(b) for b in batches) == 3
    assert any(len(set(b)) > 1 for b in batches) or case == "long-prompt"  # prefixes of different lengths batched
    if case == "words":
        assert sum(len(s[5]) for t in alone for s in t[4]) > 20  # words timed, in every file's batch
        assert max(aligned) == 3  # the batch's windows aligned in one pass


def test_a_file_whose_words_fail_fails_alone(seeking, files, monkeypatch):
    """Where aligning a batch's words fails because of one window (file f2's second), each window is aligned
    alone: that file fails, the others come out as without the failure."""
    model, tok = seeking
    options = DecodingOptions(long_form="sequential", **CASES["words"])
    expected = [_rows(t) for t in sequential_transcripts(Transcriber(model, tok, options, batch_size=3), files)]
    align_words = Transcriber.align_words

    def failing(self, context, cache, windows, spans, languages):
        if any(w.file == 2 and w.index == 1 for w in windows):
            raise RuntimeError("out of memory (simulated)")
        return align_words(self, context, cache, windows, spans, languages)

    monkeypatch.setattr(Transcriber, "align_words", failing)
    got = [_rows(t) for t in sequential_transcripts(Transcriber(model, tok, options, batch_size=3), files)]
    assert got[2][1] == "decoding failed (RuntimeError: out of memory (simulated))" and got[2][2] == ""
    assert got[:2] + got[3:] == expected[:2] + expected[3:]


def test_a_file_failing_midway_fails_alone(seeking, files, monkeypatch):
    """A window whose decoding fails (here: file f2's second window) fails its file; the others of its batch are
    decoded alone again and come out as they do without the failure."""
    model, tok = seeking
    options = DecodingOptions(long_form="sequential", temperatures=(0.0,), language="en", **NO_CHECKS)
    expected = [_rows(t) for t in sequential_transcripts(Transcriber(model, tok, options, batch_size=3), files)]
    decode_context = Transcriber.decode_context

    def failing(self, context, windows, languages, prefixes, max_index, cache=None):
        if any(w.file == 2 and w.index == 1 for w in windows):
            raise RuntimeError("out of memory (simulated)")
        return decode_context(self, context, windows, languages, prefixes, max_index, cache)

    monkeypatch.setattr(Transcriber, "decode_context", failing)
    got = [_rows(t) for t in sequential_transcripts(Transcriber(model, tok, options, batch_size=3), files)]
    assert got[2][1] == "decoding failed (RuntimeError: out of memory (simulated))" and got[2][2] == ""
    assert got[:2] + got[3:] == expected[:2] + expected[3:]


def test_an_abandoned_run_closes_every_spilled_file(seeking, files, monkeypatch):
    """A consumer that stops after the first transcript (or Ctrl-C) leaves no temporary file open."""
    from mmkit.audio import long_features

    model, tok = seeking
    opened = []
    spilled = long_features.SpilledAudio

    class Tracked(spilled):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr("mmkit.inference.sequential.SpilledAudio", Tracked)
    options = DecodingOptions(long_form="sequential", temperatures=(0.0,), language="en", **NO_CHECKS)
    run = sequential_transcripts(Transcriber(model, tok, options, batch_size=3),
                                 [("short.wav", np.zeros(8000, np.float32)), *files])
    next(run)
    run.close()
    assert len(opened) >= 3 and all(not f._finalizer.alive for f in opened)

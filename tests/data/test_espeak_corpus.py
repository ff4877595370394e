"""The espeak-ng corpus: held-out sentences are new combinations of trained words, held-out voices
never speak in training, synthesis gives trimmed 16 kHz audio, and writing is idempotent."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import soundfile as sf

from mmkit.audio import SAMPLE_RATE
from mmkit.data import espeak_corpus as ec

needs_espeak = pytest.mark.skipif(not ec.espeak_available(), reason="needs Debian's espeak-ng (scripts/setup.sh)")


def test_held_out_sentences_are_new_combinations_of_trained_words():
    train, val, test = ec.split_sentences(500, (50, 80), seed=3)
    assert (len(train), len(val), len(test)) == (500, 50, 80)
    assert len(set(train) | set(val) | set(test)) == 630  # unique, and no sentence in two splits
    trained_words = {w for s in train for w in s.split()}
    assert {w for s in val + test for w in s.split()} <= trained_words
    assert all(4 <= len(s.split()) <= 9 and s == s.lower() and s.replace(" ", "").isalpha() for s in train)
    assert ec.split_sentences(500, (50, 80), seed=3) == [train, val, test]  # deterministic
    assert ec.split_sentences(500, (50, 80), seed=4)[0] != train


def test_vocabulary_has_a_few_hundred_words():
    words = ec.vocabulary()
    assert 250 <= len(words) <= 400
    rng = random.Random(0)
    assert all(set(ec.make_sentence(rng).split()) <= words for _ in range(200))


def test_held_out_voices_have_an_unheard_accent_or_variant():
    train, held = ec.train_voices(), ec.held_out_voices()
    assert not set(train) & set(held)
    for voice in held:
        accent, _, variant = voice.partition("+")
        assert accent in ec.HELD_OUT_ACCENTS or variant in ec.HELD_OUT_VARIANTS, voice
    for voice in train:
        accent, _, variant = voice.partition("+")
        assert accent in ec.TRAIN_ACCENTS and (variant or "") in ec.TRAIN_VARIANTS


def test_trim_silence_keeps_a_margin():
    sr = SAMPLE_RATE
    tone = 0.5 * np.sin(np.arange(sr // 2) * 0.1).astype(np.float32)
    audio = np.concatenate([np.zeros(sr, np.float32), tone, np.zeros(sr, np.float32)])
    out = ec.trim_silence(audio, pad=0.1)
    assert len(out) == pytest.approx(len(tone) + 2 * int(0.1 * sr), abs=2)
    assert ec.trim_silence(np.zeros(10, np.float32)).shape == (10,)  # all silent: unchanged


@needs_espeak
def test_synthesize_voices_speeds_and_pitches():
    slow = ec.synthesize("the red cat", "en-us+f3", speed=130, pitch=30)
    fast = ec.synthesize("the red cat", "en-gb-x-rp+m7", speed=190, pitch=70)
    for audio in (slow, fast):
        assert audio.dtype == np.float32 and 0.3 * SAMPLE_RATE < len(audio) < 3 * SAMPLE_RATE
        assert np.abs(audio[:100]).max() < 0.05 * np.abs(audio).max()  # kept margin is quiet
    assert len(slow) > len(fast)


@needs_espeak
def test_unknown_voices_are_found_before_espeak_falls_back_silently():
    assert ec.missing_voices(ec.train_voices() + ec.held_out_voices()) == []
    assert ec.missing_voices(["en-us+m3", "xx-nope", "en-us+nope", "en-gb"]) == ["xx-nope", "en-us+nope"]


@needs_espeak
def test_write_corpus_splits_manifests_and_idempotence(tmp_path):
    root = tmp_path / "corpus"
    ec.write_espeak_corpus(root, n_train=12, n_val=2, n_test=3, seed=1)
    splits = {s: [json.loads(line) for line in (root / f"{s}.jsonl").read_text().splitlines()] for s in ec.SPLITS}
    assert [len(splits[s]) for s in ec.SPLITS] == [12, 2, 3]
    train_voices, held = set(ec.train_voices()), set(ec.held_out_voices())
    assert all(u["voice"] in train_voices for u in splits["train"])
    assert all(u["voice"] in held for u in splits["val"] + splits["test"])
    assert not {u["text"] for u in splits["test"]} & {u["text"] for u in splits["train"]}
    for u in splits["train"] + splits["test"]:
        info = sf.info(str(root / u["path"]))
        assert info.samplerate == SAMPLE_RATE and info.channels == 1
        assert info.duration == pytest.approx(u["duration"], abs=1e-3) and u["duration"] <= ec.MAX_DURATION
        assert ec.SPEED_RANGE[0] <= u["speed"] and ec.PITCH_RANGE[0] <= u["pitch"] <= ec.PITCH_RANGE[1]

    wav = root / splits["train"][0]["path"]
    before = wav.stat().st_mtime_ns
    ec.write_espeak_corpus(root, n_train=12, n_val=2, n_test=3, seed=1)  # matching marker: no-op
    assert wav.stat().st_mtime_ns == before
    ec.write_espeak_corpus(root, n_train=10, n_val=2, n_test=3, seed=1)  # other settings: rebuilt
    assert len((root / "train.jsonl").read_text().splitlines()) == 10
    assert not list(tmp_path.glob(".corpus.*"))  # no staging or stale folders left behind


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("not a corpus")
    with pytest.raises(FileExistsError):
        ec.write_espeak_corpus(tmp_path, n_train=2, n_val=1, n_test=1)

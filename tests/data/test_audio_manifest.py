"""Speech data: manifests (CSV/JSONL), length bucketing, the log-Mel + teacher-forcing collate,
the DataModule's tokenizer and filtering, and the character/BPE tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmkit.audio import SAMPLE_RATE, log_mel_spectrogram, pad_or_trim
from mmkit.data import AudioManifestDataModule, CharTokenizer, LengthBucketBatchSampler, SpeechCollator
from mmkit.data.audio_manifest import IGNORE_INDEX, read_manifest, text_ids
from mmkit.data.char_tokenizer import SPECIAL_TOKENS, normalize_text

TEXTS = ["the red cat", "a dog ran home", "seven blue birds sang", "hello world", "the old boat left"]


def _tone(seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """tmp/audio/<i>.wav of 0.5..2.5 s, listed in train.jsonl (relative paths) and train.csv."""
    (tmp_path / "audio").mkdir()
    rows = []
    for i, text in enumerate(TEXTS):
        sf.write(str(tmp_path / "audio" / f"{i}.wav"), _tone(0.5 + 0.5 * i, 200 + 50 * i), SAMPLE_RATE)
        rows.append({"path": f"audio/{i}.wav", "text": text, "speaker": f"s{i % 2}"})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "train.csv").write_text("path,text\n" + "".join(f"{r['path']},{r['text']}\n" for r in rows))
    return tmp_path


# --- manifests ----------------------------------------------------------------------------------

def test_read_manifest_csv_and_jsonl_resolve_relative_paths(clips):
    js, cs = read_manifest(clips / "train.jsonl"), read_manifest(clips / "train.csv")
    assert [e.text for e in js] == [e.text for e in cs] == TEXTS
    assert [e.path for e in js] == [e.path for e in cs] == [str((clips / f"audio/{i}.wav").resolve())
                                                          for i in range(5)]
    assert js[1].extra == {"speaker": "s1"} and js[0].duration is None


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.wav"}\n')
    with pytest.raises(ValueError, match="entry 1 needs 'path' and 'text'"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "long.jsonl").write_text(json.dumps({"path": "a.wav", "note": "x" * 100_000}) + "\n")
    with pytest.raises(ValueError, match=r"entry 1 needs .*xxx\.\.\. \(100,\d{3} characters in all\)$") as info:
        read_manifest(tmp_path / "long.jsonl")  # the row quoted as every message quotes a value: cut, its size told
    assert len(str(info.value)) < 250
    (tmp_path / "broken.jsonl").write_text('{"path": "a.wav", "text": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="broken.jsonl:2: invalid JSON"):
        read_manifest(tmp_path / "broken.jsonl")
    (tmp_path / "m.txt").write_text("a.wav hello\n")
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        read_manifest(tmp_path / "m.txt")


def test_a_folder_or_missing_file_given_as_a_manifest_names_the_option(tmp_path):
    """A folder was "manifest not found: DIR"; the DataModule's messages name the option that gave it."""
    with pytest.raises(IsADirectoryError, match=f"^manifest {tmp_path} is a folder, not a manifest: give a .csv"):
        read_manifest(tmp_path)
    with pytest.raises(IsADirectoryError, match=f"^--data.init_args.train_manifest {tmp_path} is a folder, not a "
                                                "manifest: give a .csv or .jsonl file that lists the clips"):
        AudioManifestDataModule(train_manifest=str(tmp_path)).tokenizer
    dm = AudioManifestDataModule(test_manifest=str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="^--data.init_args.test_manifest .*nope.jsonl: no such file$"):
        dm.test_dataloader()


def test_without_a_tokenizer_option_or_train_manifest_the_message_names_the_options(clips):
    """Nothing to read or build a tokenizer from (`mmkit test` with a test_manifest alone and no checkpoint that
    records one): which options give it, not "building a tokenizer needs train_manifest"."""
    dm = AudioManifestDataModule(test_manifest=str(clips / "train.jsonl"))
    assert dm.tokenizer_origin is None
    assert AudioManifestDataModule(train_manifest=str(clips / "train.jsonl")).tokenizer_origin == "built"
    assert AudioManifestDataModule(tokenizer=str(clips / "tok"), test_manifest="t.csv").tokenizer_origin == "given"
    expected = ("^no tokenizer encodes {}: give --data.init_args.tokenizer \\(a trained run's "
                "export_dir/tokenizer.json\\), --data.init_args.train_manifest to build one")
    with pytest.raises(ValueError, match=expected.format("the data")):
        dm.tokenizer
    with pytest.raises(ValueError, match=expected.format(f"test_manifest {clips / 'train.jsonl'}")):
        dm.test_dataloader()
    with pytest.raises(ValueError, match="^train_dataloader needs train_manifest: give --data.init_args.train_manif"):
        dm.train_dataloader()


# --- length bucketing ---------------------------------------------------------------------------

def test_bucketing_covers_everything_once_and_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.uniform(1, 10, size=1000).tolist()
    sampler = LengthBucketBatchSampler(lengths, batch_size=16, shuffle=True, bucket_size=20, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    random_spread = np.mean([np.ptp(rng.choice(lengths, 16)) for _ in range(200)])
    assert spread < 0.2 * random_spread  # sorted pools: little padding per batch
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new order every epoch...
    sampler.set_epoch(0)
    assert list(sampler) == batches  # ...reproducibly


def test_bucketing_for_evaluation_is_sorted_and_ddp_ranks_split_batches():
    lengths = [3.0, 1.0, 2.0, 5.0, 4.0]
    assert list(LengthBucketBatchSampler(lengths, 2, shuffle=False)) == [[3, 4], [0, 2], [1]]
    ranks = [list(LengthBucketBatchSampler(list(range(100)), 8, True, 4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6  # 13 batches, equal counts so ranks step together
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


# --- tokenizer ----------------------------------------------------------------------------------

def test_char_tokenizer_layout_round_trip_and_save(tmp_path):
    tok = CharTokenizer.build(["The cat, sat!", "a dog ran"])
    n_text = tok.vocab_size - len(SPECIAL_TOKENS)
    assert (tok.eot, tok.sot, tok.pad, tok.no_speech, tok.no_timestamps) == tuple(range(n_text, n_text + 5))
    assert tok.kind == "char" and n_text == 1 + len(set("thecatsadogrn"))  # + the word marker
    ids = tok.encode("THE DOG, sat")
    assert all(i < tok.eot for i in ids) and tok.decode(ids + [tok.eot, tok.pad]) == "the dog sat"
    assert tok.sot_sequence(without_timestamps=True) == [tok.sot, tok.no_timestamps]
    assert tok.timestamp_begin == tok.vocab_size and not tok.is_multilingual
    with pytest.raises(ValueError, match="outside the tokenizer's alphabet: 'bxz'"):
        tok.encode("zebra x")
    assert CharTokenizer.from_file(tok.save(tmp_path)) == tok


def test_bpe_tokenizer_learns_word_pieces():
    tok = CharTokenizer.build(["the cat sat on the mat"] * 20 + ["the dog ran"], kind="bpe", vocab_size=30)
    pieces = [tok.hf.id_to_token(i) for i in tok.encode("the cat ran")]
    assert tok.kind == "bpe" and len(pieces) < len("the cat ran") and "▁the" in pieces
    assert tok.decode(tok.encode("the cat ran")) == "the cat ran"


def test_normalize_text():
    assert normalize_text("  Hello,   World! It's 3pm. ") == "hello world it's 3pm"
    assert normalize_text("Ça va?", charset=None) == "ça va?"


# --- collate and DataModule ---------------------------------------------------------------------

def test_collate_gives_whisper_log_mel_and_shifted_targets(clips):
    tok = CharTokenizer.build(TEXTS)
    prompt = tok.sot_sequence(without_timestamps=True)
    collate = SpeechCollator(tok, prompt, n_mels=80, n_samples=2 * SAMPLE_RATE)
    audio = [_tone(0.5, 200), _tone(3.0, 300)]
    batch = collate([(audio[0], TEXTS[0], 7), (audio[1], TEXTS[1], 3)])
    assert batch["mel"].shape == (2, 80, 200) and batch["indices"].tolist() == [7, 3]
    expected = log_mel_spectrogram(torch.from_numpy(pad_or_trim(audio[1], 2 * SAMPLE_RATE)))
    torch.testing.assert_close(batch["mel"][1], expected)
    seqs = [prompt + tok.encode(t) + [tok.eot] for t in TEXTS[:2]]
    T = max(map(len, seqs)) - 1
    assert batch["tokens"].shape == batch["targets"].shape == (2, T)
    for row, seq in enumerate(seqs):
        n = len(seq) - 1
        assert batch["tokens"][row, :n].tolist() == seq[:-1]
        assert (batch["tokens"][row, n:] == tok.eot).all()  # padding
        targets = batch["targets"][row]
        assert (targets[: len(prompt) - 1] == IGNORE_INDEX).all()  # the prompt is given, not learned
        assert targets[len(prompt) - 1 : n].tolist() == seq[len(prompt):]  # next token, ending in eot
        assert (targets[n:] == IGNORE_INDEX).all()


def test_datamodule_builds_tokenizer_filters_and_lists_skipped(clips):
    rows = [json.loads(line) for line in (clips / "train.jsonl").read_text().splitlines()]
    rows.append({"path": "audio/missing.wav", "text": "gone"})
    (clips / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = AudioManifestDataModule(str(clips / "train.jsonl"), str(clips / "val.jsonl"), batch_size=2)
    tok = dm.tokenizer  # built from the training transcripts
    assert isinstance(tok, CharTokenizer) and dm.vocab_size == len(tok)
    with pytest.raises(RuntimeError, match="configure_inputs"):
        dm.train_dataloader()
    dm.configure_inputs(tok, [tok.sot], n_mels=80, n_samples=2 * SAMPLE_RATE, max_tokens=17)
    # 2 s window: clip 3 (2.0 s) is kept, clip 4 (2.5 s) is not; "seven blue birds sang" needs 24 tokens
    assert [e.text for e in dm.split("train")] == ["the red cat", "a dog ran home", "hello world"]
    assert [e.text for e in dm.split("val")] == ["the red cat", "a dog ran home", "hello world"]
    assert dm.skipped == [(str((clips / "audio/missing.wav").resolve()), "file not found")]
    batches = list(dm.val_dataloader())
    assert [b["texts"] for b in batches] == [["hello world", "a dog ran home"], ["the red cat"]]  # longest first
    assert sum(len(b["texts"]) for b in dm.train_dataloader()) == 3


def test_datamodule_reads_a_saved_tokenizer(clips):
    tok = CharTokenizer.build(TEXTS + ["xyz"])
    tok.save(clips / "export")
    dm = AudioManifestDataModule(str(clips / "train.jsonl"), tokenizer=str(clips / "export"))
    assert dm.tokenizer == tok and dm.tokenizer != CharTokenizer.build(TEXTS)
    assert AudioManifestDataModule(tokenizer=str(clips / "export" / "tokenizer.json")).tokenizer == tok


def test_text_ids_put_a_space_before_whisper_text():
    class Bpe:  # a stand-in for WhisperTokenizer: records what it was asked to encode
        def encode(self, text):
            self.seen = text
            return [1]

    bpe = Bpe()
    assert text_ids(bpe, " hello world ") == [1] and bpe.seen == " hello world"

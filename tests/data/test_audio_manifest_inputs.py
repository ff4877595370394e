"""Bad input to the speech DataModule: unloadable audio met mid-run, empty or out-of-alphabet
transcripts, untrustworthy manifest durations, non-UTF-8/BOM/oversized CSV, no val_manifest."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mmkit.audio import SAMPLE_RATE
from mmkit.data import AudioManifestDataModule, CharTokenizer
from mmkit.data.audio_manifest import read_manifest

TEXTS = ["the red cat", "a dog ran home", "hello world", "blue sky"]


def _wav(path: Path, seconds: float, value: float | None = None) -> str:
    n = int(seconds * SAMPLE_RATE)
    audio = 0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / SAMPLE_RATE)
    if value is not None and n:
        audio[n // 2] = value
    sf.write(str(path), audio.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    return path.name


def _manifest(folder: Path, rows: list[dict], name: str = "m.jsonl") -> str:
    (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(folder / name)


def _good_rows(folder: Path) -> list[dict]:
    return [{"path": _wav(folder / f"ok{i}.wav", 0.5 + 0.2 * i), "text": t} for i, t in enumerate(TEXTS)]


def _configured(train: str, val: str | None = None, batch_size: int = 1, seconds: float = 2.0,
                texts: list[str] = TEXTS) -> AudioManifestDataModule:
    dm = AudioManifestDataModule(train, val, batch_size=batch_size)
    tok = CharTokenizer.build(texts)
    dm.configure_inputs(tok, [tok.sot], n_mels=80, n_samples=int(seconds * SAMPLE_RATE), max_tokens=64)
    return dm


def test_audio_that_fails_to_decode_is_dropped_from_its_batch_not_fatal(tmp_path, caplog):
    rows = _good_rows(tmp_path)
    nan = str((tmp_path / _wav(tmp_path / "nan.wav", 1.0, np.nan)).resolve())
    rows += [{"path": "nan.wav", "text": "nan audio"}, {"path": _wav(tmp_path / "empty.wav", 0), "text": "empty"}]
    dm = _configured(_manifest(tmp_path, rows), texts=TEXTS + ["nan audio"])
    assert len(dm.split("train")) == 5  # the 0-sample file is found from its header at setup
    assert (str((tmp_path / "empty.wav").resolve()), "empty audio (0 samples)") in dm.skipped
    caplog.set_level(logging.WARNING)
    batches = [dm.on_before_batch_transfer(b, 0) for b in dm.train_dataloader()]  # no AudioLoadError
    assert sum(b is None for b in batches) == 1  # batch_size 1: the NaN file's batch is empty
    assert sorted(t for b in batches if b is not None for t in b["texts"]) == sorted(TEXTS)
    assert f"skipping {nan}" in caplog.text  # named (in the DataLoader's process, once)
    assert [(p, r) for p, r in dm.skipped if p == nan] == [(nan, "1 non-finite (NaN/inf) samples")]  # a batch of none
    dm2 = _configured(_manifest(tmp_path, rows), batch_size=8, texts=TEXTS + ["nan audio"])
    (batch,) = [dm2.on_before_batch_transfer(b, 0) for b in dm2.train_dataloader()]
    assert len(batch["texts"]) == 4  # the batch shrinks
    assert [(p, r) for p, r in dm2.skipped if p == nan] == [(nan, "1 non-finite (NaN/inf) samples")]  # counted


def test_empty_and_out_of_alphabet_transcripts_are_reported(tmp_path, caplog):
    rows = _good_rows(tmp_path) + [{"path": "ok0.wav", "text": ""}, {"path": "ok1.wav", "text": "   "},
                                   {"path": "ok2.wav", "text": "你好世界"},
                                   {"path": "ok3.wav", "text": "café crème"}]
    caplog.set_level(logging.WARNING)
    dm = _configured(_manifest(tmp_path, rows), texts=TEXTS + ["caf creme"])
    kept = [e.text for e in dm.split("train")]
    assert kept == TEXTS + ["café crème"]  # partly mangled: kept, with a warning
    reasons = [r for _, r in dm.skipped]
    assert reasons[:2] == ["empty transcript", "empty transcript"] and "no characters" in reasons[2]
    assert "left out 3 of 8 utterances" in caplog.text and "ok0.wav (empty transcript)" in caplog.text
    assert "1 transcripts lose letters/digits" in caplog.text and "'caf cr me'" in caplog.text


def test_durations_come_from_the_audio_and_bad_manifest_values_are_refused(tmp_path, caplog):
    rows = _good_rows(tmp_path) + [{"path": _wav(tmp_path / "long.wav", 3.0), "text": "the cat", "duration": 1.0}]
    caplog.set_level(logging.WARNING)
    dm = _configured(_manifest(tmp_path, rows), seconds=2.0)
    assert [e.text for e in dm.split("train")] == TEXTS  # 3 s > 2 s window, whatever the manifest says
    assert "long.wav (3.0 s, over the model's 2.0 s window)" in caplog.text
    assert "1 manifest durations disagree" in caplog.text
    for bad in ("nan", -1, "abc", "inf"):
        path = _manifest(tmp_path, _good_rows(tmp_path)[:1] + [{"path": "ok1.wav", "text": "x", "duration": bad}])
        with pytest.raises(ValueError, match=r"m\.jsonl: entry 2 has duration .*seconds >= 0") as info:
            read_manifest(path)
        assert "\n" not in str(info.value)


def test_csv_with_bom_latin1_or_a_huge_field(tmp_path):
    _wav(tmp_path / "a.wav", 0.5)
    (tmp_path / "bom.csv").write_text("path,text\na.wav,hello\n", encoding="utf-8-sig")
    assert [e.text for e in read_manifest(tmp_path / "bom.csv")] == ["hello"]
    (tmp_path / "latin1.csv").write_text("path,text\na.wav,hello\na.wav,café\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"latin1\.csv:3: not UTF-8"):
        read_manifest(tmp_path / "latin1.csv")
    (tmp_path / "huge.csv").write_text("path,text\na.wav,hello\na.wav," + "a" * 200_000 + "\n")
    with pytest.raises(ValueError, match=r"huge\.csv:3: unreadable CSV"):
        read_manifest(tmp_path / "huge.csv")


def test_no_val_manifest_means_no_validation(tmp_path):
    dm = _configured(_manifest(tmp_path, _good_rows(tmp_path)), None)
    assert len(dm.val_dataloader()) == 0 and len(dm.train_dataloader()) == 4
    with pytest.raises(ValueError, match="test_dataloader needs test_manifest"):
        dm.test_dataloader()

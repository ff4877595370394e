"""`scripts/word_timing_openai.py` (README's real-weights word timing comparison) runs end to end on a tiny random
openai-format checkpoint: the mmkit model moved back to openai's names loads into openai-whisper strictly, with the
alignment heads it carries, and both sides give the same words on a passage longer than a window."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from test_transcribe_sequential import _openai_model

from mmkit.data.espeak_corpus import espeak_available
from mmkit.inference import load_speech_model

whisper = pytest.importorskip("whisper")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "word_timing_openai.py"
pytestmark = [pytest.mark.skipif(not espeak_available(), reason="needs Debian's espeak-ng (scripts/setup.sh)"),
              pytest.mark.usefixtures("single_thread")]


def _script():
    spec = importlib.util.spec_from_file_location("word_timing_openai", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from dataclasses import asdict

    model, path = _openai_model(), tmp_path_factory.mktemp("word_timing") / "tiny.pt"
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return model, path


def test_the_weights_go_back_to_openai_exactly(checkpoint):
    reference, path = checkpoint
    ours, _ = load_speech_model(path)
    ours.alignment_heads = [[1, 0], [1, 3]]
    back = _script().to_openai(ours)
    for key, value in reference.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert back.alignment_heads.to_dense().nonzero().tolist() == [[1, 0], [1, 3]]


def test_both_sides_give_the_same_words(checkpoint, tmp_path, capsys):
    _, path = checkpoint
    assert _script().main(["--model", str(path), "--files", "1", "--seconds", "31", "--work", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["files"] == 1 and report["words"] > 0 and report["equal_word_lists"] == 1
    assert report["largest_time_difference"] < 1e-9 and report["largest_probability_difference"] < 1e-4
    assert report["windows_words"] > 0 and 0 < report["windows_matched_words"] <= report["windows_words"]
    assert 0 <= report["windows_median_gap_s"] <= report["windows_p95_gap_s"]

"""`scripts/long_form_wer.py` (README's long-form WER table) runs end to end on a toy checkpoint: the passages are
longer than a window, every long form writes its row, and the references are the sentences spoken."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import soundfile as sf

from mmkit.cli.bench.speech_inputs import write_toy_checkpoint
from mmkit.data.espeak_corpus import espeak_available

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "long_form_wer.py"
pytestmark = pytest.mark.skipif(not espeak_available(), reason="needs Debian's espeak-ng (scripts/setup.sh)")


def _script():
    spec = importlib.util.spec_from_file_location("long_form_wer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_long_form_gets_its_row(tmp_path, capsys):
    script = _script()
    model = write_toy_checkpoint(tmp_path / "toy", d_model=64, encoder_layers=1, decoder_layers=1, heads=2,
                                 multilingual=False, eot_scale=8.0)
    assert script.main(["--model", str(model), "--files", "1", "--seconds", "31", "--work", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (.+?) \| (\d+\.\d)% \| (\d+\.\d) s \|$", out, re.M)
    assert [r[0] for r in rows] == list(script.LONG_FORMS)
    assert "sequential: 1 of 1 transcripts the same batched (--batch-size 8) as one file at a time" in out
    (audio,) = (tmp_path / "w" / "audio").iterdir()
    assert sf.info(str(audio)).duration >= 31


def test_passages_are_the_sentences_spoken(tmp_path):
    references = _script().write_passages(tmp_path, files=2, seconds=3)
    assert len(references) == 2 and all(len(text.split()) >= 3 for text in references.values())
    again = _script().write_passages(tmp_path / "again", files=2, seconds=3)  # seeded: the same sentences
    assert sorted(again.values()) == sorted(references.values())

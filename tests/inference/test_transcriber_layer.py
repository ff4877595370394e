"""The speech inference layer (issue 8): one resolver from `--model NAME` to (Whisper, tokenizer)
behind the CLI, the Python API and SpeechRecognizer; `mmkit transcribe` and `mmkit demo speech`
run without Lightning; Whisper's DecodingOptions hand each fallback rung to the shared loop as
generic GenerationOptions; the old `mmkit.tasks` paths forward with a DeprecationWarning.
The checkpoint is a tiny random Whisper with a character tokenizer (the recipe's export format).
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mmkit.audio import SAMPLE_RATE
from mmkit.core import BeamSearch, Greedy, Sampling
from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.inference import (
    DecodingOptions, Transcriber, greedy_options, load_speech_model, load_transcriber, save_speech_checkpoint,
)
from mmkit.models.whisper import Whisper


@pytest.fixture(scope="module")
def char_export(tmp_path_factory) -> tuple[Path, Path]:
    """(export dir, 3-s wav): a dim-32 random Whisper (1-s windows) with a character tokenizer."""
    root = tmp_path_factory.mktemp("char_export")
    tok = CharTokenizer.build(["hello world", "good morning"])
    torch.manual_seed(0)
    model = Whisper(n_audio_ctx=50, n_text_ctx=16, vocab_size=tok.vocab_size, dim=32, encoder_depth=1,
                    decoder_depth=1, num_heads=2)
    export = save_speech_checkpoint(model, tok, root / "export", {"language": "en"})
    wav = root / "clip.wav"
    rng = np.random.default_rng(0)
    sf.write(str(wav), (0.1 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    return export, wav


def test_one_resolver_reads_the_export_back_for_the_api_the_cli_and_fine_tuning(char_export, tmp_path):
    export, wav = char_export
    model, tok = load_speech_model(export)
    assert isinstance(tok, CharTokenizer) and not model.training
    assert json.loads((export / "config.json").read_text())["metadata"] == {"language": "en", "tokenizer": "char"}

    api = next(load_transcriber(export).transcribe_files([wav]))
    assert api.error is None and len(api.segments) == 3  # one segment per 1-s window (no timestamp tokens)
    # the CLI with the interactive defaults' settings gives the API's text
    from mmkit.cli import main

    assert main(["transcribe", str(wav), "--model", str(export), "--temperature", "0", "--no-speech-threshold",
                 "none", "-f", "json", "-o", str(tmp_path), "--quiet"]) == 0
    cli = json.loads((tmp_path / "clip.json").read_text())
    assert cli["text"] == api.text and [s["tokens"] for s in cli["segments"]] == [s.tokens for s in api.segments]

    from mmkit.tasks import SpeechRecognizer  # fine-tuning starts from the same weights and tokenizer

    task = SpeechRecognizer(checkpoint=str(export))
    assert task.tokenizer.to_str() == tok.to_str() and task.model.training
    for (name, a), b in zip(task.model.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_transcribe_and_the_speech_demo_run_without_lightning(char_export, tmp_path):
    export, wav = char_export
    code = f"""
import sys
from pathlib import Path
from mmkit.cli import main
assert main(["transcribe", {str(wav)!r}, "--model", {str(export)!r}, "-o", {str(tmp_path)!r}, "--quiet"]) == 0
from mmkit.cli.demo import TabSettings, speech_tab
speech_tab(Path({str(export)!r}), TabSettings(top_k=1))  # loads the transcriber the demo serves
assert "pytorch_lightning" not in sys.modules and "lightning" not in sys.modules, "Lightning was imported"
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("ok") and (tmp_path / "clip.txt").is_file()


def test_decoding_options_give_each_fallback_rung_generic_generation_options():
    o = DecodingOptions(beam_size=5, temperatures=(0.0, 0.4), seed=7)
    first, second = o.generation(0, 30), o.generation(1, 30)
    assert isinstance(first.strategy(), BeamSearch) and first.strategy().beam_size == 5
    assert first.max_new_tokens == 30 and first.filters() == []
    sampling = second.strategy()
    assert isinstance(sampling, Sampling) and sampling.temperature == 0.4 and second.beam_size == 1
    expected = torch.Generator().manual_seed(7 + 1)  # seed + attempt, as the fallback always did
    assert torch.equal(sampling.generator.get_state(), expected.get_state())
    assert isinstance(DecodingOptions(temperatures=(0.0,)).generation(0, 5).strategy(), Greedy)


def test_greedy_options_per_tokenizer(char_export):
    _, tok = load_speech_model(char_export[0])
    assert greedy_options(tok) == DecodingOptions(temperatures=(0.0,), no_speech_threshold=None)


def test_old_import_paths_forward_with_a_deprecation_warning():
    import mmkit.inference.speech_checkpoints as checkpoints
    import mmkit.tasks
    import mmkit.tasks.transcribe as old

    expected = {(old, "Transcriber"): Transcriber, (old, "DecodingOptions"): DecodingOptions,
                (old, "load_checkpoint"): load_speech_model, (old, "save_checkpoint"): save_speech_checkpoint,
                (mmkit.tasks, "load_speech_checkpoint"): load_speech_model,
                (mmkit.tasks, "save_speech_checkpoint"): checkpoints.save_speech_checkpoint,
                (mmkit.tasks, "load_transcriber"): load_transcriber}
    for (module, name), new in expected.items():
        with pytest.warns(DeprecationWarning, match=f"{module.__name__}.{name} is deprecated"):
            assert getattr(module, name) is new
    from mmkit.cli.transcribe import main
    from mmkit.core.filters import TimestampRules

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from mmkit.tasks.transcribe import TimestampRules as old_rules, main as old_main
    assert old_rules is TimestampRules and old_main is main


def test_load_transcriber_takes_the_precision_and_int8_the_transcriber_takes(char_export):
    # `mmkit demo speech --quantize int8` goes through it (the demo rebuilt its steps to pass them)
    export, wav = char_export
    tr = load_transcriber(export, quantize="int8")
    assert (tr.precision, tr.quantize) == ("fp32", "int8")
    assert next(tr.transcribe_files([wav])).error is None
    assert load_transcriber(export).quantize == "none"

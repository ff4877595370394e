"""SpeechRecognizer: a tiny Whisper trained from scratch memorises four clips (so loss targets,
prompt, vocabulary and greedy decoding are wired right: WER 0), exports weights + tokenizer that
`mmkit.inference.Transcriber` decodes identically, and fine-tunes from checkpoints with a
character tokenizer or a Whisper tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from safetensors.torch import load_file

from mmkit.audio import SAMPLE_RATE, SpecAugment
from mmkit.data import AudioManifestDataModule, CharTokenizer
from mmkit.data.audio_manifest import IGNORE_INDEX
from mmkit.models import Whisper
from mmkit.inference import load_speech_model, transcriber_for
from mmkit.tasks import SpeechRecognizer

TEXTS = ["red cat", "blue dog", "old boat", "big tree"]
TINY = dict(n_audio_ctx=50, n_text_ctx=16, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)  # 1 s window


def _trainer(root: Path, **kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(root), **kwargs)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Four 0.8 s tones (one pitch per transcript) listed in train.jsonl."""
    root = tmp_path_factory.mktemp("clips")
    (root / "audio").mkdir()
    t = np.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    rows = []
    for i, (text, freq) in enumerate(zip(TEXTS, (300, 700, 1500, 3000))):
        audio = (0.3 * np.sin(2 * np.pi * freq * t) * np.sin(np.pi * t / 0.8)).astype(np.float32)
        sf.write(str(root / "audio" / f"{i}.wav"), audio, SAMPLE_RATE)
        rows.append({"path": f"audio/{i}.wav", "text": text})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _data(clips: Path, **kwargs) -> AudioManifestDataModule:
    manifest = str(clips / "train.jsonl")
    return AudioManifestDataModule(manifest, manifest, manifest, batch_size=4, **kwargs)


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    """(task, data, export dir): 80 steps on the four clips, exported by on_fit_end."""
    root = tmp_path_factory.mktemp("trained")
    pl.seed_everything(0, verbose=False)
    dm = _data(clips)
    task = SpeechRecognizer(Whisper(vocab_size=8, **TINY), lr=1e-2, warmup_ratio=0.1, label_smoothing=0.0,
                            export_dir=str(root / "export"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one-thread fixture
    try:
        _trainer(root, max_steps=80, limit_val_batches=0).fit(task, dm)
    finally:
        torch.set_num_threads(threads)
    return task, dm, root / "export"


def test_vocabulary_comes_from_the_data_tokenizer(trained):
    task, dm, _ = trained
    tok = dm.tokenizer
    assert isinstance(tok, CharTokenizer) and task.tokenizer is tok
    assert task.model.vocab_size == len(tok) == task.model.tok_embed.num_embeddings != 8  # rebuilt at setup
    assert {k: v for k, v in task.model.config.items() if k in TINY} == TINY  # the rest is kept
    assert task.prompt == [tok.sot, tok.no_timestamps]


def test_memorises_the_clips_wer_zero(trained, tmp_path):
    task, dm, _ = trained
    metrics, = _trainer(tmp_path).validate(task, dm, verbose=False)
    assert metrics["val/wer"] == 0.0 and metrics["val/cer"] == 0.0 and metrics["val/loss"] < 0.2
    batch = next(iter(dm.val_dataloader()))
    assert task.transcribe_mel(batch["mel"]) == batch["texts"]
    tested, = _trainer(tmp_path).test(task, dm, verbose=False)
    assert tested["test/wer"] == 0.0


def test_untrained_model_has_high_wer(clips, tmp_path):
    pl.seed_everything(0, verbose=False)
    metrics, = _trainer(tmp_path).validate(SpeechRecognizer(Whisper(**TINY)), _data(clips), verbose=False)
    assert metrics["val/wer"] >= 0.5  # the metric can fail


def test_export_round_trip_and_transcriber_agrees(trained, clips):
    task, dm, export = trained
    assert {p.name for p in export.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    config = json.loads((export / "config.json").read_text())
    assert config["metadata"] == {"language": "en", "tokenizer": "char"}
    model, tok = load_speech_model(export)
    assert tok == task.tokenizer and not model.training
    for k, v in load_file(str(export / "model.safetensors")).items():
        torch.testing.assert_close(v, task.model.state_dict()[k], rtol=0, atol=0)
    paths = [clips / "audio" / f"{i}.wav" for i in range(4)]
    transcripts = list(transcriber_for(model, tok).transcribe_files(paths))
    assert [t.text for t in transcripts] == TEXTS
    seg, = transcripts[0].segments  # one segment per window, spanning the audio
    assert (seg.start, seg.end) == (0.0, 0.8)


def test_mmkit_transcribe_reads_the_char_tokenizer_export(trained, clips, tmp_path, capsys):
    from mmkit.cli.transcribe import main

    _, _, export = trained
    paths = [str(clips / "audio" / f"{i}.wav") for i in range(4)]
    assert main([*paths, "--model", str(export), "-o", str(tmp_path), "-f", "txt", "srt", "--quiet"]) == 0
    assert [(tmp_path / f"{i}.txt").read_text().strip() for i in range(4)] == TEXTS
    assert (tmp_path / "0.srt").read_text().splitlines()[1] == "00:00:00,000 --> 00:00:00,800"
    assert main([paths[0], "--model", str(export), "--task", "translate"]) == 2  # no task tokens: one clear error
    assert "cannot translate" in capsys.readouterr().err


def test_spec_augment_masks_training_inputs_only(trained, monkeypatch):
    task, dm, _ = trained
    monkeypatch.setattr(task, "log", lambda *args, **kwargs: None)  # no trainer loop to log into
    calls = []

    class Spy(SpecAugment):
        def forward(self, spec, generator=None):
            calls.append(spec.shape)
            return super().forward(spec, generator)

    batch = next(iter(dm.train_dataloader()))
    task.spec_augment = Spy(freq_mask_param=80, num_freq_masks=4)
    try:
        task.train()
        masked = task.training_step(batch, 0)
        task.eval()
        task.validation_step(batch, 0)
    finally:
        task.spec_augment = None
    assert calls == [batch["mel"].shape]
    assert masked > task._loss(batch, batch["mel"], 0.0)  # masking most bins hurts the fit


def test_fine_tune_from_exported_checkpoint_uses_its_tokenizer(trained, clips, tmp_path):
    _, _, export = trained
    (clips / "more.jsonl").write_text(json.dumps({"path": "audio/0.wav", "text": "red fox"}) + "\n"
                                      + json.dumps({"path": "audio/1.wav", "text": "blue dog"}) + "\n")
    task = SpeechRecognizer(checkpoint=str(export), lr=1e-3)
    dm = AudioManifestDataModule(str(clips / "more.jsonl"), batch_size=2)  # would build another alphabet
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(task, dm)
    assert dm.tokenizer is task.tokenizer and task.model.vocab_size == before["tok_embed.weight"].shape[0]
    assert [e.text for e in dm.split("train")] == ["blue dog"]  # 'f', 'x' are not in the checkpoint's alphabet
    assert "outside the tokenizer's alphabet" in dm.skipped[0][1]
    assert not torch.equal(before["tok_embed.weight"], task.model.tok_embed.weight)  # it trained


def test_fine_tune_a_whisper_tokenizer_checkpoint(clips, tmp_path):
    from whisper_fixtures import write_hf_checkpoint

    ckpt = write_hf_checkpoint(tmp_path / "hf", multilingual=True)
    with pytest.raises(ValueError, match="ctc_weight needs a character"):
        _trainer(tmp_path, max_steps=1).fit(SpeechRecognizer(checkpoint=str(ckpt), ctc_weight=0.3), _data(clips))
    task = SpeechRecognizer(checkpoint=str(ckpt), language="en")
    tok = task.tokenizer
    assert task.prompt == [tok.sot, tok.language_id("en"), tok.transcribe, tok.no_timestamps]
    dm = _data(clips)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(task, dm)
    assert dm.tokenizer is tok and task.n_samples == 30 * SAMPLE_RATE
    batch = next(iter(dm.train_dataloader()))
    for row, text in zip(batch["targets"], batch["texts"]):
        ids = row[row != IGNORE_INDEX].tolist()
        assert ids[-1] == tok.eot and tok.decode(ids) == " " + text  # Whisper text follows a space
    assert torch.isfinite(task._loss(batch, batch["mel"], 0.1))


def test_needs_exactly_one_of_model_and_checkpoint(trained):
    _, _, export = trained
    with pytest.raises(ValueError, match="either model"):
        SpeechRecognizer()
    with pytest.raises(ValueError, match="either model"):
        SpeechRecognizer(Whisper(**TINY), checkpoint=str(export))


def test_resuming_with_another_tokenizer_is_refused(trained):
    _, _, export = trained
    task = SpeechRecognizer(checkpoint=str(export))  # a fine-tune: the tokenizer is its checkpoint's
    saved: dict = {}
    task.on_save_checkpoint(saved)
    task.on_load_checkpoint(saved)  # the same tokenizer: fine
    other = CharTokenizer.build(["zzz qqq"])
    with pytest.raises(ValueError, match="different tokenizer"):
        task.on_load_checkpoint({"char_tokenizer": other.to_str()})


def test_ctc_auxiliary_loss_aligns_transcripts_with_the_blank_as_pad(trained):
    task, dm, _ = trained
    tok, batch = task.tokenizer, next(iter(dm.val_dataloader()))
    with torch.no_grad():
        context = task.model.encode(batch["mel"])
        got = task._ctc_loss(context, batch["targets"])
        logp = torch.nn.functional.linear(context, task.model.tok_embed.weight).log_softmax(-1)  # (B, S, V)
        S, expected = logp.shape[1], []
        for i, text in enumerate(batch["texts"]):
            ids = torch.tensor(tok.encode(text))
            loss = torch.nn.functional.ctc_loss(logp[i:i + 1].transpose(0, 1), ids[None], [S], [len(ids)],
                                                blank=tok.pad, reduction="sum")
            expected.append(loss / len(ids))
        torch.testing.assert_close(got, torch.stack(expected).mean())
        mixed = task._loss(batch, batch["mel"], 0.0, ctc_weight=0.5)
        torch.testing.assert_close(mixed, 0.5 * task._loss(batch, batch["mel"], 0.0) + 0.5 * got)


# --- the recipe (configs/whisper_espeak.yaml) on one's own manifests, in-process through `mmkit` ---------------

RECIPE = str(Path(__file__).resolve().parents[2] / "configs" / "whisper_espeak.yaml")
DATA = "--data.init_args."
RECIPE_TINY = [arg for key, value in TINY.items() for arg in (f"--model.init_args.model.init_args.{key}", str(value))]


def _recipe(root: Path, *args: str) -> list[str]:
    """The recipe on an `AudioManifestDataModule`, shrunk to `TINY`, writing into `root`."""
    return ["--config", RECIPE, "--data", "mmkit.data.AudioManifestDataModule", *RECIPE_TINY, DATA + "batch_size", "4",
            "--trainer.default_root_dir", str(root), "--model.init_args.export_dir", str(root / "export"),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *args]


@pytest.fixture(scope="module")
def recipe_run(clips, tmp_path_factory) -> Path:
    """The folder of a 2-step `mmkit fit` of the recipe on the four clips (checkpoints/last.ckpt)."""
    import warnings

    from mmkit.cli import main

    root = tmp_path_factory.mktemp("recipe")
    manifest = str(clips / "train.jsonl")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "LightningCLI's args parameter")
            assert main(["fit", *_recipe(root, DATA + "train_manifest", manifest, "--trainer.max_steps", "2",
                                         "--trainer.limit_val_batches", "0")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (root / "checkpoints" / "last.ckpt").is_file()
    return root


def _other_alphabet(tmp_path: Path, clips: Path) -> Path:
    """A manifest of the clips whose transcripts have letters the recipe run's never had (z, q, x, ...)."""
    rows = [{"path": str(clips / "audio" / f"{i}.wav"), "text": text}
            for i, text in enumerate(["red dog", "zebra quux", "old cat", "vex jumps"])]
    (tmp_path / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "other.jsonl"


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_testing_a_checkpoint_encodes_with_the_tokenizer_it_records(recipe_run, clips, tmp_path, caplog):
    """`mmkit test` with a test_manifest alone ("building a tokenizer needs train_manifest"), or with a
    train_manifest of another alphabet ("it has vocab_size 18 (here 27); give the sizes it was trained with"):
    the checkpoint's own tokenizer encodes the data."""
    import logging

    from mmkit.cli import main

    ckpt = str(recipe_run / "checkpoints" / "last.ckpt")
    caplog.set_level(logging.INFO, logger="mmkit")
    assert main(["test", *_recipe(tmp_path, DATA + "test_manifest", str(clips / "train.jsonl"),
                                  "--ckpt_path", ckpt)]) == 0
    assert "(the checkpoint's tokenizer's)" in caplog.text
    caplog.clear()
    assert main(["test", *_recipe(tmp_path, DATA + "train_manifest", str(_other_alphabet(tmp_path, clips)),
                                  DATA + "test_manifest", str(clips / "train.jsonl"), "--ckpt_path", ckpt)]) == 0
    assert "the checkpoint's tokenizer (" in caplog.text and "not the one built from train_manifest" in caplog.text


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_resuming_on_transcripts_of_another_alphabet_keeps_the_checkpoints_tokenizer(recipe_run, clips, tmp_path,
                                                                                     caplog):
    import logging
    import shutil

    from mmkit.cli import main

    ckpt = shutil.copy(recipe_run / "checkpoints" / "last.ckpt", tmp_path / "resume.ckpt")
    caplog.set_level(logging.INFO, logger="mmkit")
    assert main(["fit", *_recipe(tmp_path, DATA + "train_manifest", str(_other_alphabet(tmp_path, clips)),
                                 "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
                                 "--ckpt_path", str(ckpt))]) == 0
    assert "not the one built from train_manifest" in caplog.text
    assert "train: left out 2 of 4 utterances" in caplog.text  # 'zebra quux', 'vex jumps': not its alphabet


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_a_tokenizer_option_or_manifest_that_cannot_be_used_is_one_line(recipe_run, clips, tmp_path, capsys):
    from mmkit.cli import main

    other = CharTokenizer.build(["zebra quux"]).save(tmp_path / "other_tokenizer")
    test = [DATA + "test_manifest", str(clips / "train.jsonl")]
    cases = [
        ([DATA + "tokenizer", str(other), *test, "--ckpt_path", str(recipe_run / "checkpoints" / "last.ckpt")],
         f"mmkit test: error: the checkpoint was trained with a different tokenizer than --data.init_args.tokenizer "
         f"{other} ("),
        (test, f"mmkit test: error: no tokenizer encodes test_manifest {clips / 'train.jsonl'}: give "
               "--data.init_args.tokenizer (a trained run's export_dir/tokenizer.json)"),
        ([DATA + "test_manifest", str(tmp_path)],
         f"mmkit test: error: --data.init_args.test_manifest {tmp_path} is a folder, not a manifest: give a .csv or "
         ".jsonl file"),
    ]
    for args, message in cases:
        code = main(["test", *_recipe(tmp_path, *args)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith(message), err

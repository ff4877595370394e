"""LanguageModel on a tiny corpus: the held-out perplexity falls far below the unigram baseline
within seconds, perplexity is exp(mean cross-entropy), and the export generates text."""
from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from _gpt import tiny_corpus
from _training import fit_single_threaded

from mmkit.core import GenerationOptions
from mmkit.data.text_blocks import TextBlocksDataModule
from mmkit.inference.text_generation import load_text_generator
from mmkit.models import GPT
from mmkit.tasks.language_model import LanguageModel


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(300)))
    data = TextBlocksDataModule(files=[str(corpus)], tokenizer=str(root / "tok"), vocab_size=300, block_size=32,
                                val_fraction=0.1, batch_size=16)
    pl.seed_everything(0)
    task = LanguageModel(GPT(max_len=32, dim=32, depth=2, num_heads=4), lr=3e-3, warmup_ratio=0.1,
                         export_dir=str(root / "export"))
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    fit_single_threaded(trainer, task, data)
    return root, task, data, trainer


def test_held_out_perplexity_beats_the_unigram_baseline(trained):
    _, task, data, trainer = trained
    assert task.model.vocab_size == 300  # linked to the trained tokenizer at setup
    ppl, unigram = float(trainer.callback_metrics["val/ppl"]), float(trainer.callback_metrics["val/unigram_ppl"])
    assert unigram == pytest.approx(data.unigram_ppl)
    # The corpus is a small grammar: a model that learned it is far better than word counts.
    assert ppl < unigram / 3, (ppl, unigram)
    assert math.log(ppl) == pytest.approx(float(trainer.callback_metrics["val/loss"]), rel=0.02)


def test_perplexity_metric_is_exp_of_the_mean_cross_entropy(trained):
    _, task, data, _ = trained
    batch = next(iter(data.val_dataloader()))
    task.eval()
    task.val_ppl.reset()
    with torch.no_grad():
        logits = task(batch["tokens"])
        task.val_ppl(logits, batch["targets"])
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
    assert float(task.val_ppl.compute()) == pytest.approx(math.exp(float(ce)), rel=1e-4)


def test_export_generates_the_corpus_language(trained):
    root, _, _, _ = trained
    generator = load_text_generator(root / "export")
    text = generator.generate("The cat", GenerationOptions(max_new_tokens=12))
    words = {w for phrase in ("the cat sees likes follows finds draws calls remembers the river a red ball green "
                              "house an apple long road quiet song moon a dog my friend old man small bird "
                              "teacher our neighbour",) for w in phrase.split()}
    said = [w.strip(".").lower() for w in text.split() if w.strip(".")]
    assert said and sum(w in words for w in said) / len(said) > 0.8, text


def test_block_size_longer_than_the_model_context_is_refused(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(100)))
    data = TextBlocksDataModule(files=[str(corpus)], block_size=64, val_fraction=0.1, vocab_size=300)
    task = LanguageModel(GPT(max_len=32, dim=16, depth=1, num_heads=2))
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="block_size 64 exceeds the model's max_len 32"):
        trainer.fit(task, data)


def test_bf16_and_gradient_accumulation_come_from_the_trainer(trained):
    _, task, data, _ = trained
    batch = next(iter(data.val_dataloader()))
    task.eval()
    with torch.no_grad():
        fp32 = torch.nn.functional.cross_entropy(task(batch["tokens"]).flatten(0, 1), batch["targets"].flatten())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = task(batch["tokens"])
        bf16 = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten())
    # without gradients the vocabulary projection leaves autocast (fp32 logits); the blocks ran in bf16
    assert logits.dtype == torch.float32 and 0 < abs(float(bf16) - float(fp32)) < 0.05 * float(fp32)
    step_before = task.model.tok_embed.weight.detach().clone()
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=2, precision="bf16-mixed", accelerator="cpu",
                         limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    fit_single_threaded(trainer, task, data)
    assert trainer.global_step == 1 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2
    assert torch.isfinite(task.model.tok_embed.weight).all()
    assert not torch.equal(task.model.tok_embed.weight, step_before)  # one optimiser step over two batches

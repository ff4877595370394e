"""CUDA checks, run by `scripts/gpu_check.sh` where a GPU is lent and skipped everywhere else (CI has
none): on the GPU the models give the CPU's numbers in fp32 (TF32 off), decoding keeps its contracts
(cached = uncached, batched = one at a time, the CPU's tokens), bf16 autocast agrees with fp32, and
the tools (`mmkit label`, `mmkit transcribe`) and a Lightning fit run there."""
from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmkit.core import BeamSearch, Greedy, generate
from mmkit.models import GPT, ViT, Whisper

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 on the GPU as on the CPU: no TF32 in matrix products or convolutions."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _wide(model: torch.nn.Module) -> torch.nn.Module:
    """Weights beyond the 0.02 init: clear logit margins, so that the GPU's other summation orders pick
    the same tokens as the CPU (flat logits of a fresh init would make near-ties)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def _close_in_direction(low: torch.Tensor, exact: torch.Tensor) -> float:
    return F.cosine_similarity(low.float().flatten(), exact.float().flatten(), dim=0).item()


def test_vit_on_the_gpu_gives_the_cpu_logits_and_bf16_agrees():
    import timm

    torch.manual_seed(0)
    model = ViT.from_timm(timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=10)).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    gpu = copy.deepcopy(model).cuda()
    with torch.no_grad():
        exact = model(x)
        assert (gpu(x.cuda()).cpu() - exact).abs().max() <= 1e-4
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = gpu(x.cuda())
    assert low.dtype == torch.bfloat16 and _close_in_direction(low.cpu(), exact) > 0.999


@pytest.mark.parametrize("strategy", [Greedy(), BeamSearch(beam_size=3)], ids=["greedy", "beam"])
def test_gpt_decoding_on_the_gpu(strategy):
    torch.manual_seed(0)
    model = _wide(GPT(vocab_size=50, max_len=32, dim=32, depth=2, num_heads=4).eval())
    prompt = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(0))
    gpu, on_gpu = copy.deepcopy(model).cuda(), prompt.cuda()
    cached = generate(gpu, on_gpu, 12, strategy, use_cache=True)
    assert torch.equal(cached.tokens, generate(gpu, on_gpu, 12, strategy, use_cache=False).tokens)
    assert torch.equal(cached.tokens.cpu(), generate(model, prompt, 12, strategy).tokens)
    one_by_one = torch.cat([generate(gpu, on_gpu[i : i + 1], 12, strategy).tokens for i in range(3)])
    assert torch.equal(cached.tokens, one_by_one)


def _tiny_whisper() -> tuple[Whisper, Whisper, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small wide-weight Whisper, its copy on the GPU, two windows' features (on the CPU), their encoder
    output on the GPU, and a prompt (on the CPU)."""
    torch.manual_seed(0)
    model = _wide(Whisper(n_mels=80, n_audio_ctx=24, n_text_ctx=32, vocab_size=50, dim=32, encoder_depth=2,
                          decoder_depth=2, num_heads=4).eval())
    mel = torch.randn(2, 80, 48, generator=torch.Generator().manual_seed(0))
    gpu = copy.deepcopy(model).cuda()
    with torch.no_grad():
        context = gpu.encode(mel.cuda())
    return model, gpu, mel, context, torch.tensor([[1, 2, 3], [1, 4, 3]])


def test_whisper_decoding_on_the_gpu():
    model, gpu, mel, context, prompt = _tiny_whisper()
    with torch.no_grad():
        assert (context.cpu() - model.encode(mel)).abs().max() <= 1e-4
    cached = generate(gpu, prompt.cuda(), 12, Greedy(), context=context, eos_id=7, use_cache=True)
    uncached = generate(gpu, prompt.cuda(), 12, Greedy(), context=context, eos_id=7, use_cache=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    on_cpu = generate(model, prompt, 12, Greedy(), context=model.encode(mel), eos_id=7)
    assert torch.equal(cached.tokens.cpu(), on_cpu.tokens)


@pytest.mark.parametrize("early_stopping", [None, False], ids=["openai", "ranked"])
def test_beams_sharing_their_context_on_the_gpu(early_stopping):
    """Grouped cross-attention on the GPU (SDPA with K queries a context row): a beam search with each row's
    context once gives the tokens of the same search with it repeated K times, and the CPU's."""
    model, gpu, mel, context, prompt = _tiny_whisper()
    strategy = BeamSearch(4, early_stopping=early_stopping)
    shared = generate(gpu, prompt.cuda(), 10, strategy, context=context, eos_id=7)
    gpu.beams_share_context = False  # this instance only: the context repeated to every beam
    repeated = generate(gpu, prompt.cuda(), 10, strategy, context=context, eos_id=7)
    on_cpu = generate(model, prompt, 10, strategy, context=model.encode(mel), eos_id=7)
    assert torch.equal(shared.tokens, repeated.tokens) and torch.equal(shared.tokens.cpu(), on_cpu.tokens)
    torch.testing.assert_close(shared.scores, repeated.scores, atol=1e-4, rtol=1e-5)


def test_label_on_the_gpu_matches_the_cpu(tmp_path):
    from PIL import Image

    from mmkit.cli.label import main as label_main

    from _clip import save_tiny_clip

    ckpt = save_tiny_clip(tmp_path / "clip")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        Image.effect_noise((48, 40), 40 + 20 * i).convert("RGB").save(photos / f"{i}.png")
    rows: dict[str, list[dict[str, str]]] = {}
    for n, device in enumerate(("cpu", "cuda")):
        out = tmp_path / f"{n}.csv"
        assert label_main([str(photos), "--labels", "cat,dog,car", "--model", str(ckpt), "--out", str(out),
                           "--device", device, "--precision", "fp32", "--all-scores", "--quiet"]) == 0
        with out.open() as f:
            rows[device] = sorted(csv.DictReader(f), key=lambda r: r["path"])
    assert [r["label"] for r in rows["cuda"]] == [r["label"] for r in rows["cpu"]]
    assert all(abs(float(g["score"]) - float(c["score"])) <= 1e-4 for g, c in zip(rows["cuda"], rows["cpu"]))


def test_transcribe_on_the_gpu_matches_the_cpu(tmp_path):
    import soundfile as sf

    from mmkit.audio import SAMPLE_RATE
    from mmkit.cli.bench.transcribe import synth_speechlike, write_toy_checkpoint
    from mmkit.cli.transcribe import main as transcribe_main

    model = write_toy_checkpoint(tmp_path / "whisper", d_model=64, encoder_layers=1, decoder_layers=2, heads=4,
                                 n_text_tokens=400, eot_scale=3.0)
    clips = []
    for i in range(3):
        clips.append(str(tmp_path / f"{i}.wav"))
        sf.write(clips[-1], synth_speechlike(3 + i, seed=i), SAMPLE_RATE, subtype="PCM_16")
    texts = {}
    for n, device in enumerate(("cpu", "cuda")):
        out = tmp_path / f"out{n}"
        assert transcribe_main([*clips, "--model", str(model), "--temperature", "0", "--max-new-tokens", "8",
                                "--language", "en", "--device", device, "--precision", "fp32", "-f", "json",
                                "-o", str(out), "--quiet"]) == 0
        texts[device] = [json.loads((out / f"{i}.json").read_text())["text"] for i in range(3)]
    assert texts["cuda"] == texts["cpu"]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_the_vit_recipe_fits_on_the_gpu_in_bf16_mixed(tmp_path, monkeypatch):
    from mmkit.cli import main

    from tests.test_cli import FIT, TINY

    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert TINY[-2:] == ["--trainer.precision", "32-true"]
    export = tmp_path / "run" / "export"
    assert main(["fit", "--config", FIT, *TINY[:-2], "--trainer.precision", "bf16-mixed",
                 "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--model.init_args.export_dir",
                 str(export), "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    model = ViT.from_pretrained(export)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert Path(export, "model.safetensors").is_file()


def test_seeded_translation_samples_on_the_gpu_do_not_depend_on_batches(tmp_path):
    """`RowSampling` draws each row from its own CUDA generator: the same samples at batch size 1 and 8, and top-k 1
    samples the greedy translations."""
    from mmkit.inference.translator import TranslationOptions, load_translator
    from tests.inference._translation_fixtures import write_marian_dir

    directory = write_marian_dir(tmp_path / "marian")
    texts = ["seven", "one hundred and twenty-three", "third", "forty-two", "nine hundred"]
    gpu = load_translator(directory, device="cuda")

    def sampled(batch_size: int) -> list:
        return gpu.translate(texts, TranslationOptions(temperature=1.2, seed=3, batch_size=batch_size))

    assert sampled(1) == sampled(8)
    assert gpu.translate(texts, TranslationOptions(top_k=1, seed=3)) == gpu.translate(texts)


def test_beam_n_best_translations_on_the_gpu_are_the_cpus(tmp_path):
    """A beam search's 3 best on the GPU: the CPU's hypotheses, scores within float noise."""
    from mmkit.inference.translator import TranslationOptions, load_translator
    from tests.inference._translation_fixtures import write_marian_dir

    directory = write_marian_dir(tmp_path / "marian")
    texts = ["seven", "one hundred and twenty-three", "third", "forty-two", "nine hundred"]
    options = TranslationOptions(beam_size=4, num_return_sequences=3, batch_size=2, max_new_tokens=10)
    cpu = load_translator(directory).translate(texts, options)
    gpu = load_translator(directory, device="cuda").translate(texts, options)
    assert [[c.tokens for c in r.candidates] for r in gpu] == [[c.tokens for c in r.candidates] for r in cpu]
    for g, c in zip(gpu, cpu):
        assert [x.score for x in g.candidates] == pytest.approx([x.score for x in c.candidates], abs=1e-3)

"""`mmkit generate` end to end on a tiny random-init export: files, manifest, seeding, and one clear
line (exit 2) for each bad input of issue 10 §7."""
from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mmkit.cli import main
from mmkit.models import VQGAN

from _clip import save_tiny_clip
from _dalle import write_tiny_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_tiny_export(tmp_path_factory.mktemp("t2i") / "export")


def test_writes_images_grid_and_manifest(export, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["generate", "a red circle on the left", "a large blue star", "--model", str(export), "--num-images",
                 "3", "--seed", "1", "--top-k", "4", "--out", str(out), "--quiet"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["prompt"] for m in manifest] == ["a red circle on the left", "a large blue star"]
    assert manifest[0]["seed"] == 1 and manifest[0]["top_k"] == 4 and manifest[0]["clip_scores"] is None
    for m in manifest:
        assert len(m["images"]) == 3
        assert Image.open(out / m["images"][0]).size == (8, 8)
        assert Image.open(out / m["grid"]).size == (24, 8)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    again = tmp_path / "again"
    main(["generate", "a red circle on the left", "--model", str(export), "--num-images", "3", "--seed", "1",
          "--top-k", "4", "--out", str(again), "--quiet"])
    assert (again / "000-a-red-circle-on-the-left-0.png").read_bytes() == \
        (out / "000-a-red-circle-on-the-left-0.png").read_bytes()


def test_an_earlier_runs_files_are_refused_unless_overwrite(export, tmp_path, capsys):
    """A second run into the same --out replaced images 0 and 1, kept the first run's 2 and 3 beside them and
    listed only its own in manifest.json: now refused in one line, and --overwrite replaces them on purpose."""
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)  # a folder holding other things is fine
    first = ["a red circle", "--model", str(export), "--num-images", "4", "--out", str(out), "--quiet"]
    assert main(["generate", *first]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _fails(["a red circle", "--model", str(export), "--num-images", "2", "--seed", "7", "--out", str(out)], capsys,
           f"--out {out} holds 000-a-red-circle-0.png and 3 more from an earlier run: give another --out, or "
           "--overwrite to replace them")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main(["generate", *first, "--seed", "7", "--overwrite"]) == 0
    assert json.loads((out / "manifest.json").read_text())[0]["seed"] == 7


def test_overwrite_removes_every_file_an_earlier_run_left(export, tmp_path):
    """4 images then 2 with --overwrite left the first run's images 2 and 3 (and another prompt's files) beside the
    second run's, which its manifest did not list: the runs mixed anyway. The user's own files stay."""
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "a blue star", "--model", str(export), "--num-images", "4", "--out",
                 str(out), "--quiet"]) == 0
    mine = ["notes.txt", "my-photo.png", "000-a-red-circle-4.jpg", "000-a-red-circle-x.png"]
    for name in mine:
        (out / name).write_text("the user's")
    (out / "001-kept-grid.png").mkdir()  # a folder is never removed, whatever its name
    assert main(["generate", "a red circle", "--model", str(export), "--num-images", "2", "--seed", "7", "--out",
                 str(out), "--overwrite", "--quiet"]) == 0
    written = ["000-a-red-circle-0.png", "000-a-red-circle-1.png", "000-a-red-circle-grid.png", "manifest.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*written, *mine, "001-kept-grid.png"])
    assert all((out / name).read_text() == "the user's" for name in mine)
    assert json.loads((out / "manifest.json").read_text())[0]["images"] == written[:2]


def test_top_k_0_is_off(export, tmp_path):
    """The API and the demo read top-k 0 as off; the command line refused it, so a model whose own default is a
    top-k (dalle-mini's 256, the recipe's 4) could not sample from every code but by naming the codebook size."""
    argv = ["generate", "a red circle", "--model", str(export), "--num-images", "3", "--seed", "5", "--quiet"]
    assert main([*argv, "--top-k", "0", "--out", str(tmp_path / "off")]) == 0
    assert main([*argv, "--top-k", "16", "--out", str(tmp_path / "all")]) == 0  # the whole codebook
    assert json.loads((tmp_path / "off" / "manifest.json").read_text())[0]["top_k"] is None
    for i in range(3):
        name = f"000-a-red-circle-{i}.png"
        assert (tmp_path / "off" / name).read_bytes() == (tmp_path / "all" / name).read_bytes()
    assert "0 = off" in " ".join(_parser_help().split())


def _parser_help() -> str:
    from mmkit.cli.generate import _parser

    return _parser().format_help()


def test_device_option(export, tmp_path, capsys, monkeypatch):
    """--precision fp16 was offered but always refused: there was no --device."""
    argv = ["generate", "a red circle", "--model", str(export), "--num-images", "2", "--quiet"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path / "cpu")]) == 0
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    name = "000-a-red-circle-1.png"
    assert (tmp_path / "cpu" / name).read_bytes() == (tmp_path / "default" / name).read_bytes()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails([*argv, "--device", "cuda", "--out", str(tmp_path / "gpu")], capsys,
           "--device cuda: CUDA is not available on this machine; use --device cpu")
    _fails([*argv, "--device", "tpu", "--out", str(tmp_path / "gpu")], capsys, "--device 'tpu': not a device")
    _fails([*argv, "--precision", "fp16", "--out", str(tmp_path / "gpu")], capsys,
           "fp16 autocast is for GPUs; on a CPU use bf16 or fp32")
    assert not (tmp_path / "gpu").exists()


def test_an_exports_own_sampling_settings_are_the_defaults(tmp_path, capsys):
    from _dalle import tiny_text_to_image

    t2i = tiny_text_to_image()
    t2i.defaults = {"guidance": 2.0, "top_k": 3}  # what DalleTask saves: its judged test settings
    export = t2i.save_pretrained(tmp_path / "export")
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--model", str(export), "--num-images", "1", "--out", str(out),
                 "--quiet"]) == 0
    (m,) = json.loads((out / "manifest.json").read_text())
    assert (m["guidance"], m["top_k"]) == (2.0, 3)
    doc = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**doc, "sampling": {"guidance": -1, "top_k": 3}}))
    _fails(["a red circle", "--model", str(export), "--out", str(tmp_path / "bad")], capsys, "sampling defaults")


def _fails(argv, capsys, match):
    assert main(["generate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("extra, match", [
    (["--num-images", "0"], "argument --num-images: must be >= 1, got 0"),
    (["--guidance", "-1"], "argument --guidance: must be >= 0, got -1.0"),
    (["--guidance", "-1e-1"], "argument --guidance: must be >= 0, got -0.1"),  # argparse alone: "expected one"
    (["--guidance", "inf"], "argument --guidance: must be finite, got inf"),
    (["--temperature", "-0.5"], "argument --temperature: must be > 0, got -0.5"),
    (["--temperature", "0"], "argument --temperature: must be > 0, got 0.0"),
    (["--temperature", "-inf"], "argument --temperature: must be finite, got -inf"),
    # finite in Python, inf on the float32 logits: a traceback from sampling
    (["--guidance", "1e39"], "argument --guidance: must be finite in float32 (at most 3.4e38), got 1e39"),
    (["--temperature", "1e39"], "argument --temperature: must be finite in float32 (at most 3.4e38), got 1e39"),
    (["--seed", "99999999999999999999"], "argument --seed: must be in [0, 2**64 - 1], got 99999999999999999999"),
    (["--seed", "-1"], "argument --seed: must be in [0, 2**64 - 1], got -1"),
    (["--top-k", "-1"], "argument --top-k: must be >= 0, got -1"),  # 0 is off (test_top_k_0_is_off)
    (["--top-p", "0"], "argument --top-p: must be > 0 and <= 1, got 0.0"),
    (["--top-p", "1.5"], "argument --top-p: must be > 0 and <= 1, got 1.5"),
])
def test_bad_settings_are_usage_errors(export, tmp_path, capsys, extra, match):
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "a red circle", "--model", str(export), "--out", str(tmp_path / "o"), "--quiet", *extra])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"mmkit generate: error: {match}", err
    assert not (tmp_path / "o").exists()


def test_top_k_beyond_the_codebook(export, tmp_path, capsys):
    _fails(["a red circle", "--model", str(export), "--out", str(tmp_path / "o"), "--quiet", "--top-k", "17"], capsys,
           "top_k must be in [0, 16] (the codebook's size; 0 or none: no top-k), got 17")


def test_bad_prompts(export, tmp_path, capsys):
    _fails(["   ", "--model", str(export), "--out", str(tmp_path / "o")], capsys, "empty prompt")
    _fails(["zebra giraffe", "--model", str(export), "--out", str(tmp_path / "o")], capsys, "no word the model knows")
    with pytest.raises(SystemExit) as stopped:  # command-line bytes that are not UTF-8 (lone surrogates in Python)
        main(["generate", "\udcff\udcfe circle", "--model", str(export), "--out", str(tmp_path / "o")])
    assert stopped.value.code == 2
    assert "argument prompts: not UTF-8 text (byte 0 of b'\\xff\\xfe circle')" in capsys.readouterr().err


@pytest.mark.parametrize("prompt", ["!!!", "123", "\u200b"])
def test_a_prompt_of_no_word_at_all_is_one_line(export, tmp_path, capsys, prompt):
    """No word at all encoded to padding alone and still made images (only all-unknown words were refused)."""
    _fails([prompt, "--model", str(export), "--out", str(tmp_path / "o")], capsys, "no word the model knows")
    assert not (tmp_path / "o").exists()


def test_unknown_words_and_long_prompts_warn(export, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert main(["generate", "a red zebra circle on the left at the top in the centre", "--model", str(export),
                     "--num-images", "1", "--out", str(tmp_path / "o"), "--quiet"]) == 0
    text = caplog.text
    # each once: the prompt was checked up front and again by the sampler, and each check logged its notes
    assert text.count("words outside the vocabulary ignored: zebra\n") == 1
    assert text.count("the prompt has 13 words; the model reads only the first 8\n") == 1


def test_bad_model_and_out(export, tmp_path, capsys):
    _fails(["a red circle", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys,
           "no such directory")
    other = tmp_path / "vq"
    VQGAN(ch=8, ch_mult=(1,), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=4, code_dim=4,
          norm_groups=4).save_pretrained(other)
    _fails(["a red circle", "--model", str(other), "--out", str(tmp_path / "o")], capsys,
           "holds an mmkit VQGAN checkpoint, not a text-to-image export")
    _fails(["a red circle", "--model", str(other / "config.json"), "--out", str(tmp_path / "o")], capsys,
           "config.json: a file, not a model directory")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    _fails(["a red circle", "--model", str(hf), "--out", str(tmp_path / "o")], capsys,
           "holds a checkpoint that is not mmkit's (e.g. transformers'), not a text-to-image export")
    (tmp_path / "wrong" / "dalle").mkdir(parents=True)
    VQGAN(ch=8, ch_mult=(1,), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=4, code_dim=4,
          norm_groups=4).save_pretrained(tmp_path / "wrong" / "dalle")
    (tmp_path / "wrong" / "tokenizer.json").write_text((export / "tokenizer.json").read_text())
    _fails(["a red circle", "--model", str(tmp_path / "wrong"), "--out", str(tmp_path / "o")], capsys,
           "holds a 'VQGAN' checkpoint, not DALLE")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        _fails(["a red circle", "--model", str(export), "--out", str(locked / "x")], capsys, "cannot create")
    blocker = tmp_path / "file"
    blocker.write_text("")
    _fails(["a red circle", "--model", str(export), "--out", str(blocker / "x")], capsys, "cannot create")


def test_clip_rerank_orders_images_by_score(export, tmp_path):
    from mmkit.inference.text_to_image import ClipReranker, TextToImage

    clip_dir = save_tiny_clip(tmp_path / "clip")
    reranker = ClipReranker.load(str(clip_dir))
    result = TextToImage.from_pretrained(export).generate(["a red circle"], 4, seed=0, top_k=8, reranker=reranker)[0]
    assert result.scores == sorted(result.scores, reverse=True) and len(set(result.scores)) > 1
    assert reranker.scores("a red circle", result.images) == pytest.approx(result.scores, abs=1e-5)
    out = tmp_path / "out"
    assert main(["generate", "a red circle", "--model", str(export), "--num-images", "2", "--rerank", str(clip_dir),
                 "--out", str(out), "--quiet"]) == 0
    scores = json.loads((out / "manifest.json").read_text())[0]["clip_scores"]
    assert len(scores) == 2 and scores[0] >= scores[1]


def _fails_leaving_nothing(argv, tmp_path, capsys, match):
    out = tmp_path / "made" / "out"
    _fails([*argv, "--out", str(out), "--quiet"], capsys, match)
    assert not (tmp_path / "made").exists()  # the folders this run created, removed: it wrote nothing


def test_seed_at_the_top_of_torchs_range(export, tmp_path):
    assert main(["generate", "a red circle", "--model", str(export), "--num-images", "1", "--seed", str(2**64 - 1),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0


def _count_rows(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Record the rows of every sampling call (and raise at call `fail_at`)."""
    import mmkit.inference.text_to_image as t2i

    rows, sample = [], t2i.sample_codes

    def counted(model, text, *args, **kwargs):
        rows.append(len(text))
        if len(rows) == fail_at:
            raise ValueError("stopped on purpose")
        return sample(model, text, *args, **kwargs)

    monkeypatch.setattr(t2i, "sample_codes", counted)
    return rows


def test_batches_bound_memory_and_do_not_change_the_images(export, tmp_path, monkeypatch):
    argv = ["generate", "a red circle", "a large blue star", "--model", str(export), "--num-images", "5",
            "--seed", "7", "--top-k", "8", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "one"), "--batch-size", "5"]) == 0
    rows = _count_rows(monkeypatch)
    assert main([*argv, "--out", str(tmp_path / "two"), "--batch-size", "2"]) == 0
    assert rows == [2, 2, 1, 2, 2, 1]  # never more than --batch-size images sampled at once
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 13
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    images = [Image.open(tmp_path / "two" / f"000-a-red-circle-{i}.png").tobytes() for i in range(5)]
    assert len(set(images)) > 1  # each image its own draws


def test_images_stream_to_disk_and_a_failure_leaves_no_manifest(export, tmp_path, monkeypatch, capsys):
    _count_rows(monkeypatch, fail_at=2)
    out = tmp_path / "out"
    _fails(["a red circle", "--model", str(export), "--num-images", "5", "--batch-size", "2", "--out", str(out),
            "--quiet"], capsys, "stopped on purpose; 2 of 5 images are in ")
    assert sorted(p.name for p in out.iterdir()) == ["000-a-red-circle-0.png", "000-a-red-circle-1.png"]


def test_huge_num_images_is_sampled_in_batches(export, tmp_path, monkeypatch, capsys):
    rows = _count_rows(monkeypatch, fail_at=3)  # the 1e8 images of the audit: stopped after three batches
    _fails(["a red circle", "--model", str(export), "--num-images", "100000000", "--out", str(tmp_path / "o"),
            "--quiet"], capsys, "stopped on purpose")
    assert rows == [8, 8, 8] and len(list((tmp_path / "o").iterdir())) == 16


def test_rerank_in_batches_keeps_scores_only_and_ranks_all_images(export, tmp_path):
    clip_dir = save_tiny_clip(tmp_path / "clip")
    manifests = []
    for batch in ("1", "6"):
        out = tmp_path / f"out{batch}"
        assert main(["generate", "a red circle", "--model", str(export), "--num-images", "6", "--top-k", "8",
                     "--rerank", str(clip_dir), "--batch-size", batch, "--out", str(out), "--quiet"]) == 0
        (m,) = json.loads((out / "manifest.json").read_text())
        manifests.append(m)
        assert m["clip_scores"] == sorted(m["clip_scores"], reverse=True) and len(set(m["clip_scores"])) > 1
        assert sorted(m["images"]) == [f"000-a-red-circle-{i}.png" for i in range(6)]
        best = Image.open(out / m["images"][0])
        assert Image.open(out / m["grid"]).crop((0, 0, *best.size)).tobytes() == best.tobytes()  # best first
    assert manifests[0]["images"] == manifests[1]["images"]
    assert manifests[0]["clip_scores"] == pytest.approx(manifests[1]["clip_scores"], abs=1e-5)


def _nan_weights(path):
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in load_file(path).items()}, path)


@pytest.mark.parametrize("part", ["vqgan", "dalle"])
def test_non_finite_weights_are_refused_at_load(export, tmp_path, capsys, part):
    bad = tmp_path / "bad"
    shutil.copytree(export, bad)
    _nan_weights(bad / part / "model.safetensors")
    _fails_leaving_nothing(["a red circle", "--model", str(bad)], tmp_path, capsys,
                           f"{bad / part / 'model.safetensors'}: non-finite weights (NaN or infinity) in ")


def test_non_finite_rerank_weights_are_refused(export, tmp_path, capsys):
    clip_dir = save_tiny_clip(tmp_path / "clip")
    _nan_weights(clip_dir / "model.safetensors")
    _fails_leaving_nothing(["a red circle", "--model", str(export), "--rerank", str(clip_dir)], tmp_path, capsys,
                           f"{clip_dir / 'model.safetensors'}: non-finite weights")


@pytest.mark.parametrize("text, match", [
    ("{}", 'tokenizer.json: not a word tokenizer: expected {"vocab": [words], "text_len": N >= 1}'),
    ('{"vocab": ', "tokenizer.json: not a word tokenizer: Expecting value: line 1 column 11"),
    ('{"vocab": ["red"], "text_len": "8"}', "tokenizer.json: not a word tokenizer: expected"),
    ("\udcff", "tokenizer.json: not a word tokenizer: 'utf-8' codec can't decode"),
])
def test_broken_tokenizer_json_is_one_line_naming_it(export, tmp_path, capsys, text, match):
    bad = tmp_path / "bad"
    shutil.copytree(export, bad)
    (bad / "tokenizer.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    _fails_leaving_nothing(["a red circle", "--model", str(bad)], tmp_path, capsys, f"{bad}/{match}")


@pytest.mark.parametrize("extra, match", [
    (["--rerank", "/nonexistent/path"], "--rerank /nonexistent/path: no such directory"),
    (["--rerank", "clips/none"], "--rerank clips/none: no such directory"),
    (["--rerank", "ViT-B-32"], "--rerank ViT-B-32 is an open_clip architecture: name its weights with "
                               "--rerank-pretrained"),
    (["--rerank-pretrained", "ViT-B-32.safetensors"], "--rerank-pretrained names weights for a --rerank "
                                                      "architecture: give --rerank too"),
    (["--batch-size", "0"], None),
])
def test_bad_rerank_and_batch_options(export, tmp_path, capsys, extra, match):
    if match is None:  # argparse's own usage error: exit 2 as well
        with pytest.raises(SystemExit) as e:
            main(["generate", "a red circle", "--model", str(export), "--out", str(tmp_path / "o"), *extra])
        assert e.value.code == 2 and "--batch-size: must be >= 1, got 0" in capsys.readouterr().err
        return
    _fails_leaving_nothing(["a red circle", "--model", str(export), *extra], tmp_path, capsys, match)


def test_a_rerank_file_is_not_a_clip_export(export, tmp_path, capsys):
    _fails_leaving_nothing(["a red circle", "--model", str(export), "--rerank", str(export / "config.json")],
                           tmp_path, capsys, "config.json: not a CLIP export directory")
    clip_dir = save_tiny_clip(tmp_path / "clip")
    _fails_leaving_nothing(["a red circle", "--model", str(export), "--rerank", str(clip_dir), "--rerank-pretrained",
                            "x.pt"], tmp_path, capsys, "is an export with its own weights: drop --rerank-pretrained")


def test_a_failed_run_removes_only_the_empty_folders_it_created(export, tmp_path, capsys):
    _fails_leaving_nothing(["zebra", "--model", str(export)], tmp_path, capsys, "no word the model knows")
    kept = tmp_path / "kept"
    kept.mkdir()
    _fails(["zebra", "--model", str(export), "--out", str(kept), "--quiet"], capsys, "no word the model knows")
    assert kept.is_dir()  # there before the run


@pytest.mark.parametrize("precision, quantize, tolerance", [("bf16", "none", 0.05), ("fp32", "int8", 0.05)])
def test_bf16_and_int8_sample_from_logits_close_to_fp32s(export, tmp_path, capsys, precision, quantize, tolerance):
    """generate takes the other tools' --precision and --quantize (bf16 emulated where the CPU lacks it: slow,
    still correct): the guided logits, teacher-forced over the same codes, within the stated tolerance of fp32's
    and combined in fp32; the VQGAN stays fp32; the manifest records the arithmetic; bf16 with int8 is one line."""
    from mmkit.inference.quantize import Int8Linear
    from mmkit.inference.text_to_image import TextToImage
    from mmkit.models.dalle import ClassifierFreeGuidance

    exact, fast = TextToImage.from_pretrained(export), TextToImage.from_pretrained(export)
    assert fast.set_arithmetic(precision, quantize) == precision
    prompt = "a red circle on the left"
    codes = exact.generate(prompt, num_images=2, seed=0)[0].codes
    tokens = torch.cat([exact.tokenizer([prompt]).expand(2, -1), codes.flatten(1) + exact.model.text_vocab_size], 1)
    with torch.no_grad():
        want = ClassifierFreeGuidance(exact.model, 3.0)(tokens)
        with fast._autocast():
            got = ClassifierFreeGuidance(fast.model, 3.0)(tokens)
    finite = torch.isfinite(want)
    assert got.dtype == torch.float32 and torch.equal(finite, torch.isfinite(got))
    assert (got[finite] - want[finite]).abs().max() <= tolerance * want[finite].abs().max()
    assert any(isinstance(m, Int8Linear) for m in fast.model.modules()) == (quantize == "int8")
    assert not any(isinstance(m, Int8Linear) for m in fast.vqgan.modules())
    out = tmp_path / "out"
    assert main(["generate", prompt, "--model", str(export), "--num-images", "2", "--out", str(out), "--quiet",
                 "--precision", precision, "--quantize", quantize]) == 0
    (m,) = json.loads((out / "manifest.json").read_text())
    assert (m["precision"], m["quantize"]) == (precision, quantize) and len(m["images"]) == 2
    capsys.readouterr()
    assert main(["generate", prompt, "--model", str(export), "--out", str(tmp_path / "no"), "--precision", "bf16",
                 "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "int8 Linear layers run on fp32" in err and not (tmp_path / "no").exists()

"""`mmkit bench label`: the end-to-end smoke run (open_clip, mmkit fp32 and mmkit int8 as whole
processes on a few generated images with the same random-init ViT-B-32 file), the agreement table
of every mmkit path, the --model EXPORT mode, and --device (refused in one line where this machine lacks
it, passed to every side). Never timings."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from mmkit.cli.bench.label import _commands, _parser, main
from mmkit.cli.bench.label_report import agreements


@pytest.mark.slow
def test_bench_label_runs_every_side_and_they_agree(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--images", "4", "--rounds", "1", "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 4 and result["top1_agreement"] == 1.0 and result["max_abs_prob_diff"] < 1e-2
    for side in ("open_clip", "mmkit", "mmkit int8"):
        assert len(result["runs"][side]["wall"]) == 1 and result["median_s"][side]["wall"] > 0
    assert result["speedup"]["wall"] == pytest.approx(
        result["median_s"]["open_clip"]["wall"] / result["median_s"]["mmkit"]["wall"], rel=0.02)
    int8 = result["agreement"]["mmkit int8"]
    assert set(int8) == {"open_clip", "mmkit"} and 0 < int8["mmkit"]["max_abs_prob_diff"] < 0.1
    printed = capsys.readouterr().out
    assert "mmkit vs open_clip: top-1 agreement 100.0%" in printed and "mmkit int8 vs mmkit: top-1" in printed
    with pytest.raises(SystemExit) as exit_:
        main(["--images", "0"])
    assert exit_.value.code == 2


def _csv(path, labels, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "score"] + [f"score:{x}" for x in labels])
        w.writerows(rows)
    return path


def test_agreements_compare_every_mmkit_path_with_open_clip_and_fp32(tmp_path):
    rows = [["a.jpg", "x", 0.6, 0.6, 0.4], ["b.jpg", "y", 0.7, 0.3, 0.7]]
    flipped = [rows[0], ["b.jpg", "x", 0.55, 0.55, 0.45]]
    outputs = {"open_clip": _csv(tmp_path / "o.csv", "xy", rows), "mmkit": _csv(tmp_path / "m.csv", "xy", rows),
               "mmkit int8": _csv(tmp_path / "q.csv", "xy", flipped)}
    got = agreements(outputs)
    assert set(got) == {"mmkit", "mmkit int8"} and set(got["mmkit"]) == {"open_clip"}
    assert got["mmkit"]["open_clip"]["top1_agreement"] == 1.0
    assert got["mmkit int8"]["mmkit"]["top1_agreement"] == 0.5
    assert got["mmkit int8"]["open_clip"]["max_abs_prob_diff"] == pytest.approx(0.25)


@pytest.mark.slow
def test_bench_label_embed_times_mmkit_embed_and_compares_the_vectors(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--embed", "--images", "4", "--rounds", "1", "--quantize", "none", "--precision", "fp32",
                 "--workdir", str(tmp_path / "work"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["embed"] and set(result["runs"]) == {"open_clip", "mmkit"}
    vs = result["agreement"]["mmkit"]["open_clip"]
    assert vs["images"] == 4 and vs["min_cosine"] > 0.999 and vs["same_nearest"] == 1.0
    assert result["median_s"]["mmkit"]["inner"] > 0  # "mmkit embed finished in" read from its log
    printed = capsys.readouterr().out
    assert printed.startswith("mmkit embed: 4 images") and "mmkit vs open_clip: cosine min 0.99" in printed
    assert main(["--embed", "--ensemble"]) == 2
    assert "--ensemble is for labelling" in capsys.readouterr().err


def test_embedding_agreement_aligns_files_and_skips_unreadable_ones(tmp_path):
    import numpy as np

    from mmkit.cli.bench.label_report import embedding_agreement

    def vectors(name, rows, files):
        np.save(tmp_path / f"{name}.npy", np.array(rows, dtype=np.float32))
        (tmp_path / f"{name}.paths.jsonl").write_text("".join(json.dumps(f) + "\n" for f in files))
        return tmp_path / f"{name}.npy"

    ref = vectors("ref", [[1, 0], [0.6, 0.8], [0, 1]], [{"path": p} for p in "abc"])
    nan = [float("nan")] * 2  # an unreadable file's row
    ours = vectors("ours", [[1, 0], nan, [0, 1], [0.8, 0.6]],
                   [{"path": "a"}, {"path": "x", "error": "not an image"}, {"path": "c"}, {"path": "b"}])
    got = embedding_agreement(ref, ours)
    assert got["images"] == 3 and got["min_cosine"] == pytest.approx(0.96)
    assert got["same_nearest"] == pytest.approx(2 / 3)  # b's nearest was c, is a now; a's and c's stay b
    args = _parser().parse_args(["--embed", "--quantize", "none"])
    commands = _commands(args, tmp_path / "imgs", tmp_path / "ckpt.safetensors", tmp_path)
    assert commands["open_clip"][-2] == str(tmp_path / "open_clip.npy")
    cmd = commands["mmkit bf16" if "mmkit bf16" in commands else "mmkit"]
    assert cmd[3:5] == ["embed", str(tmp_path / "imgs")] and "--labels" not in cmd and "--template" not in cmd
    assert cmd[cmd.index("--out") + 1].endswith(".npy")


def test_model_export_mode_has_no_open_clip_side_and_reads_its_labels(tmp_path):
    from mmkit.models.clip import CLIP

    torch.manual_seed(0)
    tiny = dict(visual=dict(embed_dim=16, image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
                text=dict(embed_dim=16, vocab_size=49408, max_len=16, dim=32, depth=1, num_heads=2))
    export = CLIP.from_config(tiny).save_pretrained(
        tmp_path / "export", metadata={"zeroshot_labels": ["red circle", "blue star"], "zeroshot_templates": ["a {}"]})
    args = _parser().parse_args(["--model", str(export), "--quantize", "int8", "none", "int8"])
    commands = _commands(args, tmp_path / "imgs", tmp_path / "unused.safetensors", tmp_path)
    assert list(commands) == ["mmkit int8", "mmkit"]
    cmd = commands["mmkit int8"]
    assert cmd[cmd.index("--labels") + 1] == "red circle,blue star" and cmd[cmd.index("--template") + 1] == "a {}"
    assert cmd[cmd.index("--quantize") + 1] == "int8" and "--pretrained" not in cmd
    assert main(["--model", str(tmp_path / "missing")]) == 2


def _no_heavy_work(monkeypatch, module):
    def refuse(*args, **kwargs):
        raise AssertionError("the bench started work it should have refused")
    monkeypatch.setattr(module, "run", refuse)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_in_one_line_before_any_work(monkeypatch, capsys):
    from mmkit.cli.bench import label

    _no_heavy_work(monkeypatch, label)
    assert main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "CUDA is not available" in err


def test_an_unknown_device_and_int8_off_the_cpu_are_refused(monkeypatch, capsys):
    from mmkit.cli.bench import label
    from mmkit.inference import precision

    _no_heavy_work(monkeypatch, label)
    assert main(["--device", "nonsense"]) == 2 and "not a device" in capsys.readouterr().err
    monkeypatch.setattr(precision, "check_device", lambda device: torch.device("cuda"))  # as on a GPU machine
    assert main(["--device", "cuda", "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--quantize int8 runs on the CPU" in err


def test_a_precision_mmkit_label_refuses_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """`--precision bogus` wrote 128 images and a ViT-B-32, then each side exited 1 with its usage error."""
    from mmkit.cli.bench import label

    _no_heavy_work(monkeypatch, label)
    for argv, message in ((["--precision", "fp16", "--device", "cpu"], "fp16 autocast is for GPUs"),
                          (["--precision", "bf16", "--quantize", "int8"], "--precision bf16 with --quantize int8")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err
    (tmp_path / "file").write_text("")
    assert main(["--workdir", str(tmp_path / "file" / "work")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["--model", str(tmp_path)]) == 2  # a folder, but no export: was a traceback after the images
    assert "not an mmkit checkpoint directory" in capsys.readouterr().err


def test_every_side_runs_on_the_device_asked_for(tmp_path):
    args = _parser().parse_args(["--device", "cuda:1", "--quantize", "none"])
    commands = _commands(args, tmp_path / "imgs", tmp_path / "ckpt.safetensors", tmp_path)
    assert list(commands) == ["open_clip", "mmkit"]
    assert commands["open_clip"][-1] == "cuda:1"  # the reference script's last argument
    cmd = commands["mmkit"]
    assert cmd[cmd.index("--device") + 1] == "cuda:1" and cmd.count("--device") == 1


def test_an_image_dir_both_sides_would_not_read_alike_is_refused_before_any_work(tmp_path, capsys):
    """Empty: "0 images" and exit 0. A .webp or a dot-file: the agreement failed after every timing."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    assert main(["--image-dir", str(photos)]) == 2
    assert capsys.readouterr().err.strip() == f"mmkit bench label: error: --image-dir {photos}: no images"
    Image.new("RGB", (8, 8)).save(photos / "a.jpg")
    Image.new("RGB", (8, 8)).save(photos / "b.webp")
    assert main(["--image-dir", str(photos)]) == 2
    assert "b.webp would be read by one side only" in capsys.readouterr().err
    (photos / "b.webp").unlink()
    Image.new("RGB", (8, 8)).save(photos / ".hidden.png")
    assert main(["--image-dir", str(photos)]) == 2
    assert ".hidden.png would be read by one side only" in capsys.readouterr().err


def test_made_images_and_checkpoint_appear_whole(tmp_path, monkeypatch):
    """An interrupted run left a half-made images folder (and checkpoint) that the next run reused as it was."""
    import mmkit.cli.bench.label as bench_label

    def interrupted(folder, count, sizes, seed=0):
        (folder / "set0").mkdir(parents=True)
        (folder / "set0" / "img_0000.jpg").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_label, "make_images", interrupted)
    args = bench_label._parser().parse_args(["--images", "4", "--sizes", "small"])
    with pytest.raises(KeyboardInterrupt):
        bench_label.run(args, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("native", [True, False])
def test_the_default_precision_is_resolved_up_front_and_names_its_side(native, tmp_path, monkeypatch, capsys):
    """With --precision auto on a CPU with native bf16, the side printed "mmkit" ran bf16 and int8's
    agreement was measured against it, while the docs said fp32."""
    from types import SimpleNamespace

    from mmkit.cli.bench.label import _usage_error
    from mmkit.cli.bench.label_report import print_report, report
    from mmkit.inference import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    args = _parser().parse_args([])
    assert _usage_error(args) is None and args.resolved_precision == ("bf16" if native else "fp32")
    commands = _commands(args, tmp_path / "imgs", tmp_path / "ckpt.safetensors", tmp_path)
    runs = {side: (cmd[cmd.index("--precision") + 1], cmd[cmd.index("--quantize") + 1])
            for side, cmd in commands.items() if side != "open_clip"}
    expected = {"mmkit int8": ("fp32", "int8"), "mmkit": ("fp32", "none")}  # int8 always beside an fp32 side
    if native:
        expected["mmkit bf16"] = ("bf16", "none")
    assert runs == expected
    rows = [["a.jpg", "x", 0.6, 0.6, 0.4], ["b.jpg", "y", 0.7, 0.3, 0.7]]
    flipped = [rows[0], ["b.jpg", "x", 0.55, 0.55, 0.45]]  # int8 differs from fp32 on one image
    outputs = {side: _csv(tmp_path / f"{side}.csv", "xy", flipped if side == "mmkit int8" else rows)
               for side in commands}
    agree = agreements(outputs)
    assert agree["mmkit int8"]["mmkit"]["top1_agreement"] == 0.5  # against fp32, whatever auto resolved to
    times = {side: {"wall": [2.0], "cpu": [2.0], "inner": [1.0]} for side in commands}
    result = report(SimpleNamespace(**{**vars(args), "images": 2}), times, [0.5], agree)
    assert (result["precision"], result["resolved_precision"]) == ("auto", "bf16" if native else "fp32")
    assert set(result["speedup_over_open_clip"]) == set(expected)
    print_report(result)
    printed = capsys.readouterr().out
    assert f"--precision auto = {'bf16' if native else 'fp32'}," in printed
    assert "mmkit int8 vs mmkit: top-1 agreement 50.0%" in printed
    assert ("mmkit bf16 vs mmkit: top-1 agreement 100.0%" in printed) is native


def test_an_explicit_fp32_run_has_one_fp32_side(tmp_path, monkeypatch):
    from mmkit.cli.bench.label import _usage_error
    from mmkit.inference import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    args = _parser().parse_args(["--precision", "fp32", "--quantize", "none"])
    assert _usage_error(args) is None
    assert list(_commands(args, tmp_path / "i", tmp_path / "c", tmp_path)) == ["open_clip", "mmkit"]
    args = _parser().parse_args(["--quantize", "none"])  # auto, no int8: no extra fp32 side to time
    assert _usage_error(args) is None
    assert list(_commands(args, tmp_path / "i", tmp_path / "c", tmp_path)) == ["open_clip", "mmkit bf16"]


def test_mmkit_seconds_after_imports_are_read_to_the_millisecond():
    """They were logged as %.1f: a 0.05 s change in a 1-2 s run was invisible."""
    import inspect

    from mmkit.cli import label as cli_label
    from mmkit.cli.bench.label import _in_process_seconds

    assert 'log.info("mmkit label finished in %.3f s"' in inspect.getsource(cli_label)  # what `mmkit label` logs
    stderr = "INFO mmkit.cli.label: mmkit label finished in %.3f s\n" % 1.23456
    assert _in_process_seconds("mmkit int8", stderr) == 1.235
    assert _in_process_seconds("mmkit", "no such line") != _in_process_seconds("mmkit", "no such line")  # nan

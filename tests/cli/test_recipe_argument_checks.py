"""A recipe's model sizes and trainer options out of range are the user's mistake: one line on stderr,
exit 2, before anything is built or written; never a traceback from a constructor or from Lightning,
nor a model trained and exported that `from_pretrained` then refuses."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from mmkit.cli import _user_error, main
from mmkit.cli.lightning import check_model_arguments
from tests.test_cli import FIT, REPO, TINY

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

GPT = str(REPO / "configs" / "gpt_fortunes.yaml")
MODEL = "--model.init_args.model.init_args"


@pytest.fixture
def cwd(tmp_path, tmp_path_factory, monkeypatch):
    """tmp_path as the working directory, so that the recipe's relative `runs/` lands there; the digits
    cache shared by the tests; one thread for the tiny models (shared CPUs)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path_factory.getbasetemp() / "digits-cache"))
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("field, value, why", [
    ("num_heads", "0", "must be positive, got 0"),  # was a ZeroDivisionError traceback
    ("patch_size", "0", "must be positive, got 0"),  # a ZeroDivisionError traceback
    ("dim", "-8", "must be positive, got -8"),  # a RuntimeError traceback from torch
    ("depth", "-1", "must not be negative, got -1"),  # trained no blocks, exit 0, an unloadable export
    ("num_heads", "-1", "must be positive, got -1"),  # built, then crashed mid-step
])
def test_a_vit_size_out_of_range_is_one_line_before_anything_is_written(cwd, capsys, field, value, why):
    # The recipe's own export_dir and default_root_dir (runs/vit_digits/...), relative to cwd.
    err = _one_line_error(capsys, ["fit", "--config", FIT, *TINY, f"{MODEL}.{field}", value])
    assert err == f"mmkit fit: error: {MODEL}: field {field!r} {why}"
    assert not (cwd / "runs").exists()


def test_a_gpt_size_out_of_range_is_one_line_before_anything_is_written(cwd, capsys):
    err = _one_line_error(capsys, ["fit", "--config", GPT, f"{MODEL}.num_heads", "0", "--trainer.fast_dev_run",
                                   "true", "--data.init_args.num_workers", "0"])
    assert err == f"mmkit fit: error: {MODEL}: field 'num_heads' must be positive, got 0"
    assert not (cwd / "runs").exists()


@pytest.mark.parametrize("given, why", [
    ({"size": "banana"}, "field 'size' unknown DALLE size 'banana'; known sizes: dalle_nano, dalle_tiny, dalle_small"),
    ({"num_heads": 5}, "field 'dim' (128) is not divisible by 'num_heads' (5) (dim 128 from size 'dalle_tiny')"),
    ({"dim": 100, "num_heads": 8}, "field 'dim' (100) is not divisible by 'num_heads' (8)"),
])
def test_a_dalle_size_is_checked_with_what_its_named_size_fills_in(given, why):
    """DALLE's recipe names a `size` (dim, depth, heads from a table): a typo'd name, or heads that the
    named width does not divide, is refused under the option instead of by the constructor, unnamed."""
    model = yaml.safe_load((REPO / "configs" / "dalle_shapes.yaml").read_text())["model"]
    model["init_args"]["model"]["init_args"].update(given)
    with pytest.raises(ValueError) as error:
        check_model_arguments(model, "model")
    assert str(error.value) == f"{MODEL}: {why}"


def test_a_nested_model_class_is_checked_under_its_own_option():
    """CLIP's towers are classes of their own (`visual: {class_path, init_args}`)."""
    model = yaml.safe_load((REPO / "configs" / "clip_shapes.yaml").read_text())["model"]
    model["init_args"]["model"]["init_args"]["visual"]["init_args"]["num_heads"] = 0
    with pytest.raises(ValueError) as error:
        check_model_arguments(model, "model")
    assert str(error.value) == (f"{MODEL}.visual.init_args: field 'num_heads' must be positive, got 0")


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_recipes_pass_the_check(recipe):
    """Every value a shipped recipe gives its model is in range; placeholders the data fills in later
    (vocab sizes, num_classes) are the constructor's defaults and left alone."""
    check_model_arguments(yaml.safe_load(recipe.read_text())["model"], "model")


def test_a_valid_size_given_on_the_command_line_is_accepted(cwd, capsys):
    """The check refuses only what is out of range: the tiny recipe, its sizes all given, trains."""
    assert main(["fit", "--config", FIT, *TINY, "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
                 "--model.init_args.export_dir", "null", "--trainer.default_root_dir", str(cwd / "run")]) == 0


def test_a_val_check_interval_beyond_the_training_batches_is_one_line(cwd, capsys):
    """Lightning refuses it only once the run starts (a ValueError raised in its fit loop): the shipped
    bert_wordnet_mlm recipe's `val_check_interval: 500` with `--trainer.limit_train_batches 2` did so."""
    err = _one_line_error(capsys, ["fit", "--config", FIT, *TINY, "--trainer.val_check_interval", "100",
                                   "--model.init_args.export_dir", "null",
                                   "--trainer.default_root_dir", str(cwd / "run")])
    assert err.startswith("mmkit fit: error: trainer: `val_check_interval` (100) must be less than or equal to "
                          "the number of the training batches (2)"), err


@pytest.mark.parametrize("option, value, rule", [
    ("accumulate_grad_batches", "0", ">= 1"),  # was a ZeroDivisionError traceback
    ("accumulate_grad_batches", "-2", ">= 1"),
    ("check_val_every_n_epoch", "0", ">= 1"),  # a ZeroDivisionError traceback at the first batch
    ("val_check_interval", "0", "> 0"),  # the same
    ("gradient_clip_val", "-1", ">= 0"),  # trained on, clipping to a negative norm (the gradients flipped)
    ("num_sanity_val_steps", "-5", ">= -1 (-1: every validation batch, 0: none)"),  # ran none, silently
    ("log_every_n_steps", "-3", ">= 0 (0: no per-step logging)"),  # logged every 3 steps
    ("min_epochs", "-2", ">= 0"),
])
def test_a_trainer_option_out_of_range_is_one_line_naming_it(cwd, capsys, option, value, rule):
    err = _one_line_error(capsys, ["fit", "--config", FIT, *TINY, f"--trainer.{option}", value])
    message, _, got = err.rpartition(" ")  # jsonargparse may read "-1" as -1.0 (`int | float`: test_cli.py)
    assert message == f"mmkit fit: error: --trainer.{option} must be {rule}, got" and float(got) == float(value), err
    assert not (cwd / "runs").exists()


def test_a_value_error_from_elsewhere_stays_a_traceback():
    """Only ValueErrors raised in mmkit or in Lightning's own code are the user's: one from a library
    Lightning or mmkit called (here json's) is a bug to see in full."""
    with pytest.raises(ValueError) as error:
        json.loads("{")
    assert _user_error(error.value) is None


def test_the_refusal_is_the_only_line_of_a_whole_process(tmp_path):
    """Checked before Lightning seeds: its "Seed set to 0" log line used to come first on stderr."""
    done = subprocess.run([sys.executable, "-m", "mmkit", "fit", "--config", FIT, f"{MODEL}.num_heads", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == \
        f"mmkit fit: error: {MODEL}: field 'num_heads' must be positive, got 0\n", done.stderr

"""Which options a command line gives (`mmkit.cli.lightning._given_keys`), as the config keys that
`_follow_root` and a resume's `_keep_given_model_options` leave as given: the short forms of nested classes'
arguments and options given within a mapping (inline or a file) count, the --config recipes do not."""
from __future__ import annotations

from pathlib import Path

import yaml
from jsonargparse import Namespace

from mmkit.cli.lightning import _follow_root, _given_keys, _keep_given_model_options


def _section(**trainer) -> Namespace:
    """A parsed `fit` section as LightningCLI holds it before instantiating (classes as class_path/init_args)."""
    vit = Namespace(class_path="mmkit.models.ViT", init_args=Namespace(dim=32, depth=1))
    model = Namespace(class_path="mmkit.tasks.ImageClassifier",
                      init_args=Namespace(model=vit, lr=0.002, export_dir="runs/x/export", extra={"a": 1}))
    data = Namespace(class_path="mmkit.data.DigitsDataModule", init_args=Namespace(root="runs/x/data"))
    return Namespace(model=model, data=data, trainer=Namespace(default_root_dir="runs/x", **trainer),
                     prediction_writer=Namespace(output="runs/x/predictions.csv"), config=[])


def test_short_forms_of_nested_classes_are_their_config_keys():
    section = _section()
    assert _given_keys(["fit", "--model.model.dim", "64", "--model.lr=0.1", "--data.root", "d"], section) == {
        "model.init_args.model.init_args.dim", "model.init_args.lr", "data.init_args.root"}
    assert _given_keys(["fit", "--model.init_args.model.init_args.depth", "2"], section) == {
        "model.init_args.model.init_args.depth"}


def test_options_within_a_mapping_are_given_and_the_config_files_are_not(tmp_path):
    section = _section()
    model = tmp_path / "model.yaml"
    model.write_text(yaml.safe_dump({"class_path": "mmkit.tasks.ImageClassifier", "init_args": {"lr": 0.1}}))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"init_args": {"export_dir": "e"}}}))
    argv = ["fit", "--config", str(recipe), "--model.init_args", '{"export_dir": "e", "extra": {"a": 2}}',
            "--trainer", "{default_root_dir: r}", "--data={'init_args': {'root': 'd'}}"]
    # a dict-typed argument (`extra`) is one value, as given whole
    assert _given_keys(argv, section) == {"model.init_args.export_dir", "model.init_args.extra",
                                          "trainer.default_root_dir", "data.init_args.root"}
    assert _given_keys(["fit", "--model", str(model), "--model", '{"model": {"init_args": {"dim": 8}}}'],
                       section) == {"model.class_path", "model.init_args.lr", "model.init_args.model.init_args.dim"}


def test_the_recipes_outputs_follow_a_root_given_in_a_mapping_unless_given_themselves(tmp_path):
    """`--trainer '{"default_root_dir": ...}'` was not seen as given (the outputs stayed in the recipe's folder,
    the export written over the recipe's), and an export_dir given within `--model.init_args '{...}'` was moved."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"default_root_dir": "runs/x"}}))
    section = _section()
    section.config = [recipe]
    section.trainer.default_root_dir = "mine"
    section.model.init_args.export_dir = "runs/x/kept"
    _follow_root(section, ["fit", "--config", str(recipe), "--trainer", '{"default_root_dir": "mine"}',
                           "--model.init_args", '{"export_dir": "runs/x/kept"}'])
    assert section.model.init_args.export_dir == "runs/x/kept"
    assert Path(section.data.init_args.root) == Path("mine/data")
    assert Path(section.prediction_writer.output) == Path("mine/predictions.csv")


def test_a_resume_keeps_the_model_options_given_in_a_mapping():
    given = _section().model
    merged = given.clone()
    merged.init_args.lr, merged.init_args.export_dir = 0.5, "checkpoint's"
    _keep_given_model_options(given, merged, ["fit", "--model", '{"init_args": {"lr": 0.002}}'])
    assert (merged.init_args.lr, merged.init_args.export_dir) == (0.002, "checkpoint's")
    _keep_given_model_options(given, merged, ["fit", "--model.init_args", "{}"])  # no value given: none put back
    assert merged.init_args.export_dir == "checkpoint's"

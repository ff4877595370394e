"""The layer rule (README's Layout section; the team's ARCHITECTURE.md, kept outside this repository), read
from the imports of every module in the layered packages with `ast` (nothing is imported; `mmkit/cli/`, the top
layer, is not read): core <- stems <- models <- {tasks, inference} <- {cli, demos}, the top-level `demos`
package (the Gradio app) included; weights/, data/ and audio/ are side layers below models/tasks.
A lower layer importing a higher one fails here,
naming the module and the import. data/ holds the LightningDataModules (as ARCHITECTURE.md has it), so
there Lightning is allowed only in a module that defines one: tokenizers, transforms and
datasets stay importable without Lightning.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mmkit"

# package -> import prefixes it must never use (its own higher layers, Lightning, the CLI).
_LIGHTNING = ("pytorch_lightning", "lightning")
_ABOVE_MODELS = ("mmkit.tasks", "mmkit.inference", "mmkit.cli", "demos")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("mmkit.stems", "mmkit.models", "mmkit.weights", "mmkit.data", *_ABOVE_MODELS, *_LIGHTNING),
    "stems": ("mmkit.models", *_ABOVE_MODELS, *_LIGHTNING),
    "weights": ("mmkit.models", *_ABOVE_MODELS, *_LIGHTNING),
    "models": (*_ABOVE_MODELS, *_LIGHTNING),
    "data": ("mmkit.stems", "mmkit.models", *_ABOVE_MODELS, *_LIGHTNING),
    "audio": ("mmkit.models", *_ABOVE_MODELS),
    "inference": ("mmkit.tasks", "mmkit.cli", "demos", "argparse", *_LIGHTNING),
    "tasks": ("mmkit.cli", "demos", "mmkit.inference.cli", "argparse"),
    # the demos are thin over inference/: what they share with a command lives below both (no CLI, no recipes)
    "demos": ("mmkit.cli", "mmkit.tasks", "argparse", *_LIGHTNING),
}
def _imports(path: Path) -> list[str]:
    """Absolute module names imported by `path` (relative imports resolved), any nesting level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]  # `from mmkit import models`
    return names


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)


def _defines_datamodule(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(isinstance(n, ast.ClassDef) and any(ast.unparse(b).endswith("LightningDataModule") for b in n.bases)
               for n in ast.walk(tree))


def _violations() -> set[tuple[str, str]]:
    found = set()
    for package, banned in FORBIDDEN.items():
        folder = ROOT.parent / "demos" if package == "demos" else ROOT / package
        for path in sorted(folder.rglob("*.py")):
            if package == "data" and _defines_datamodule(path):
                banned = tuple(b for b in banned if b not in _LIGHTNING)
            for name in _imports(path):
                if any(name == b or name.startswith(b + ".") for b in banned):
                    found.add((_module(path), name))
    return found


def test_imports_point_down_the_layers():
    bad = sorted(_violations())
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(f"  {m} imports {n}" for m, n in bad)


@pytest.mark.parametrize("source, expected", [
    ("import lightning.pytorch as pl", ["lightning.pytorch"]),
    ("from ..models import vit", ["mmkit.models", "mmkit.models.vit"]),
    ("def f():\n    from mmkit.models.vit import ViT", ["mmkit.models.vit", "mmkit.models.vit.ViT"]),
])
def test_the_reader_sees_every_import_form(tmp_path, source, expected, monkeypatch):
    # Lazy imports inside functions and relative imports count: the rule is about dependencies.
    pkg = tmp_path / "mmkit" / "weights"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text(source + "\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "mmkit")
    assert _imports(pkg / "x.py") == expected

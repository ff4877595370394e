"""The inference layer stands on its own: importing every `mmkit.inference` module (and running
`mmkit label`'s command module) pulls in neither Lightning nor, for inference/, argparse; and
`mmkit.tasks` keeps no command line (issue 8: one layer per job)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mmkit

PACKAGE = Path(mmkit.__file__).parent


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_inference_modules_import_no_lightning_argparse_tasks_or_cli():
    for path in sorted((PACKAGE / "inference").glob("*.py")):
        bad = {m for m in _imports(path)
               if m.split(".")[0] in ("pytorch_lightning", "lightning", "argparse")
               or m.startswith(("mmkit.tasks", "mmkit.cli", "demos"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_zero_shot_and_classify_tasks_keep_no_command_line():
    # (tasks/transcribe.py moves out in its own change; the whole-package layer test covers all.)
    for name in ("clip_task", "image_classifier", "label", "classify", "zero_shot"):
        assert "argparse" not in _imports(PACKAGE / "tasks" / f"{name}.py"), name


def test_importing_the_label_tool_and_the_scorer_does_not_load_lightning():
    code = ("import sys, mmkit.cli.label, mmkit.inference.zero_shot, mmkit.inference.classifier, "
            "mmkit.inference.writers; print(sorted(m for m in sys.modules if 'pytorch_lightning' in m)[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

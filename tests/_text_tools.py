"""Shared pieces of the text tools' command-line tests (`embed`, `classify-text`, `fill-mask`,
`generate-text`, `translate`): a tiny model per tool, and the check that a mistake is one line."""
from __future__ import annotations

from pathlib import Path

from _bert import write_tiny_bert
from _gpt import write_tiny_gpt2

from tests.inference._translation_fixtures import write_native_export


def write_text_tool_models(root: Path) -> dict[str, Path]:
    """{tool: its tiny random-init model folder under `root`}."""
    write_tiny_bert(root / "mlm", "mlm")
    write_tiny_bert(root / "clf", "classify")
    write_tiny_gpt2(root / "gpt")
    return {"embed": root / "mlm", "classify-text": root / "clf", "fill-mask": root / "mlm",
            "generate-text": root / "gpt", "translate": write_native_export(root / "translate")}


def one_line(capsys, prog: str) -> str:
    """The captured stderr, asserted to be one error line from `mmkit PROG`."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"mmkit {prog}: error: "), err
    return err

"""What the text tools write never costs the user a file (`mmkit embed`, `classify-text`, `translate`): an
--export into a folder holding another model, or an output that is the input itself (by name, symbolic or
hard link), is one line on stderr and exit 2 before the model loads, nothing touched; an export's weights
get the permissions its config gets (0666 less the umask), not safetensors' owner-only 0600; a weights file
that cannot be read for lack of permission says so, not "No such file or directory"."""
from __future__ import annotations

import builtins
import os
import shutil

import pytest
from _text_tools import one_line, write_text_tool_models

from mmkit.cli import main
from mmkit.inference.translator import TranslatorError, load_translator


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_text_tool_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading a model fails the test: the mistake must be met before."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    for where in ("mmkit.inference.encoder.load_encoder", "mmkit.inference.translator.load_translator"):
        monkeypatch.setattr(where, refuse)


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_an_export_into_a_folder_holding_another_model_is_refused(models, tmp_path, capsys, no_model_load):
    bert = shutil.copytree(models["embed"], tmp_path / "bert")
    before = _files(bert)
    assert main(["translate", "ten", "--model", str(models["translate"]), "--export", str(bert)]) == 2
    err = one_line(capsys, "translate")
    assert f"{bert}: the folder holds files already" in err and "new or empty folder" in err
    assert _files(bert) == before


def test_the_export_api_refuses_a_folder_holding_files(models, tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(TranslatorError, match="the folder holds files already"):
        load_translator(models["translate"]).export(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_translate_help_says_the_export_folder_must_be_new_or_empty(capsys):
    with pytest.raises(SystemExit):
        main(["translate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "as an mmkit export in OUT, a new or empty folder (one that holds files is refused" in help_text


@pytest.mark.parametrize("made", [True, False])
def test_an_export_into_an_empty_or_new_folder_gets_0666_less_the_umask(models, tmp_path, made):
    export = tmp_path / "export"
    if made:
        export.mkdir()
    old = os.umask(0o027)
    try:
        assert main(["translate", "--model", str(models["translate"]), "--export", str(export)]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in export.iterdir()}
    assert {"config.json", "model.safetensors", "spm.model"} <= set(modes) and set(modes.values()) == {0o640}, modes


TOOLS = {"embed": ("ein.jsonl", "--out"), "classify-text": ("cin.csv", "--out"),
         "translate": ("trin.txt", "--output")}


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_an_output_that_is_the_input_is_refused(models, tmp_path, capsys, no_model_load, tool, how):
    name, option = TOOLS[tool]
    source = tmp_path / name
    source.write_text({".jsonl": '{"text": "the cat"}\n', ".csv": "text\nthe cat\n", ".txt": "ten\n"}[source.suffix])
    out = tmp_path / f"other{source.suffix}"
    if how == "same":
        out = source
    elif how == "symlink":
        out.symlink_to(source)
    else:
        os.link(source, out)
    before = source.read_bytes()
    argv = [tool, str(source), "--model", str(models[tool]), option, str(out)]
    assert main(argv) == 2
    err = one_line(capsys, tool)
    assert f"{option} {out} is the input file {source}" in err
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == sorted({name, out.name})


def _unreadable(monkeypatch, name: str) -> None:
    """Files called `name` as chmod 000 makes them for a user who is not root: open() is refused, and
    safetensors' reader says "No such file or directory" (what it says of every file it cannot open)."""
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) == name:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    def refusing_load_file(path, *args, **kwargs):
        raise FileNotFoundError(f"No such file or directory: {path}")

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr("mmkit.weights.native.load_file", refusing_load_file)


@pytest.mark.parametrize("tool", list(TOOLS))
def test_an_unreadable_weights_file_says_permission_denied(models, tmp_path, capsys, monkeypatch, tool):
    name, option = TOOLS[tool]
    source = tmp_path / name
    source.write_text({".jsonl": '{"text": "the cat"}\n', ".csv": "text\nthe cat\n", ".txt": "ten\n"}[source.suffix])
    out = tmp_path / f"out{source.suffix}"
    _unreadable(monkeypatch, "model.safetensors")
    assert main([tool, str(source), "--model", str(models[tool]), option, str(out)]) == 2
    err = one_line(capsys, tool)
    assert f"{models[tool] / 'model.safetensors'}: permission denied" in err and "FileNotFound" not in err, err
    assert not out.exists()

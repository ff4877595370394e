"""A corrupt or tampered translation export is refused at load in one line naming the file and the
field, never a traceback at run time: config.json that is no object, metadata that is no object or
holds ids outside the vocabulary, a tokenizer path leaving the directory, an unreadable spm.model,
a newer export format."""
from __future__ import annotations

import json
import shutil

import pytest

from mmkit.cli import main as mmkit_main
from mmkit.inference.translator import TranslatorError, load_translator
from mmkit.weights import WeightsError
from tests.inference._translation_fixtures import write_native_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return write_native_export(tmp_path_factory.mktemp("native"))


def _copy(export, tmp_path, edit=None):
    """A copy of `export` whose config.json document is `edit(doc)` (edited in place or returned)."""
    directory = tmp_path / "copy"
    shutil.copytree(export, directory)
    if edit is not None:
        doc = json.loads((directory / "config.json").read_text())
        doc = edit(doc) or doc
        (directory / "config.json").write_text(json.dumps(doc))
    return directory


def _meta(**fields):
    return lambda doc: doc["metadata"].update(fields)


def _refused(directory, *parts):
    with pytest.raises((TranslatorError, WeightsError)) as err:
        load_translator(directory)
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in parts), message


@pytest.mark.parametrize("edit, named", [
    (lambda doc: [1, 2], "expected a JSON object, found a list"),
    (lambda doc: doc.update(metadata=None), "metadata: expected a JSON object, found null"),
    (lambda doc: doc.update(metadata=[1]), "metadata: expected a JSON object, found a list"),
    (_meta(tokenizer=5), "field 'tokenizer' must be a string, got 5"),
    (_meta(start_id=-1), "field 'start_id' holds id -1, outside the vocabulary"),
    (_meta(eos_id=99999), "field 'eos_id' holds id 99999, outside the vocabulary"),
    (_meta(pad_id=99999), "field 'pad_id' holds id 99999"),
    (_meta(pad_id="0"), "field 'pad_id' must be an integer"),
    (_meta(suppress=[5, 99999]), "field 'suppress' holds id 99999"),
    (_meta(max_source_tokens=0), "field 'max_source_tokens' must be positive"),
    (_meta(tokenizer="/etc/passwd"), "field 'tokenizer' must name a file inside the model directory"),
    (_meta(tokenizer="../../spm.model"), "field 'tokenizer' must name a file inside the model directory"),
    (lambda doc: doc.update(format_version=99), "written by a newer mmkit (format 99; this one reads ≤ 1)"),
    (lambda doc: doc.update(format_version="1"), "field 'format_version' must be a positive integer"),
])
def test_a_tampered_config_is_one_line_naming_the_file_and_field(export, tmp_path, edit, named):
    directory = _copy(export, tmp_path, edit)
    _refused(directory, str(directory / "config.json"), named)


@pytest.mark.parametrize("content", [b"", b"\x8b" * 1000, "first 1000 bytes"])
def test_an_unreadable_spm_model_is_one_line_naming_the_file(export, tmp_path, content):
    directory = _copy(export, tmp_path)
    spm = directory / "spm.model"
    spm.write_bytes(spm.read_bytes()[:1000] if content == "first 1000 bytes" else content)
    _refused(directory, f"{spm}: not a readable SentencePiece model")


def test_the_cli_says_it_in_one_line_with_exit_2(export, tmp_path, capsys):
    directory = _copy(export, tmp_path, _meta(start_id=-1))
    source = tmp_path / "in.txt"
    source.write_text("seven\n")
    assert mmkit_main(["translate", "--model", str(directory), str(source)]) == 2
    err = capsys.readouterr().err
    assert "'start_id' holds id -1" in err and "Traceback" not in err


def test_the_untampered_export_still_translates(export):
    assert load_translator(export).translate(["seven"])[0].error is None

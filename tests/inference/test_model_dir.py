"""`read_model_dir`: the one reader of `--model DIR` config.json for the BERT and GPT loaders; `export_folder`: an
export written whole or not at all."""
import pytest

from mmkit.inference.encoder import load_encoder
from mmkit.inference.model_dir import read_model_dir
from mmkit.inference.text_generation import load_text_generator
from mmkit.weights.native import WeightsError


def test_reads_the_config_object(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    assert read_model_dir(tmp_path) == (tmp_path, {"model_type": "gpt2"})


@pytest.mark.parametrize("load", [read_model_dir, load_encoder, load_text_generator])
def test_bad_directories_give_one_line_errors(tmp_path, load):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load(tmp_path / "absent")
    with pytest.raises(WeightsError, match="no config.json"):
        load(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(WeightsError, match="expected a JSON object"):
        load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="invalid JSON"):
        load(tmp_path)


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])
def test_an_export_folder_is_there_whole_or_not_at_all(tmp_path, existing):
    """What the body wrote moves into the folder when it ends (config.json last); a body failing for room, as an
    OSError or as safetensors' own error, is one `WriteFailed` line naming the folder, and takes back what it
    wrote: a new folder is gone, an empty one is empty again."""
    from safetensors import SafetensorError

    from mmkit.errors import WriteFailed
    from mmkit.inference.model_dir import export_folder

    target = tmp_path / "out"
    if existing:
        target.mkdir()
    with export_folder(target) as stage:
        (stage / "config.json").write_text("{}")
        (stage / "weights.bin").write_bytes(b"x")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "weights.bin"]
    for n, failure in enumerate([OSError(28, "No space left on device"),
                                 SafetensorError("Error while serializing: I/O error: No space left on device "
                                                 "(os error 28)")]):
        folder = tmp_path / f"again{n}"
        if existing:
            folder.mkdir()
        with pytest.raises(WriteFailed) as err:
            with export_folder(folder) as stage:
                (stage / "model.safetensors").write_bytes(b"x")
                raise failure
        assert str(err.value) == f"cannot write the export {folder}: No space left on device; nothing was written"
        assert (list(folder.iterdir()) == []) if existing else not folder.exists()
    with pytest.raises(WeightsError, match="holds files already"):
        with export_folder(target):
            pass

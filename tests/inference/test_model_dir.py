"""`read_model_dir`: the one reader of `--model DIR` config.json for the BERT and GPT loaders."""
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

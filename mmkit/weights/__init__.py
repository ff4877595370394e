"""Weight import/export: native checkpoints (config.json + safetensors) and one importer per
ecosystem (`from_timm`, ...), each a declarative key map plus named tensor transforms."""
from mmkit.weights.native import PretrainedMixin, WeightsError, load_state_dict_strict, read_state_dict

__all__ = ["PretrainedMixin", "WeightsError", "load_state_dict_strict", "read_state_dict"]

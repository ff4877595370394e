"""Weight import/export: native checkpoints (config.json + safetensors) and one converter per
ecosystem (`from_timm`, ...), each a declarative key map plus named tensor transforms that returns
a `Converted` (config + state dict); the model classes build from it."""
from mmkit.weights.native import Converted, PretrainedMixin, WeightsError, load_state_dict_strict, read_state_dict

__all__ = ["Converted", "PretrainedMixin", "WeightsError", "load_state_dict_strict", "read_state_dict"]

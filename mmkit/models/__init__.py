"""Plain `nn.Module` models built from the core (no Lightning here)."""
from mmkit.models.gpt import GPT
from mmkit.models.vit import PretrainedViT, ViT

__all__ = ["GPT", "PretrainedViT", "ViT"]

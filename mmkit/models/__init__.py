"""Plain `nn.Module` models built from the core (no Lightning here)."""
from mmkit.models.vit import ViT

__all__ = ["ViT"]

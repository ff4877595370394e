"""Plain `nn.Module` models built from the core (no Lightning here)."""
from mmkit.models.gpt import GPT
from mmkit.models.vit import PretrainedViT, ViT
from mmkit.models.whisper import Whisper

__all__ = ["GPT", "PretrainedViT", "ViT", "Whisper"]

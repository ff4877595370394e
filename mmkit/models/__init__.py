"""Plain `nn.Module` models built from the core (no Lightning here)."""
from mmkit.models.clip import CLIP, CLIPTextTower, CLIPVisionTower, PretrainedCLIP
from mmkit.models.dalle import DALLE
from mmkit.models.dalle_bart import DalleBart
from mmkit.models.bert import BERT
from mmkit.models.gpt import GPT
from mmkit.models.seq2seq import Seq2Seq
from mmkit.models.t5 import T5
from mmkit.models.vit import PretrainedViT, ViT
from mmkit.models.vqgan import VQGAN
from mmkit.models.whisper import Whisper

__all__ = ["BERT", "CLIP", "CLIPTextTower", "CLIPVisionTower", "DALLE", "DalleBart", "GPT", "PretrainedCLIP",
           "PretrainedViT", "Seq2Seq", "T5", "ViT", "VQGAN", "Whisper"]

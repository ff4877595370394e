"""LightningModules ("systems") around plain models, and the inference APIs built on them."""
from mmkit.tasks.classify import Classifier, Prediction, write_predictions
from mmkit.tasks.image_classifier import ImageClassifier

__all__ = ["Classifier", "ImageClassifier", "Prediction", "write_predictions"]

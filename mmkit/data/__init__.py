"""Data: safe image decoding, class-folder and caption DataModules, audio manifests, one's own text for
masked-LM pretraining and translation pairs, tokenizers and the embedded offline datasets (scikit-learn
digits, generated shapes, espeak-ng speech).

Names resolve lazily (PEP 562) so that importing one light module, e.g. `mmkit.data.images`
from `mmkit label`, does not import Lightning, timm and scikit-learn with it.
"""
from __future__ import annotations

from mmkit._lazy import lazy_exports

_EXPORTS = {
    "mmkit.data.images": ["IMAGE_EXTENSIONS", "ImageLoadError", "check_image", "load_image", "scan_images",
                           "to_rgb"],
    "mmkit.data.image_folder": ["ImageFileDataset", "ImageFolderDataModule", "SkippedSample", "collate_skipping",
                                "stratified_split"],
    "mmkit.data.digits": ["DigitsDataModule", "write_digits_folder"],
    "mmkit.data.captions": ["CaptionCollate", "CaptionDataset", "CaptionTableDataModule", "SidecarCaptionDataModule",
                            "find_sidecar_captions", "read_caption_table"],
    "mmkit.data.shapes": ["ShapesDataModule", "write_shapes_folder"],
    "mmkit.data.audio_manifest": ["AudioManifestDataModule", "LengthBucketBatchSampler", "SpeechCollator",
                                  "read_manifest"],
    "mmkit.data.char_tokenizer": ["CharTokenizer", "normalize_text"],
    "mmkit.data.espeak_corpus": ["EspeakDataModule", "write_espeak_corpus"],
    "mmkit.data.bert_text": ["MaskedLMDataModule"],
    "mmkit.data.translation_pairs": ["TranslationPairsDataModule", "read_pairs_file"],
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS, globals())

"""Data: safe image decoding, class-folder DataModules and embedded offline datasets.

Images follow torchvision's ImageFolder layout with timm transforms; the digits recipe
dataset comes from scikit-learn's bundled copy, so nothing is downloaded.
"""

from mmkit.data.digits import DigitsDataModule, write_digits_folder
from mmkit.data.image_folder import (
    ImageFileDataset,
    ImageFolderDataModule,
    SkippedSample,
    collate_skipping,
    stratified_split,
)
from mmkit.data.images import IMAGE_EXTENSIONS, ImageLoadError, check_image, load_image, scan_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "DigitsDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageLoadError",
    "SkippedSample",
    "check_image",
    "collate_skipping",
    "load_image",
    "scan_images",
    "stratified_split",
    "write_digits_folder",
]

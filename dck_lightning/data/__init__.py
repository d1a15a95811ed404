"""LightningDataModules, collate functions, batch augmentation and synthetic data.

Batch conventions (after ``on_after_batch_transfer``, i.e. what a task's step sees):

- classification: ``(images, labels)``, ``images`` ``float32[B, C, H, W]`` normalised,
  ``labels`` ``int64[B]``.
- detection: ``(images, targets)``, ``targets`` a list of dicts with ``boxes``
  ``float32[N, 4]`` (xyxy pixels), ``labels`` ``int64[N]`` (0-based), ``difficult``
  ``bool[N]``, ``orig_size`` ``int64[2]`` (H, W), ``image_id`` ``int``.
- segmentation: ``(images, targets)``, ``targets`` a list of dicts with ``mask``
  ``int64[H, W]`` (255 = ignore), ``orig_size``, ``image_id``.
"""

from .base import BaseDataModule, InMemoryClassificationDataModule, split_train_val
from .batch_augment import (
    ClassificationBatchAugment,
    flip_targets,
    normalize,
    random_affine,
    random_crop,
    random_horizontal_flip,
    to_float,
)
from .cifar import CIFAR10_CLASSES, CIFAR10DataModule, read_cifar_batches
from .collate import detection_collate
from .errors import DataNotFoundError, prepare_command
from .idx import read_idx, write_idx
from .image_folder import ImageFolderDataModule, decode_images, load_image_folder
from .mnist import MNIST_FILES, MNISTDataModule
from .shapes import SHAPE_NAMES, RenderedShapes, render_shapes
from .synthetic import SyntheticShapesDataModule, SyntheticShapesDataset
from .tensor_dataset import BatchedTensorDataset, passthrough_collate
from .voc import VOCDetectionDataModule, VOCSegmentationDataModule

__all__ = [
    "BaseDataModule",
    "BatchedTensorDataset",
    "CIFAR10DataModule",
    "CIFAR10_CLASSES",
    "ClassificationBatchAugment",
    "DataNotFoundError",
    "ImageFolderDataModule",
    "InMemoryClassificationDataModule",
    "MNISTDataModule",
    "MNIST_FILES",
    "RenderedShapes",
    "SHAPE_NAMES",
    "SyntheticShapesDataModule",
    "SyntheticShapesDataset",
    "decode_images",
    "detection_collate",
    "flip_targets",
    "load_image_folder",
    "normalize",
    "passthrough_collate",
    "prepare_command",
    "random_affine",
    "random_crop",
    "random_horizontal_flip",
    "read_cifar_batches",
    "read_idx",
    "write_idx",
    "VOCDetectionDataModule",
    "VOCSegmentationDataModule",
    "render_shapes",
    "split_train_val",
    "to_float",
]

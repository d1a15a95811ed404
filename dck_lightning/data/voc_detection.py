"""Pascal VOC object detection: annotation parsing and the dataset.

Annotations are read with :meth:`torchvision.datasets.VOCDetection.parse_voc_xml`
and checked (class names, box inside the image, corners in order) once, at dataset
construction. VOC box corners are 1-based inclusive pixel indices; they become
continuous pixel coordinates ``(xmin - 1, ymin - 1, xmax, ymax)`` (the detectron2
convention), so a box ``xmin=1 .. xmax=W`` spans the whole width ``[0, W]`` and a box with
``xmin == xmax`` is one pixel wide.

A target holds every object, ``difficult`` ones flagged (the mAP metric ignores
them); with ``keep_difficult=False`` (training) they are left out.
"""

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torchvision.datasets import VOCDetection

from dck_lightning.data.transforms import apply_detection_transform, detection_eval_transform
from dck_lightning.data.voc_common import (
    VOC_CLASSES,
    InvalidAnnotationError,
    PathLike,
    VOCImageSetDataset,
    image_file_size,
    image_set_file,
    keep_valid,
    read_image_set,
    read_rgb_image,
    require_file,
    year_dir,
)

CLASS_INDEX: dict[str, int] = {name: index for index, name in enumerate(VOC_CLASSES)}
#: How far (pixels) a box corner may stick out of the image before it is an error;
#: smaller overhangs (``xmin=0`` in a 1-based file) are clipped.
BOX_TOLERANCE = 1.0

__all__ = ["VOCDetectionDataset", "VOCDetectionRecord", "parse_voc_annotation", "required_paths"]


@dataclass(frozen=True)
class VOCDetectionRecord:
    """One parsed, checked annotation.

    Attributes:
        image_id: file stem, e.g. ``"000001"`` or ``"2008_000002"``.
        image_path, annotation_path: the JPEG and the XML.
        height, width: image size the boxes refer to.
        boxes: ``float32[N, 4]`` ``xyxy`` in continuous pixel coordinates.
        labels: ``int64[N]`` 0-based indices into :data:`VOC_CLASSES`.
        difficult: ``bool[N]``.
    """

    image_id: str
    image_path: Path
    annotation_path: Path
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def _annotated_size(annotation: dict[str, Any]) -> Optional[tuple[int, int]]:
    """``(height, width)`` from ``<size>``, or ``None`` when absent or zero."""
    size = annotation.get("size")
    if not isinstance(size, dict):
        return None
    try:
        height, width = int(float(size["height"])), int(float(size["width"]))
    except (KeyError, TypeError, ValueError):
        return None
    return (height, width) if height > 0 and width > 0 else None


def _parse_object(obj: Any, path: Path) -> tuple[int, list[float], bool]:
    """``(label, [xmin, ymin, xmax, ymax] as written, difficult)`` of one ``<object>``."""
    if not isinstance(obj, dict):
        raise InvalidAnnotationError(path, f"malformed <object> element: {obj!r}")
    name = obj.get("name")
    if not isinstance(name, str):
        raise InvalidAnnotationError(path, "an <object> has no single <name>")
    name = name.strip()
    if name not in CLASS_INDEX:
        raise InvalidAnnotationError(
            path, f"unknown class {name!r}; expected one of {', '.join(VOC_CLASSES)}"
        )
    box = obj.get("bndbox")
    try:
        corners = [float(box[key]) for key in ("xmin", "ymin", "xmax", "ymax")]
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidAnnotationError(
            path, f"object {name!r} has a missing or non-numeric <bndbox> ({box!r})"
        ) from err
    difficult = str(obj.get("difficult", "0")).strip() not in ("", "0")
    return CLASS_INDEX[name], corners, difficult


def _to_pixel_box(
    corners: list[float], height: int, width: int, path: Path, label: int
) -> list[float]:
    """Check a 1-based VOC box and return it as clipped continuous ``xyxy``."""
    xmin, ymin, xmax, ymax = corners
    described = f"box of {VOC_CLASSES[label]!r} (xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g})"
    # Inclusive corners: xmax == xmin is a box one pixel wide ([xmin - 1, xmax] continuous).
    if xmax < xmin or ymax < ymin:
        raise InvalidAnnotationError(path, f"{described} has its max corner before its min corner")
    x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax
    if (
        x1 < -BOX_TOLERANCE
        or y1 < -BOX_TOLERANCE
        or x2 > width + BOX_TOLERANCE
        or y2 > height + BOX_TOLERANCE
    ):
        raise InvalidAnnotationError(path, f"{described} lies outside the {width}x{height} image")
    return [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]


def parse_voc_annotation(annotation_path: Path, image_path: Path) -> VOCDetectionRecord:
    """Parse and check one VOC annotation XML.

    The image size comes from ``<size>``, or from the image header when ``<size>``
    is missing. Raises :class:`MissingSampleFileError` when either file is missing
    and :class:`InvalidAnnotationError` for XML that does not parse, unknown class
    names, and boxes outside the image or with the max corner before the min corner.
    """
    require_file(annotation_path, "annotation XML")
    require_file(image_path, "image file")
    try:
        root = ET.parse(annotation_path).getroot()
    except ET.ParseError as err:
        raise InvalidAnnotationError(annotation_path, f"XML does not parse ({err})") from err
    if root.tag != "annotation":
        raise InvalidAnnotationError(
            annotation_path, f"root element is <{root.tag}>, not <annotation>"
        )
    annotation = VOCDetection.parse_voc_xml(root)["annotation"]
    height, width = _annotated_size(annotation) or image_file_size(image_path)
    objects = annotation.get("object", [])
    if isinstance(objects, dict):
        objects = [objects]
    boxes, labels, difficult = [], [], []
    for obj in objects:
        label, corners, is_difficult = _parse_object(obj, annotation_path)
        boxes.append(_to_pixel_box(corners, height, width, annotation_path, label))
        labels.append(label)
        difficult.append(is_difficult)
    return VOCDetectionRecord(
        image_id=image_path.stem,
        image_path=image_path,
        annotation_path=annotation_path,
        height=height,
        width=width,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
    )


def required_paths(data_dir: PathLike, year: str, image_set: str) -> list[Path]:
    """Paths a detection image set needs: its ``ImageSets/Main`` file, images, annotations."""
    root = year_dir(data_dir, year)
    return [
        image_set_file(data_dir, year, "Main", image_set),
        root / "JPEGImages",
        root / "Annotations",
    ]


class VOCDetectionDataset(VOCImageSetDataset):
    """One VOC detection image set, e.g. ``VOC2007`` ``trainval``.

    Reads ``VOCdevkit/VOC<year>/ImageSets/Main/<image_set>.txt``,
    ``Annotations/<id>.xml`` and ``JPEGImages/<id>.jpg`` under ``data_dir``. Every
    annotation is parsed and checked here; images are decoded in ``__getitem__``.

    Args:
        data_dir: folder holding ``VOCdevkit`` (or the ``VOCdevkit`` folder itself).
        year: ``"2007"`` ... ``"2012"``.
        image_set: ``train``, ``val``, ``trainval`` or ``test``.
        transform: a box pipeline from :mod:`dck_lightning.data.transforms`;
            default: normalise only, original size.
        keep_difficult: keep ``difficult`` objects (flagged) in the targets.
        skip_invalid: log and skip invalid samples instead of raising.

    Items are ``(image float32[3, H, W], target)`` with target keys ``boxes``
    ``float32[N, 4]``, ``labels`` ``int64[N]``, ``difficult`` ``bool[N]``,
    ``orig_size`` ``int64[2]`` (H, W of the file) and ``image_id`` (str).

    Raises:
        DataNotFoundError: the image-set file or the image/annotation folders are missing.
        InvalidSampleError: an invalid sample (unless ``skip_invalid``).
    """

    required_paths = staticmethod(required_paths)
    eval_pipeline = staticmethod(detection_eval_transform)

    def __init__(
        self,
        data_dir: PathLike,
        year: str = "2007",
        image_set: str = "trainval",
        transform: Optional[Callable] = None,
        keep_difficult: bool = True,
        skip_invalid: bool = False,
    ) -> None:
        super().__init__(data_dir, year, image_set, transform, skip_invalid)
        self.keep_difficult = keep_difficult

        def parse(image_id: str) -> VOCDetectionRecord:
            return parse_voc_annotation(
                self.root / "Annotations" / f"{image_id}.xml",
                self.root / "JPEGImages" / f"{image_id}.jpg",
            )

        self.records: list[VOCDetectionRecord] = keep_valid(
            read_image_set(image_set_file(data_dir, year, "Main", image_set)), parse, skip_invalid
        )

    def load(self, index: int) -> tuple[torch.Tensor, dict[str, Union[torch.Tensor, str]]]:
        """Decode, check the size against the annotation, drop difficult objects if asked, transform."""
        record = self.records[index]
        image = read_rgb_image(record.image_path)
        if image.shape[:2] != (record.height, record.width):
            raise InvalidAnnotationError(
                record.annotation_path,
                f"annotated size {record.width}x{record.height} differs from the image "
                f"{record.image_path} ({image.shape[1]}x{image.shape[0]})",
            )
        keep = slice(None) if self.keep_difficult else ~record.difficult
        image_t, boxes, labels, difficult = apply_detection_transform(
            self.transform, image, record.boxes[keep], record.labels[keep], record.difficult[keep]
        )
        target = {
            "boxes": boxes,
            "labels": labels,
            "difficult": difficult,
            "orig_size": torch.tensor([record.height, record.width], dtype=torch.int64),
            "image_id": record.image_id,
        }
        return image_t, target

"""Write small Pascal VOC trees (VOCdevkit layout) for the VOC tests.

Images are tiny (64 x 48 by default): a dark green noise background with every
object drawn as a filled rectangle of its class colour, so tests can check where
boxes and masks land after augmentation. Annotations follow the real VOC XML
schema (1-based inclusive ``bndbox`` corners); masks are palette PNGs with the real
VOC palette, class id inside each object, 255 on a 1-pixel border around it.
"""

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from dck_lightning.data.voc_common import VOC_CLASSES, voc_palette

#: colour each class is drawn in (distinct, saturated, far from the green background)
OBJECT_COLOUR = (230, 20, 20)
BACKGROUND = (20, 90, 30)

SAMPLE_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def shared_voc_sample() -> Optional[Path]:
    """``voc-sample`` under ``$DCK_SHARED_DATA`` or ``../shared/data``; ``None`` when absent."""
    root = Path(os.environ.get("DCK_SHARED_DATA", SAMPLE_DATA)) / "voc-sample"
    return root if (root / "VOCdevkit").is_dir() else None


@dataclass
class FixtureObject:
    """One object: class name and VOC ``(xmin, ymin, xmax, ymax)`` (1-based, inclusive)."""

    name: str
    box: tuple[int, int, int, int]
    difficult: bool = False


@dataclass
class FixtureImage:
    """One image of the fixture tree."""

    image_id: str
    objects: list[FixtureObject] = field(default_factory=list)
    width: int = 64
    height: int = 48


def draw_image(image: FixtureImage, seed: int = 0) -> np.ndarray:
    """``uint8[H, W, 3]``: noisy background, objects as filled :data:`OBJECT_COLOUR` rectangles."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((image.height, image.width, 3), dtype=np.int16)
    pixels[:] = BACKGROUND
    pixels += rng.integers(-15, 16, size=pixels.shape, dtype=np.int16)
    for obj in image.objects:
        xmin, ymin, xmax, ymax = obj.box
        pixels[ymin - 1 : ymax, xmin - 1 : xmax] = OBJECT_COLOUR
    return pixels.clip(0, 255).astype(np.uint8)


def draw_mask(image: FixtureImage) -> np.ndarray:
    """``uint8[H, W]`` class ids (1-20) inside objects, 255 on a 1-pixel ring, 0 elsewhere."""
    mask = np.zeros((image.height, image.width), dtype=np.uint8)
    for obj in image.objects:
        xmin, ymin, xmax, ymax = obj.box
        y0, x0 = max(ymin - 2, 0), max(xmin - 2, 0)
        mask[y0 : ymax + 1, x0 : xmax + 1] = 255
        mask[ymin - 1 : ymax, xmin - 1 : xmax] = VOC_CLASSES.index(obj.name) + 1
    return mask


def annotation_xml(image: FixtureImage, folder: str) -> str:
    """The annotation in the VOC XML schema."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{image.image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = f"The {folder} Database"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(image.width)
    ET.SubElement(size, "height").text = str(image.height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for obj in image.objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(box, key).text = str(value)
    return ET.tostring(root, encoding="unicode")


def write_palette_mask(path: Path, mask: np.ndarray) -> None:
    """Save class ids as a palette (``P``) PNG with the VOC colours."""
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_voc(
    data_dir: Path,
    images: Sequence[FixtureImage],
    year: str = "2007",
    main_sets: Optional[dict[str, Sequence[str]]] = None,
    segmentation_sets: Optional[dict[str, Sequence[str]]] = None,
    sbd_ids: Optional[Sequence[str]] = None,
) -> Path:
    """Write ``data_dir/VOCdevkit/VOC<year>`` and return ``data_dir``.

    Args:
        data_dir: output folder (the DataModules' ``data_dir``).
        images: images to write (JPEG, XML, and palette mask).
        year: VOC year.
        main_sets: ``ImageSets/Main`` files, name -> ids.
        segmentation_sets: ``ImageSets/Segmentation`` files, name -> ids.
        sbd_ids: when given, also write grayscale ``SegmentationClassAug`` masks for
            these ids and ``ImageSets/SegmentationAug/train_aug.txt`` listing them.
    """
    root = data_dir / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    by_id = {image.image_id: image for image in images}
    for index, image in enumerate(images):
        Image.fromarray(draw_image(image, seed=index)).save(
            root / "JPEGImages" / f"{image.image_id}.jpg", quality=95
        )
        (root / "Annotations" / f"{image.image_id}.xml").write_text(
            annotation_xml(image, f"VOC{year}")
        )
        write_palette_mask(root / "SegmentationClass" / f"{image.image_id}.png", draw_mask(image))
    for kind, sets in (("Main", main_sets), ("Segmentation", segmentation_sets)):
        for name, ids in (sets or {}).items():
            write_image_set(root / "ImageSets" / kind / f"{name}.txt", ids)
    if sbd_ids is not None:
        (root / "SegmentationClassAug").mkdir(exist_ok=True)
        for image_id in sbd_ids:
            Image.fromarray(draw_mask(by_id[image_id]), mode="L").save(
                root / "SegmentationClassAug" / f"{image_id}.png"
            )
        write_image_set(root / "ImageSets" / "SegmentationAug" / "train_aug.txt", sbd_ids)
    return data_dir


def write_image_set(path: Path, ids: Sequence[str]) -> None:
    """One id per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{image_id}\n" for image_id in ids))


def detection_images() -> list[FixtureImage]:
    """Four images: one object, two objects (one difficult), no object, one at the border."""
    return [
        FixtureImage("000001", [FixtureObject("dog", (10, 8, 40, 30))]),
        FixtureImage(
            "000002",
            [
                FixtureObject("car", (5, 5, 20, 20)),
                FixtureObject("person", (30, 10, 60, 45), difficult=True),
            ],
        ),
        FixtureImage("000003", []),
        FixtureImage("000004", [FixtureObject("cat", (1, 1, 64, 48))]),
    ]


def write_detection_tree(data_dir: Path, year: str = "2007") -> Path:
    """:func:`detection_images` with ``trainval`` and ``test`` (all four) image sets."""
    ids = [image.image_id for image in detection_images()]
    return write_voc(data_dir, detection_images(), year, main_sets={"trainval": ids, "test": ids})

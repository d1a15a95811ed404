#!/usr/bin/env python
"""Recipe health: every shipped config's first training steps, at its own optimiser,
learning rate, schedule and head, one line each.

Each config runs ``dck fit -c CONFIG`` for ``--steps`` optimiser steps (the schedule keeps the
config's whole length: the run is stopped, not shortened) and is judged on its per-step
training loss ``L``:

* ``non-finite`` — a NaN or infinite loss;
* ``spike`` — ``max(L) > 3 · L[0]`` (the CIFAR ResNet recipes' multi-scale max-pooled head
  went 2.8 → 71 → 94 at SGD 0.1);
* ``flat`` — the mean of the last quarter of the steps is not below the mean of the first
  quarter.

A config passes (``ok``) when none of them happens.

Usage::

    python scripts/check_recipes.py --data-dir data                 # every config, real data
    python scripts/check_recipes.py configs/cifar10_resnet18.yaml --device cuda --precision bf16-mixed
    python scripts/check_recipes.py --tiny                          # tiny learnable data (CI)
    python scripts/check_recipes.py --tiny --trainer-config configs/trainer/gpu.yaml --device cpu

``--data-dir`` is the folder the configs' ``data_dir: data`` stands for (CIFAR-10, MNIST, a
``VOCdevkit``); synthetic-shapes configs need none. ``--tiny`` writes small learnable datasets
in the real on-disk formats (MNIST IDX files, CIFAR-10 class folders of PNGs, a Pascal VOC
``VOCdevkit`` with XML, palette masks and the SBD layout), drawn by the synthetic-shapes
generator, and runs every config on them at a small batch and image size, its ResNet-18
backbone (if any) at a quarter of the widths (:func:`tiny_model_overrides`): what CI runs, through
the same code path as a GPU run. ``--trainer-config`` adds a trainer snippet after each config
(``configs/trainer/gpu.yaml``: bf16-mixed); ``--device`` then sets the accelerator.
``--write BENCHMARKS.md`` puts the table into its ``recipe_health`` section.

Exit status: 0 every config passed, 1 one failed (its line says why).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from pytorch_lightning.utilities.exceptions import SIGTERMException  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPIKE_FACTOR = 3.0
SECTION = "recipe_health"


# ----------------------------------------------------------------------------- the verdict
@dataclass
class RecipeResult:
    """The per-step training losses of one config and what they say."""

    config: str
    losses: list[float]
    seconds_per_step: float = float("nan")
    batch_size: Optional[int] = None
    precision: str = "32"
    error: Optional[str] = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems


def judge(losses: Sequence[float], spike_factor: float = SPIKE_FACTOR) -> list[str]:
    """What is wrong with these per-step losses: ``[]`` for a healthy start (see the module)."""
    if not losses:
        return ["no training step ran"]
    bad = [step for step, loss in enumerate(losses) if not math.isfinite(loss)]
    if bad:
        return [f"non-finite loss at step {bad[0]}"]
    problems = []
    peak = max(range(len(losses)), key=losses.__getitem__)
    if losses[peak] > spike_factor * losses[0]:
        problems.append(
            f"spike: {losses[peak]:.3g} at step {peak} > {spike_factor:g} × the first {losses[0]:.3g}"
        )
    window = max(1, len(losses) // 4)
    first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
    if len(losses) < 2 or not last < first:
        problems.append(f"flat: the last {window} steps average {last:.3g}, the first {first:.3g}")
    return problems


class LossProbe(Callback):
    """Records the training loss of every optimiser step and stops the fit after ``steps``
    (the schedule keeps its full length: stopping is not ``max_steps``). The CLI builds it
    from ``--trainer.callbacks+``; the newest one is :attr:`latest`, also when the fit fails."""

    latest: Optional["LossProbe"] = None

    def __init__(self, steps: int) -> None:
        LossProbe.latest = self
        self.steps = steps
        self.losses: list[float] = []
        self.started: Optional[float] = None
        self.seconds = float("nan")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if len(self.losses) == 1:  # time from the second step: the first compiles, allocates
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        self.losses.append(float(loss))
        if self.started is not None and len(self.losses) > 1:
            self.seconds = (time.perf_counter() - self.started) / (len(self.losses) - 1)
        if len(self.losses) >= self.steps:
            trainer.should_stop = True


# ------------------------------------------------------------------- tiny real-format data
TINY_IMAGES = 96  # training images of each tiny dataset: 6 batches of 16


def _shapes(task: str, count: int, size: int, split: str = "train"):
    from dck_lightning.data.synthetic import SyntheticShapesDataset

    return SyntheticShapesDataset(task, split, count, image_size=size, seed=7, max_objects=2)


def write_tiny_mnist(root: Path, count: int = TINY_IMAGES) -> Path:
    """``root/MNIST/raw`` IDX files of grey 28×28 synthetic shapes (6 of the 10 classes)."""
    from dck_lightning.data import write_idx

    for split, prefix, n in (("train", "train", count), ("test", "t10k", count // 4)):
        images, labels = _shapes("classification", n, 28, split).tensors()
        grey = images.float().mean(1).round().to(dtype=images.dtype).numpy()
        write_idx(root / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", grey)
        write_idx(
            root / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels.numpy().astype(np.uint8)
        )
    return root


def write_tiny_cifar(root: Path, count: int = TINY_IMAGES) -> Path:
    """``root/cifar10/{train,test}/<class>/*.png``: 32×32 synthetic shapes, CIFAR-10's class
    names (the class-folder layout the CIFAR-10 DataModule reads beside the pickle batches)."""
    from dck_lightning.data.cifar import CIFAR10_CLASSES

    for split, n in (("train", count), ("test", count // 4)):
        images, labels = _shapes("classification", n, 32, split).tensors()
        for index, (image, label) in enumerate(zip(images, labels.tolist())):
            folder = root / "cifar10" / split / CIFAR10_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:04d}.png")
    return root


def _voc_annotation(image_id: str, size: int, boxes, labels, classes) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    dims = ET.SubElement(root, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(dims, key).text = str(value)
    for box, label in zip(boxes.tolist(), labels.tolist()):
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = classes[label]
        ET.SubElement(node, "difficult").text = "0"
        bndbox = ET.SubElement(node, "bndbox")
        # VOC corners are 1-based and inclusive; the generator's boxes are 0-based, exclusive.
        corners = (box[0] + 1, box[1] + 1, box[2], box[3])
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), corners):
            ET.SubElement(bndbox, key).text = str(max(1, min(size, round(value))))
    return ET.tostring(root, encoding="unicode")


def write_tiny_voc(root: Path, count: int = TINY_IMAGES, size: int = 64) -> Path:
    """``root/VOCdevkit/VOC{2007,2012}``: synthetic scenes as JPEGs with VOC XML (shape ``k``
    is VOC class ``k``), palette class masks (255 on each object's border, as VOC has), the
    SBD layout (``SegmentationClassAug`` + ``train_aug.txt``) and every image set the configs
    name."""
    from dck_lightning.data.voc_common import VOC_CLASSES, voc_palette

    scenes = _shapes("segmentation", count, size)
    boxes_of = _shapes("detection", count, size)
    ids = [f"{index:06d}" for index in range(count)]
    for year in ("2007", "2012"):
        folder = root / "VOCdevkit" / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for index, image_id in enumerate(ids):
            rendered = scenes.render(index)
            detected = boxes_of.render(index)
            Image.fromarray(rendered.image).save(
                folder / "JPEGImages" / f"{image_id}.jpg", quality=95
            )
            (folder / "Annotations" / f"{image_id}.xml").write_text(
                _voc_annotation(image_id, size, detected.boxes, detected.labels, VOC_CLASSES)
            )
            mask = rendered.mask.astype(np.uint8)
            border = _border(mask)
            palette_mask = Image.fromarray(np.where(border, 255, mask).astype(np.uint8), mode="P")
            palette_mask.putpalette(voc_palette())
            palette_mask.save(folder / "SegmentationClass" / f"{image_id}.png")
            Image.fromarray(mask, mode="L").save(
                folder / "SegmentationClassAug" / f"{image_id}.png"
            )
        half = count // 2
        sets = {
            "Main/trainval": ids, "Main/train": ids[:half], "Main/val": ids[half:],
            "Main/test": ids[half:], "Segmentation/train": ids[:half],
            "Segmentation/val": ids[half:], "Segmentation/trainval": ids,
            "SegmentationAug/train_aug": ids[:half],
        }  # fmt: skip
        for name, members in sets.items():
            path = folder / "ImageSets" / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{image_id}\n" for image_id in members))
    return root


def _border(mask: np.ndarray) -> np.ndarray:
    """Pixels of an object that touch another class (VOC's 255 outline, one pixel wide)."""
    padded = np.pad(mask, 1, mode="edge")
    neighbours = [padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
                  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]  # fmt: skip
    return (mask > 0) & np.any([n != mask for n in neighbours], axis=0)


TINY_MARKER = ".check_recipes_tiny"


def write_tiny_data(root: Path) -> Path:
    """Every tiny dataset under ``root`` (the ``--data-dir`` of a ``--tiny`` check)."""
    write_tiny_mnist(root)
    write_tiny_cifar(root)
    write_tiny_voc(root)
    (root / TINY_MARKER).write_text("tiny datasets written by scripts/check_recipes.py --tiny\n")
    return root


def tiny_data(root: Path) -> Path:
    """``root`` holding the tiny datasets: written once, reused by later ``--tiny`` checks
    given the same ``--data-dir``."""
    return root if (root / TINY_MARKER).is_file() else write_tiny_data(root)


# ------------------------------------------------------------------------------ one config
def _data_class(config: Mapping[str, Any]) -> str:
    return str(config["data"]["class_path"]).rsplit(".", 1)[-1]


def data_overrides(
    config: Mapping[str, Any],
    data_dir: Optional[Path],
    batch_size: Optional[int],
    image_size: Optional[int],
    train_images: Optional[int],
) -> list[str]:
    """Command-line overrides of the config's data: where it is, and a smaller size if asked."""
    data = _data_class(config)
    out = ["--data.init_args.num_workers", "0"]
    if batch_size is not None:
        out += ["--data.init_args.batch_size", str(batch_size)]
    if data == "SyntheticShapesDataModule":
        if image_size is not None:
            out += ["--data.init_args.image_size", str(image_size)]
        if train_images is not None:
            out += ["--data.init_args.num_train", str(train_images)]
        return out + ["--data.init_args.num_val", "0", "--data.init_args.num_test", "0"]
    if data_dir is not None:
        out += ["--data.init_args.data_dir", str(data_dir)]
    if data.startswith("VOC") and image_size is not None:
        out += ["--data.init_args.image_size", str(image_size)]
    return out


def check_recipe(
    config_file: Path,
    steps: int,
    run_root: Path,
    data_dir: Optional[Path] = None,
    trainer_configs: Sequence[Path] = (),
    device: Optional[str] = None,
    precision: Optional[str] = None,
    batch_size: Optional[int] = None,
    image_size: Optional[int] = None,
    train_images: Optional[int] = None,
    overrides: Sequence[str] = (),
) -> RecipeResult:
    """Fit ``config_file`` for ``steps`` optimiser steps through ``dck fit`` and judge it."""
    import torch

    from dck_lightning.cli import main

    config = yaml.safe_load(config_file.read_text())
    probe_path = f"{LossProbe.__module__}.{LossProbe.__qualname__}"
    args = ["fit", "-c", str(config_file)]
    for trainer_config in trainer_configs:
        args += ["-c", str(trainer_config)]
    if device is not None:
        args += ["--trainer.accelerator", device, "--trainer.devices", "1"]
    if precision is not None:
        args += ["--trainer.precision", precision]
    args += [
        "--run.root", str(run_root), "--run.wandb", "disabled", "--run.nonfinite_loss", "off",
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false",
        "--trainer.callbacks+", json.dumps({"class_path": probe_path, "init_args": {"steps": steps}}),
        *data_overrides(config, data_dir, batch_size, image_size, train_images),
        *overrides,
    ]  # fmt: skip
    torch.manual_seed(0)
    LossProbe.latest = None
    result = RecipeResult(config_file.stem, [], batch_size=batch_size)
    try:
        cli = main(args)
        result.precision = str(cli.trainer.precision)
        result.batch_size = cli.datamodule.hparams.get("batch_size", batch_size)
    except BaseException as error:  # noqa: BLE001 - a failed recipe is a result, not a crash
        if isinstance(error, (KeyboardInterrupt, SIGTERMException)):
            raise  # the user stopped the check, not the recipe
        result.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    probe = LossProbe.latest
    if probe is not None:
        result.losses, result.seconds_per_step = probe.losses, probe.seconds
    result.problems = [] if result.error else judge(result.losses)
    return result


def format_line(result: RecipeResult) -> str:
    """``config  precision  batch  steps  first → last (max)  s/step  verdict``."""
    losses = [loss for loss in result.losses if math.isfinite(loss)]
    shape = "—"
    if losses:
        peak = max(result.losses) if all(math.isfinite(x) for x in result.losses) else math.nan
        shape = f"{result.losses[0]:.3g} → {result.losses[-1]:.3g} (max {peak:.3g})"
    verdict = "ok" if result.ok else "FAIL: " + (result.error or "; ".join(result.problems))
    return (
        f"| {result.config} | {result.precision} | {result.batch_size or '—'} | "
        f"{len(result.losses)} | {shape} | {result.seconds_per_step:.2f} | {verdict} |"
    )


HEADER = (
    "| config | precision | batch | steps | training loss: first → last (max) | s / step | verdict |\n"
    "|---|---|---|---|---|---|---|"
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, help="default: every configs/*.yaml")
    parser.add_argument("--steps", type=int, default=100, help="optimiser steps per config")
    parser.add_argument("--data-dir", type=Path,
                        help="the folder the configs' data_dir names (--tiny: where the tiny "
                        "datasets are written once and reused; default a temporary folder)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true",
                        help="tiny learnable data, batch 16, quarter-width ResNet-18s (CI)")  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: the config's")
    parser.add_argument("--precision", help="e.g. 32, bf16-mixed; default: the config's")
    parser.add_argument("--trainer-config", type=Path, action="append", default=[],
                        help="a trainer snippet added after each config (repeatable)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, help="default: the config's (--tiny: 16)")
    parser.add_argument(
        "--image-size", type=int, help="VOC/synthetic (--tiny: 64, 32 for classification)"
    )
    parser.add_argument("--train-images", type=int, help="synthetic configs' num_train")
    parser.add_argument("--override", action="append", default=[], metavar="--KEY=VALUE",
                        help="a dck fit argument added to every config's command (repeatable)")  # fmt: skip
    parser.add_argument("--write", type=Path, help="put the table into this Markdown file")
    parser.add_argument("--section", default=SECTION, help="its section name")
    options = parser.parse_args(argv)
    if options.steps < 2:
        parser.error("--steps must be at least 2 (a fall needs two steps)")
    options.configs = options.configs or sorted((REPO / "configs").glob("*.yaml"))
    return options


#: ``--tiny``'s widths for a full-width ResNet-18 backbone (64-512 channels): a quarter.
TINY_RESNET_WIDTHS = "[16,32,64,128]"
TINY_BATCH = 16


def tiny_model_overrides(config: Mapping[str, Any]) -> list[str]:
    """``--tiny``'s model: a ResNet-18-family backbone of the config at a quarter of its widths
    (the config's optimiser, learning rate, schedule and head are kept). At a quarter width
    the CIFAR recipes' old multi-scale max-pooled head still spiked (2.4 → 14 in 30 steps at
    batch 16), and the fixed head does not: the check keeps its teeth at 1/8 of the cost."""
    backbone = (config["model"].get("init_args") or {}).get("backbone")
    if isinstance(backbone, str):
        name, init_args = backbone, {}
    elif isinstance(backbone, Mapping):
        name, init_args = str(backbone.get("class_path", "")), backbone.get("init_args") or {}
    else:
        return []
    if name.rsplit(".", 1)[-1] in ("resnet18", "dcb_resnet18") and "widths" not in init_args:
        return [f"--model.init_args.backbone.init_args.widths={TINY_RESNET_WIDTHS}"]
    return []


def tiny_image_size(config: Mapping[str, Any]) -> int:
    """``--tiny``'s image size: 32 for classification on synthetic shapes, 128 for the VOC
    detectors (their FPN's P6/P7 maps are then 2×2; at 64 px they are 1×1, where bf16 on the
    CPU gave non-finite P7 gradients), 64 otherwise."""
    if _data_class(config) == "VOCDetectionDataModule":
        return 128
    task = (config["data"].get("init_args") or {}).get("task", "classification")
    return 32 if task == "classification" else 64


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_args(argv)
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_utils import publish

    results = []
    with tempfile.TemporaryDirectory(prefix="check_recipes_") as scratch:
        scratch = Path(scratch)
        data_dir = options.data_dir
        if options.tiny:
            data_dir = tiny_data(data_dir or scratch / "data")
        print(HEADER, flush=True)
        for index, config_file in enumerate(options.configs):
            config = yaml.safe_load(config_file.read_text())
            image_size, overrides = options.image_size, list(options.override)
            if options.tiny:
                image_size = image_size or tiny_image_size(config)
                overrides = tiny_model_overrides(config) + overrides
            result = check_recipe(
                config_file,
                options.steps,
                scratch / f"runs_{index}",
                data_dir=data_dir,
                trainer_configs=options.trainer_config,
                device=options.device,
                precision=options.precision,
                batch_size=options.batch_size or (TINY_BATCH if options.tiny else None),
                image_size=image_size,
                train_images=options.train_images or (TINY_IMAGES if options.tiny else None),
                overrides=overrides,
            )
            results.append(result)
            print(format_line(result), flush=True)
    if options.write is not None:
        command = "python scripts/check_recipes.py " + " ".join(argv or sys.argv[1:])
        table = "\n".join([HEADER, *map(format_line, results)])
        publish(f"Command: `{command.strip()}`\n\n{table}", options.write, options.section)
    failed = [result.config for result in results if not result.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} recipes failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Prediction images on W&B: ``wandb.Image`` with ``boxes=`` / ``masks=`` and class labels (the
interactive toggles), not flattened PIL panels; runs without W&B keep the PNG panels."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from dck_lightning.callbacks.image_logging import (
    BoxSet,
    PredictionImageLogger,
    PredictionSample,
    wandb_boxes,
    wandb_masks,
)

NAMES = ["background", "cat", "dog"]


def detection_sample() -> PredictionSample:
    truth = BoxSet(np.array([[1.0, 2.0, 10.0, 12.0]]), np.array([1]), notes=["difficult"])
    predicted = BoxSet(
        np.array([[0.0, 1.0, 9.0, 11.0], [3.0, 3.0, 6.0, 6.0]]),
        np.array([1, 2]),
        np.array([0.9, 0.2]),
    )
    return PredictionSample(
        np.zeros((16, 16, 3), np.uint8),
        "img",
        NAMES,
        boxes={"ground_truth": truth, "predictions": predicted},
    )


def test_boxes_become_wandb_box_sets_with_class_labels_and_scores():
    boxes = wandb_boxes(detection_sample())
    assert set(boxes) == {"ground_truth", "predictions"}
    assert boxes["predictions"]["class_labels"] == {0: "background", 1: "cat", 2: "dog"}
    first = boxes["predictions"]["box_data"][0]
    assert first["position"] == {"minX": 0.0, "minY": 1.0, "maxX": 9.0, "maxY": 11.0}
    assert first["domain"] == "pixel" and first["class_id"] == 1
    assert first["scores"] == {"score": pytest.approx(0.9)} and first["box_caption"] == "cat 0.90"
    truth = boxes["ground_truth"]["box_data"][0]
    assert "scores" not in truth and truth["box_caption"] == "cat (difficult)"


def test_masks_become_wandb_masks_with_class_labels_and_ignore():
    mask = np.array([[0, 1], [2, 255]])
    sample = PredictionSample(
        np.zeros((2, 2, 3), np.uint8),
        "img",
        NAMES,
        masks={"ground_truth": mask, "predictions": mask % 255},
        ignore_index=255,
    )
    masks = wandb_masks(sample)
    assert masks["ground_truth"]["class_labels"] == {
        0: "background",
        1: "cat",
        2: "dog",
        255: "ignore",
    }
    assert np.array_equal(masks["ground_truth"]["mask_data"], mask)


class CapturingWandbLogger(WandbLogger):
    """A WandbLogger that records ``log_image`` calls instead of starting a run."""

    def __init__(self) -> None:  # no W&B run
        self.calls: list[dict] = []

    def log_image(self, key, images, step=None, **kwargs):
        self.calls.append({"key": key, "images": images, "step": step, **kwargs})


class Sampling:
    """A module with both forms; records which one the callback asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def prediction_samples(self, batch):
        self.asked.append("samples")
        return [detection_sample() for _ in batch[1]]

    def prediction_images(self, batch):
        self.asked.append("images")
        return [("panel", np.zeros((4, 9, 3), np.uint8)) for _ in batch[1]]


def trainer(tmp_path: Path, loggers) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        global_step=5,
        is_global_zero=True,
        loggers=loggers,
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path),
    )


def test_with_wandb_the_callback_logs_samples_with_boxes(tmp_path):
    logger, module = CapturingWandbLogger(), Sampling()
    batch = (torch.zeros(3, 3, 16, 16), [{"image_id": i} for i in range(3)])
    PredictionImageLogger(max_images=2).on_validation_batch_end(
        trainer(tmp_path, [logger]), module, None, batch, 0
    )
    assert module.asked == ["samples"]
    (call,) = logger.calls
    assert call["key"] == "val/predictions" and call["step"] == 5 and len(call["images"]) == 2
    assert call["images"][0].shape == (16, 16, 3)  # the image itself, not a drawn panel
    assert call["boxes"][0]["predictions"]["box_data"][1]["class_id"] == 2
    assert "masks" not in call and call["caption"] == ["img", "img"]


def test_without_wandb_the_callback_writes_png_panels(tmp_path):
    module = Sampling()
    batch = (torch.zeros(2, 3, 16, 16), [{"image_id": i} for i in range(2)])
    PredictionImageLogger().on_validation_batch_end(trainer(tmp_path, []), module, None, batch, 0)
    assert module.asked == ["images"]
    assert len(list((tmp_path / "images").glob("*.png"))) == 2


@pytest.mark.slow  # starting the W&B service: ~10-20 s each
@pytest.mark.parametrize("task_kind", ["detection", "segmentation"])
def test_an_offline_run_holds_interactive_boxes_and_masks(tmp_path: Path, task_kind: str) -> None:
    import wandb

    from dck_lightning.data import SyntheticShapesDataModule
    from dck_lightning.tasks.detection import DetectionTask
    from dck_lightning.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    backbone = {
        "class_path": "resnet18",
        "init_args": {"widths": [8, 8, 8, 8], "depths": [1, 1, 1, 1]},
    }
    if task_kind == "detection":
        task = DetectionTask(
            backbone=backbone, fpn_channels=16, head_convs=1, num_classes=6, score_thresh=0.0
        )
    else:
        task = SegmentationTask(
            backbone=backbone, head_kwargs={"fpn_channels": 8, "channels": 8}, num_classes=7
        )
    data = SyntheticShapesDataModule(
        task=task_kind, image_size=32, num_train=2, num_val=2, num_test=2, batch_size=2
    )
    wandb.finish()
    logger = WandbLogger(save_dir=str(tmp_path), project="test", mode="offline")
    pl.Trainer(
        default_root_dir=str(tmp_path),
        max_epochs=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=[PredictionImageLogger(max_images=2)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(task, data)
    wandb.finish()
    (files,) = tmp_path.glob("wandb/offline-run-*/files")
    images = sorted(files.glob("media/images/val/predictions_*.png"))
    assert len(images) == 2 and not list(tmp_path.rglob("images/epoch_*.png"))  # no PNG panels
    from PIL import Image

    assert Image.open(images[0]).size == (32, 32)  # the image, boxes/masks beside it as data
    if task_kind == "detection":
        box_files = sorted(files.glob("media/metadata/boxes2D/val/predictions_*.boxes2D.json"))
        assert box_files
        sets = [json.loads(path.read_text()) for path in box_files]
        assert all(s["class_labels"]["0"] == "circle" for s in sets)
        predicted = [b for s in sets for b in s["box_data"] if "scores" in b]
        assert predicted and all(0 <= b["class_id"] < 6 for b in predicted)
        truth = [b for s in sets for b in s["box_data"] if "scores" not in b]
        assert truth and truth[0]["box_caption"] in sets[0]["class_labels"].values()
    else:
        masks = sorted(files.glob("media/images/mask/val/predictions_*.mask.png"))
        assert len(masks) >= 2  # ground truth and predictions
        assert Image.open(masks[0]).size == (32, 32)

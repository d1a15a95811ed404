"""PredictionImageLogger: when it asks the module for pictures, and where they go."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dck_lightning.callbacks.image_logging import PredictionImageLogger, take_first

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


class Drawing:
    """A module stand-in: ``prediction_images`` paints one image per sample."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def prediction_images(self, batch):
        images, targets = batch
        self.calls.append(images.shape[0])
        return [
            (f"image {t['image_id']}", np.full((10, 21, 3), 40 * i, dtype=np.uint8))
            for i, t in enumerate(targets)
        ]


def fake_trainer(
    tmp_path: Path, epoch: int = 0, sanity: bool = False, rank_zero: bool = True, loggers=()
):
    return SimpleNamespace(
        sanity_checking=sanity,
        current_epoch=epoch,
        global_step=17,
        is_global_zero=rank_zero,
        loggers=list(loggers),
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path),
    )


def batch(n: int = 12):
    return torch.zeros(n, 3, 10, 10), [{"image_id": i} for i in range(n)]


def test_writes_pngs_without_wandb(tmp_path: Path) -> None:
    callback, module = PredictionImageLogger(every_n_epochs=2, max_images=3), Drawing()
    for epoch in range(4):
        for batch_idx in range(2):
            callback.on_validation_batch_end(
                fake_trainer(tmp_path, epoch), module, None, batch(), batch_idx
            )
    # epochs 2 and 4 (1-based), first batch only, 3 images each
    assert module.calls == [3, 3]
    files = sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    assert files == [f"epoch_{e:03d}_step_0000017_{i:02d}.png" for e in (1, 3) for i in range(3)]
    assert np.asarray(Image.open(tmp_path / "images" / files[1])).shape == (10, 21, 3)
    captions = (tmp_path / "images" / "captions.tsv").read_text().splitlines()
    assert captions[0] == f"{files[0]}\timage 0" and len(captions) == 6


def test_skips_sanity_check_other_ranks_and_modules_without_images(tmp_path: Path) -> None:
    callback, module = PredictionImageLogger(), Drawing()
    callback.on_validation_batch_end(fake_trainer(tmp_path, sanity=True), module, None, batch(), 0)
    callback.on_validation_batch_end(
        fake_trainer(tmp_path, rank_zero=False), module, None, batch(), 0
    )
    callback.on_validation_batch_end(
        fake_trainer(tmp_path), module, None, batch(), 0, dataloader_idx=1
    )
    assert module.calls == []
    with pytest.warns(UserWarning, match="nor prediction_images"):
        callback.on_validation_batch_end(fake_trainer(tmp_path), object(), None, batch(), 0)
    assert not (tmp_path / "images").exists()
    with pytest.raises(ValueError):
        PredictionImageLogger(every_n_epochs=0)


def test_take_first_cuts_every_part_of_a_batch() -> None:
    images, targets = take_first(batch(5), 2)
    assert images.shape[0] == 2 and [t["image_id"] for t in targets] == [0, 1]
    assert [x.shape[0] for x in take_first([torch.zeros(5, 3), torch.zeros(5)], 2)] == [2, 2]
    assert take_first({"image": torch.zeros(5, 1), "id": [1, 2, 3]}, 2)["id"] == [1, 2]

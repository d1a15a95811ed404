"""KernelVisualizationCallback: PNG files without W&B, W&B images with it, σ scalars in both."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from dck_lightning.analysis import load_history
from dck_lightning.callbacks.kernel_visualization import KernelVisualizationCallback, first_image

LAYERS = ("stages.2.0.dck.conv", "stages.3.0.dck.conv")


def test_without_wandb_it_writes_pngs_into_the_run_folder(ablation_runs):
    folder = ablation_runs[0] / "kernels"
    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == [
        f"epoch_{e:03d}_{k}.png" for e in (0, 1) for k in ("offsets", "receptive_fields")
    ]
    for path in folder.glob("*.png"):
        with Image.open(path) as image:
            assert image.size[0] > 200 and image.size[1] > 200
    assert not (ablation_runs[1] / "kernels").exists()  # a run without the callback


def test_sigma_scalars_reach_metrics_csv(ablation_runs):
    history = load_history(ablation_runs[0])
    for layer in LAYERS:
        for key in ("sigma_y", "sigma_x", "size"):
            values = history[f"kernels/{layer}/{key}"].dropna()
            assert len(values) == 2  # every epoch
        assert history[f"kernels/{layer}/size"].dropna().eq(3).all()
        assert history[f"kernels/{layer}/sigma_y"].dropna().between(0.5, 10).all()


def test_with_wandb_it_logs_images_and_scalars_to_the_wandb_run(wandb_run_dir):
    offline = next((wandb_run_dir / "wandb").glob("offline-run-*"))
    records = next(offline.glob("run-*.wandb")).read_bytes()
    assert b"kernels/offsets" in records and b"kernels/receptive_fields" in records
    assert f"kernels/{LAYERS[0]}/sigma_y".encode() in records
    media = list((offline / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 4  # 2 pictures × 2 epochs
    assert not (wandb_run_dir / "kernels").exists()


def test_every_n_epochs_and_arguments():
    callback = KernelVisualizationCallback(every_n_epochs=3)
    due = [callback._due(SimpleNamespace(current_epoch=e)) for e in range(6)]
    assert due == [False, False, True, False, False, True]
    with pytest.raises(ValueError, match="every_n_epochs"):
        KernelVisualizationCallback(every_n_epochs=0)


def test_first_image_of_a_batch():
    images = torch.rand(4, 3, 8, 8)
    assert first_image((images, torch.zeros(4))).shape == (1, 3, 8, 8)
    assert first_image({"image": images}).shape == (1, 3, 8, 8)
    assert first_image(images).shape == (1, 3, 8, 8)
    assert first_image((torch.zeros(4), [{}])) is None

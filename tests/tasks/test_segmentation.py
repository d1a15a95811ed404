"""SegmentationTask: losses with ignored pixels, mIoU conventions, predictions, configs, CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dck_lightning.tasks.segmentation import SegmentationTask, soft_dice_loss

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [
    "shapes_segmentation.yaml",
    "voc_segmentation_fpn.yaml",
    "voc_segmentation_deeplabv3.yaml",
]
TINY_BACKBONE = {"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}
HEAD_KWARGS = {"fpn": {"fpn_channels": 16, "channels": 16}, "deeplabv3": {}}


def tiny_task(
    head: str = "fpn", aux_loss: bool = False, num_classes: int = 5, **kwargs
) -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(
        head=head,
        backbone={"class_path": "dcb_resnet18", "init_args": TINY_BACKBONE},
        head_kwargs=HEAD_KWARGS[head],
        aux_loss=aux_loss,
        num_classes=num_classes,
        **kwargs,
    )


def make_batch(size: int = 64, num_classes: int = 5, orig_sizes=None):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, size, size, generator=generator)
    masks = torch.randint(0, num_classes, (2, size, size), generator=generator)
    masks[:, : size // 4] = 255  # a band of ignored pixels
    orig_sizes = orig_sizes or [(size, size)] * 2
    targets = [
        {"mask": masks[i], "orig_size": torch.tensor(orig_sizes[i]), "image_id": f"img{i}"}
        for i in range(2)
    ]
    return images, targets


# -- losses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "aux_loss"), [("fpn", False), ("fpn", True), ("deeplabv3", False), ("deeplabv3", True)]
)
def test_train_step_finite_loss_and_backbone_gradients(head: str, aux_loss: bool) -> None:
    task = tiny_task(head, aux_loss, dice_weight=0.5)
    images, targets = make_batch()
    loss = task.training_step((images, targets), 0)  # self.log outside a Trainer only warns
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    stem = task.model.body.stem[0].weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_loss_terms_and_weights() -> None:
    task = tiny_task("deeplabv3", aux_loss=True, aux_weight=0.25, dice_weight=0.5)
    images, targets = make_batch()
    masks = task.masks(targets, images.device)
    losses = task.compute_losses(task(images), masks)
    assert set(losses) == {"loss", "ce", "aux", "dice"}
    expected = losses["ce"] + 0.25 * losses["aux"] + 0.5 * losses["dice"]
    torch.testing.assert_close(losses["loss"], expected)


def test_ignored_pixels_do_not_contribute_to_the_loss() -> None:
    task = tiny_task("fpn", aux_loss=True, dice_weight=1.0, num_classes=4)
    masks = torch.randint(0, 4, (2, 16, 16))
    masks[:, :5] = 255
    ignored = masks == 255
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    aux = torch.randn(2, 4, 16, 16, requires_grad=True)
    losses = task.compute_losses({"out": logits, "aux": aux}, masks)
    # The cross-entropy is the mean over the valid pixels only...
    valid_ce = F.cross_entropy(logits.permute(0, 2, 3, 1)[~ignored], masks[~ignored])
    torch.testing.assert_close(losses["ce"], valid_ce)
    # ... and no term of the total loss sees the logits of an ignored pixel.
    losses["loss"].backward()
    for grad in (logits.grad, aux.grad):
        assert grad.permute(0, 2, 3, 1)[ignored].abs().max() == 0
        assert grad.permute(0, 2, 3, 1)[~ignored].abs().max() > 0
    # Changing the logits of ignored pixels changes nothing.
    changed = logits.detach().clone()
    changed.permute(0, 2, 3, 1)[ignored] = 100.0 * torch.randn(int(ignored.sum()), 4)
    again = task.compute_losses({"out": changed, "aux": aux.detach()}, masks)
    torch.testing.assert_close(again["loss"], losses["loss"].detach())


def test_batch_with_every_pixel_ignored_gives_zero_loss_not_nan() -> None:
    task = tiny_task("fpn", aux_loss=True, dice_weight=1.0, num_classes=3)
    masks = torch.full((1, 8, 8), 255)
    losses = task.compute_losses(
        {"out": torch.randn(1, 3, 8, 8), "aux": torch.randn(1, 3, 8, 8)}, masks
    )
    for value in losses.values():
        assert torch.isfinite(value) and value == 0


def test_soft_dice_of_a_perfect_prediction_is_zero() -> None:
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0] = 255
    logits = 50.0 * F.one_hot(torch.where(target == 255, 0, target), 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(logits, target) < 1e-6
    assert soft_dice_loss(-logits, target) > 0.5


# -- metrics -----------------------------------------------------------------------------

# One 2×5 image, 4 classes. Pixels 6 and 7 are ignored (255).
TARGET = torch.tensor([[0, 0, 0, 1, 1], [1, 255, 255, 0, 1]])
PRED = torch.tensor([[0, 0, 1, 1, 1], [2, 3, 1, 0, 1]])
# Over the 8 valid pixels:
#   class 0: TP 3 (pixels 0, 1, 8), FN 1 (pixel 2 predicted 1), FP 0        -> IoU 3/4
#   class 1: TP 3 (pixels 3, 4, 9), FP 1 (pixel 2), FN 1 (pixel 5 pred 2)  -> IoU 3/5
#   class 2: absent from the target but predicted once (pixel 5)           -> IoU 0, counted
#   class 3: only predicted on an ignored pixel (6), which is dropped, so it appears
#            neither in the target nor in the predictions                   -> no IoU, left out
# The convention (torchmetrics 1.9 macro average with the default zero_division=0, which
# gives weight 0 to a class whose row and column of the confusion matrix are empty): a class
# absent from both targets and predictions has IoU 0/0 and is left out of the mean (the
# nanmean of mmsegmentation; the VOC devkit's per-class IoU from dataset-wide counts is the same
# computation, and all 21 classes occur in VOC val); a false-positive-only class scores 0.
# Counting class 3 as 0 would give 0.3375, as 1 would give 0.5875; not dropping the ignored
# pixels would make class 3 a false positive (IoU 0) and add one to class 1.
HAND_MIOU = (3 / 4 + 3 / 5 + 0.0) / 3  # 0.45
HAND_PIXEL_ACC = 6 / 8  # pixels 0, 1, 3, 4, 8, 9 right


def test_miou_matches_hand_computation_with_ignore_and_absent_class() -> None:
    task = tiny_task(num_classes=4)
    task.val_metrics.update(PRED[None], TARGET[None])
    values = task.val_metrics.compute()
    assert math.isclose(float(values["val/miou"]), HAND_MIOU, rel_tol=1e-6)
    assert math.isclose(float(values["val/pixel_acc"]), HAND_PIXEL_ACC, rel_tol=1e-6)
    task.test_per_class.update(PRED[None], TARGET[None])
    per_class = task.test_per_class.compute()
    torch.testing.assert_close(per_class[:3], torch.tensor([0.75, 0.6, 0.0]))
    assert torch.isnan(per_class[3])  # absent: NaN in the per-class log, not 0


def test_miou_is_accumulated_over_the_epoch_not_averaged_per_batch() -> None:
    task = tiny_task(num_classes=4)
    # Split the image in two "batches": dataset-level IoU must equal the one-shot value.
    task.val_metrics.update(PRED[:1][None], TARGET[:1][None])
    task.val_metrics.update(PRED[1:][None], TARGET[1:][None])
    assert math.isclose(float(task.val_metrics.compute()["val/miou"]), HAND_MIOU, rel_tol=1e-6)


def test_monitor_is_val_miou() -> None:
    assert (SegmentationTask.monitor, SegmentationTask.mode) == ("val/miou", "max")


# -- predictions ---------------------------------------------------------------------------


def test_predict_step_returns_maps_at_the_original_size() -> None:
    task = tiny_task(num_classes=5).eval()
    images, targets = make_batch(64, orig_sizes=[(100, 80), (64, 64)])
    with torch.no_grad():
        maps = task.predict_step((images, targets), 0)
        assert [tuple(m.shape) for m in maps] == [(100, 80), (64, 64)]
        assert all(m.dtype == torch.uint8 and int(m.max()) < 5 for m in maps)
        # Same as argmax of the logits resized to the original size.
        logits = task(images)["out"]
        expected = F.interpolate(
            logits[:1], size=(100, 80), mode="bilinear", align_corners=False
        ).argmax(1)[0]
        torch.testing.assert_close(maps[0], expected.to(torch.uint8))
        # A bare image tensor: maps at the input size.
        assert [tuple(m.shape) for m in task.predict_step(images, 0)] == [(64, 64), (64, 64)]


def test_prediction_images_are_rgb_panels_with_captions() -> None:
    task = tiny_task(num_classes=5, class_names=["background", "a", "b", "c", "d"])
    images, targets = make_batch(32)
    panels = task.prediction_images((images, targets))
    assert len(panels) == 2
    caption, panel = panels[0]
    assert caption.startswith("img0")
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    # Three enlarged views (image | ground truth | prediction) side by side, plus title/legend.
    assert panel.shape[1] >= 3 * 160 and panel.shape[0] > 160
    assert task.training  # the train/eval mode is restored


# -- configs and the CLI -----------------------------------------------------------------


def run_cli(args: list[str]):
    from dck_lightning.cli import main

    try:
        return main(args)
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"dck {' '.join(args)} exited with {exit_.code}"
        return None


@pytest.mark.parametrize("config", CONFIGS)
def test_configs_parse(config: str, capsys: pytest.CaptureFixture) -> None:
    run_cli(["fit", "-c", str(REPO_ROOT / "configs" / config), "--print_config"])
    printed = capsys.readouterr().out
    assert "dck_lightning.tasks.segmentation.SegmentationTask" in printed
    assert "PredictionImageLogger" in printed


TINY_OVERRIDES = [
    "--data.init_args.image_size",
    "64",
    "--data.init_args.num_train",
    "4",
    "--data.init_args.num_val",
    "2",
    "--data.init_args.num_test",
    "2",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--model.init_args.backbone.init_args",
    '{"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}',
    "--model.init_args.head_kwargs",
    '{"fpn_channels": 16, "channels": 16}',
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "1",
    "--trainer.limit_predict_batches",
    "1",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--run.wandb",
    "disabled",
]


def test_cli_fit_test_predict_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")  # CSV only, so the image logger writes PNGs
    config = str(REPO_ROOT / "configs" / "shapes_segmentation.yaml")
    common = ["-c", config, *TINY_OVERRIDES, "--run.root", str(tmp_path)]
    fit = run_cli(["fit", *common, "--trainer.max_steps", "2", "--trainer.max_epochs", "1"])
    metrics = fit.trainer.callback_metrics
    assert {"val/miou", "val/pixel_acc", "val/loss", "train/loss"} <= set(metrics)
    run_dir = Path(fit.run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists()
    pngs = sorted(
        (run_dir / "images").glob("epoch_000_*.png")
    )  # the config's PredictionImageLogger
    assert len(pngs) == 2  # one per validation image (batch of 2)
    test = run_cli(["test", *common, "--ckpt_path", str(last)])
    names = ["background", "circle", "square", "triangle", "diamond", "cross", "ring"]
    assert {"test/miou", "test/pixel_acc", *(f"test/iou/{n}" for n in names)} <= set(
        test.trainer.callback_metrics
    )
    sizes = {f"test/iou_{b}" for b in ("small", "medium", "large")}
    assert sizes & set(test.trainer.callback_metrics)  # the buckets the 2 test images have
    predict = run_cli(["predict", *common, "--ckpt_path", str(last)])
    predictions = predict.trainer.predict_loop.predictions
    assert len(predictions) == 1 and [tuple(m.shape) for m in predictions[0]] == [
        (64, 64),
        (64, 64),
    ]


@pytest.mark.slow
def test_voc_config_on_the_shared_sample(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VOC deeplabv3 config (aux head) on the real VOC files: predictions at the original size."""
    from PIL import Image

    monkeypatch.setenv("WANDB_MODE", "disabled")
    voc = shared_data / "voc-sample"
    common = [
        "-c",
        str(REPO_ROOT / "configs" / "voc_segmentation_deeplabv3.yaml"),
        "--data.init_args.data_dir",
        str(voc),
        "--data.init_args.image_size",
        "64",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--model.init_args.backbone.init_args",
        '{"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}',
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_predict_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--run.root",
        str(tmp_path),
    ]
    fit = run_cli(
        ["fit", *common, "--trainer.limit_train_batches", "1", "--trainer.max_epochs", "1"]
    )
    assert "val/miou" in fit.trainer.callback_metrics
    last = Path(fit.run_dir) / "checkpoints" / "last.ckpt"
    predict = run_cli(["predict", *common, "--ckpt_path", str(last)])
    maps = predict.trainer.predict_loop.predictions[0]
    ids = (voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()[:2]
    for ids_, prediction in zip(ids, maps):
        width, height = Image.open(voc / f"VOCdevkit/VOC2012/JPEGImages/{ids_}.jpg").size
        assert tuple(prediction.shape) == (height, width)


def test_eval_metrics_score_at_the_original_resolution_when_targets_carry_it() -> None:
    from torchmetrics.classification import MulticlassConfusionMatrix

    # 4x4 logits: class 1 on the left half, class 0 on the right; the original image is 4x8.
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, :, :2], logits[0, 0, :, 2:] = 5.0, 5.0
    orig = torch.zeros(4, 8, dtype=torch.uint8)
    orig[:, :4] = 1
    orig[0, 0], orig[3, 7] = 255, 2  # an ignored pixel and a missed class-2 pixel
    resized = torch.zeros(1, 4, 4, dtype=torch.long)
    resized[0, :, :2] = 1

    at_original = MulticlassConfusionMatrix(3, ignore_index=255)
    SegmentationTask.update_metrics([at_original], logits, resized, [{"orig_mask": orig}])
    expected = torch.tensor([[15, 0, 0], [0, 15, 0], [1, 0, 0]])  # 31 scored pixels, not 16
    assert torch.equal(at_original.compute(), expected)

    at_batch = MulticlassConfusionMatrix(3, ignore_index=255)
    SegmentationTask.update_metrics([at_batch], logits, resized, [{"mask": resized[0]}])
    assert torch.equal(at_batch.compute(), torch.tensor([[8, 0, 0], [0, 8, 0], [0, 0, 0]]))


def test_iou_per_object_size_uses_the_targets_instances_and_is_logged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two touching 2×2 class-1 squares A and B in a 6×6 image; predicted: A, one pixel of B
    and one background pixel next to A. With the targets' instance ids A scores 4/5 (B's
    pixel is not A's false positive) and B 1/5; as one connected component (no ids) the 8
    pixels score 5/9. Scaled to the 6-px image (reference 128) both sizes are "medium"."""
    mask = torch.zeros(6, 6, dtype=torch.long)
    mask[2:4, 1:5] = 1
    ids = torch.zeros(6, 6, dtype=torch.long)
    ids[2:4, 1:3], ids[2:4, 3:5] = 1, 2
    pred = torch.zeros(6, 6, dtype=torch.long)
    pred[2:4, 1:3], pred[2, 3], pred[2, 0] = 1, 1, 1
    logits = F.one_hot(pred, 2).permute(2, 0, 1)[None].float()
    for instances, expected in ((ids, (4 / 5 + 1 / 5) / 2), (None, 5 / 9)):
        task = tiny_task(num_classes=2, area_reference_size=128)
        logged = {}
        monkeypatch.setattr(
            task, "log", lambda name, value, log=logged, **kw: log.__setitem__(name, float(value))
        )
        target = {"mask": mask} if instances is None else {"mask": mask, "instances": instances}
        task.update_metrics([task.val_size_iou], logits, mask[None], [target])
        task.on_validation_epoch_end()
        assert logged == pytest.approx({"val/iou_medium": expected})  # no small, no large
        assert task.val_size_iou.count.sum() == 0  # reset for the next epoch

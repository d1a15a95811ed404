"""DetectionTask and the torchvision detectors over the shared backbone.

Tiny everything: 64×64 images, a narrow backbone, 16 FPN channels, one head conv.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dck_lightning.models.detection import (
    Detector,
    PassthroughTransform,
    create_detector,
    make_anchor_generator,
)
from dck_lightning.tasks.detection import DetectionTask, coco_map, metric_targets

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["shapes_detection.yaml", "voc_detection_fcos.yaml", "voc_detection_retinanet.yaml"]
TINY_BACKBONE = {"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}
DETECTORS = ["fcos", "retinanet", "faster_rcnn"]


def tiny_task(detector: str = "fcos", backbone: str = "dcb_resnet18", **kwargs) -> DetectionTask:
    torch.manual_seed(0)
    options = dict(
        detector=detector,
        backbone={"class_path": backbone, "init_args": TINY_BACKBONE},
        fpn_channels=16,
        head_convs=1,
        num_classes=6,
    )
    options.update(kwargs)
    return DetectionTask(**options)


def target(boxes, labels, difficult=None, orig_size=(64, 64), image_id=0) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor(labels, dtype=torch.int64)
    difficult = (
        torch.zeros_like(labels, dtype=torch.bool) if difficult is None else torch.tensor(difficult)
    )
    return {
        "boxes": boxes,
        "labels": labels,
        "difficult": difficult,
        "orig_size": torch.tensor(orig_size),
        "image_id": image_id,
    }


def batch_with_empty(size: int = 64) -> tuple[torch.Tensor, list[dict]]:
    """Two images: one with two objects, one with none."""
    images = torch.randn(2, 3, size, size)
    targets = [
        target([[4, 6, 30, 28], [33, 35, 60, 62]], [0, 5], image_id=0),
        target([], [], image_id=1),
    ]
    return images, targets


# -- the model ---------------------------------------------------------------------------


@pytest.mark.parametrize("detector", DETECTORS)
def test_train_step_losses_and_gradients(detector: str) -> None:
    task = tiny_task(detector)
    task.train()
    images, targets = batch_with_empty()
    losses = task.model(images, targets)
    expected = {
        "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
        "retinanet": {"classification", "bbox_regression"},
        "faster_rcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    }[detector]
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    body = task.model.backbone.body
    stem_grad = body.stem[0].weight.grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0
    # the DCB stages (3, 4) get gradients too
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in body.stages[3].parameters())


@pytest.mark.parametrize("detector", DETECTORS)
def test_eval_predictions_and_empty_batches(detector: str) -> None:
    task = tiny_task(detector, score_thresh=0.0, detections_per_img=7)
    images, targets = batch_with_empty()
    # a batch with no object at all trains
    task.train()
    empty = [target([], []), target([], [])]
    losses = task.model(images, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # eval: one dict per image, 0-based labels, boxes inside the image
    task.eval()
    with torch.no_grad():
        detections = task.model(images)
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "labels", "scores"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) == det["scores"].shape
        assert 0 < n <= 7
        assert det["labels"].min() >= 0 and det["labels"].max() < 6
        assert det["boxes"].min() >= 0 and det["boxes"].max() <= 64
    # validation with an empty image updates and computes the metric
    task.validation_step((images, targets), 0)
    task.validation_step((images, empty), 1)
    results = task.val_map.compute()
    assert 0.0 <= float(results["map_50"]) <= 1.0


def test_labels_are_shifted_past_background_and_back() -> None:
    model = create_detector(
        "fcos", "resnet18", num_classes=3, backbone_kwargs=TINY_BACKBONE, fpn_channels=16
    )
    assert (
        isinstance(model, Detector) and model.detector.head.classification_head.num_classes == 4
    )  # + background
    seen = {}

    def fake(images, targets=None):
        if targets is not None:
            seen["labels"] = [t["labels"].tolist() for t in targets]
            return {"loss": torch.tensor(0.0)}
        return [
            {
                "boxes": torch.tensor([[1.0, 1, 5, 5]] * 3),
                "labels": torch.tensor([0, 1, 3]),
                "scores": torch.ones(3),
            }
        ]

    model.detector.forward = fake
    model.train()
    model(torch.zeros(1, 3, 32, 32), [target([[1, 1, 4, 4], [2, 2, 9, 9]], [0, 2])])
    assert seen["labels"] == [[1, 3]]
    model.eval()
    out = model(torch.zeros(1, 3, 32, 32))
    assert out[0]["labels"].tolist() == [0, 2]  # the background slot (0) is dropped
    assert out[0]["boxes"].shape == (2, 4)


def test_passthrough_transform_neither_resizes_nor_normalises() -> None:
    transform = PassthroughTransform()
    images = [torch.randn(3, 40, 64), torch.randn(3, 40, 64)]
    for mode in (True, False):
        transform.train(mode)
        targets = [{"boxes": torch.tensor([[1.0, 2, 30, 33]]), "labels": torch.tensor([1])}] * 2
        batch, out_targets = transform(images, targets)
        assert batch.image_sizes == [(40, 64), (40, 64)]
        assert torch.equal(
            batch.tensors[:, :, :40, :64], torch.stack(images)
        )  # padded to /32, else unchanged
        assert torch.equal(out_targets[0]["boxes"], targets[0]["boxes"])
    detections = [{"boxes": torch.tensor([[1.0, 2, 30, 33]])}]
    assert torch.equal(
        transform.postprocess(detections, [(40, 64)], [(40, 64)])[0]["boxes"],
        detections[0]["boxes"],
    )
    model = create_detector(
        "retinanet", "resnet18", num_classes=2, backbone_kwargs=TINY_BACKBONE, fpn_channels=16
    )
    assert isinstance(model.detector.transform, PassthroughTransform)


def test_anchor_sizes_follow_the_strides() -> None:
    strides = [8, 16, 32, 64, 128]
    fcos = make_anchor_generator("fcos", strides, 1.0)
    assert [s[0] for s in fcos.sizes] == strides and fcos.num_anchors_per_location() == [1] * 5
    retina = make_anchor_generator("retinanet", strides, 4.0)
    assert retina.num_anchors_per_location() == [9] * 5
    assert math.isclose(retina.sizes[0][2], 32 * 2 ** (2 / 3))
    rcnn = make_anchor_generator("faster_rcnn", [4, 8, 16, 32, 64], 8.0)
    assert [s[0] for s in rcnn.sizes] == [32, 64, 128, 256, 512]
    model = create_detector(
        "faster_rcnn", "resnet18", num_classes=2, backbone_kwargs=TINY_BACKBONE, fpn_channels=16
    )
    assert model.backbone.strides == [4, 8, 16, 32, 64]
    assert model.detector.roi_heads.box_roi_pool.featmap_names == ["c2", "c3", "c4", "c5"]
    with pytest.raises(ValueError, match="detector must be one of"):
        create_detector("yolo")


# -- the task ----------------------------------------------------------------------------


def test_training_step_logs_every_loss_term(monkeypatch: pytest.MonkeyPatch) -> None:
    task = tiny_task("faster_rcnn")
    logged = {}
    monkeypatch.setattr(task, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    task.train()
    loss = task.training_step(batch_with_empty(), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    assert set(logged) == {
        "train/loss",
        "train/loss_classifier",
        "train/loss_box_reg",
        "train/loss_objectness",
        "train/loss_rpn_box_reg",
    }
    assert math.isclose(
        float(logged["train/loss"]),
        sum(float(logged[k]) for k in logged if k != "train/loss"),
        rel_tol=1e-5,
    )
    assert DetectionTask.monitor == "val/map_50" and DetectionTask.mode == "max"


def test_map_is_computed_once_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    task = tiny_task("fcos")
    task.eval()
    calls = []
    original = task.val_map.compute
    monkeypatch.setattr(task.val_map, "compute", lambda: calls.append(1) or original())
    logged = {}
    monkeypatch.setattr(task, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    with torch.no_grad():
        for i in range(3):
            task.validation_step(batch_with_empty(), i)
    assert calls == []  # the steps only update
    task.on_validation_epoch_end()
    assert calls == [1]
    assert {"val/map", "val/map_50", "val/map_75", "val/mar_100"} <= set(logged)
    assert "val/loss" not in logged


@pytest.mark.parametrize(
    "reference, expected",
    [
        (None, {"small": 51 / 101, "medium": 1.0}),
        (512, {"small": 1.0, "medium": 0.0, "large": 1.0}),
    ],
)
def test_map_per_object_size_is_logged_in_val_and_test(
    monkeypatch: pytest.MonkeyPatch, reference, expected
) -> None:
    """Boxes of 36, 256 and 1,600 px² in 128-px images, the middle one missed: COCO's buckets
    put the first two in "small" (one of two found: 51 of 101 recall points) and the third in
    "medium"; scaled with area_reference_size=512 (small < 8², large >= 24²) one per bucket."""
    task = tiny_task("fcos", area_reference_size=reference)
    task.eval()
    logged = {}
    monkeypatch.setattr(task, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    gts = [target([[0, 0, 6, 6], [20, 20, 36, 36], [50, 50, 90, 90]], [0, 0, 0])]
    found = {"boxes": torch.tensor([[0.0, 0, 6, 6], [50, 50, 90, 90]])}
    found.update(scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([0, 0]))
    monkeypatch.setattr(task.model, "forward", lambda images, targets=None: [found])
    images = torch.zeros(1, 3, 128, 128)
    task.validation_step((images, gts), 0)
    task.test_step((images, gts), 0)
    task.on_validation_epoch_end()
    task.on_test_epoch_end()
    for stage in ("val", "test"):
        buckets = ("small", "medium", "large")
        sizes = {b: logged[f"{stage}/map_{b}"] for b in buckets if f"{stage}/map_{b}" in logged}
        assert sizes == pytest.approx(expected)  # a bucket without objects is not logged


def test_test_epoch_logs_per_class_ap(monkeypatch: pytest.MonkeyPatch) -> None:
    task = tiny_task("fcos", class_names=["a", "b", "c", "d", "e", "f"])
    logged = {}
    monkeypatch.setattr(
        task, "log", lambda name, value, **kw: logged.__setitem__(name, float(value))
    )
    targets = metric_targets([target([[0, 0, 20, 20], [30, 30, 50, 50]], [0, 1])])
    preds = [
        {
            "boxes": torch.tensor([[0.0, 0, 20, 20], [30, 31, 50, 50]]),
            "scores": torch.tensor([0.9, 0.8]),
            "labels": torch.tensor([0, 2]),
        }
    ]
    for metric in (task.test_map, task.test_map_50):
        metric.update(preds, targets)
    task.on_test_epoch_end()
    assert logged["test/ap50/a"] == pytest.approx(1.0) and logged["test/ap/a"] == pytest.approx(1.0)
    assert logged["test/ap50/b"] == 0.0  # missed (the detection says "c")
    assert "test/ap50/c" not in logged  # no ground truth: AP undefined (-1), not logged
    assert logged["test/map_50"] == pytest.approx(0.5)


def test_predict_step_maps_boxes_to_original_coordinates() -> None:
    task = tiny_task("fcos")
    task.eval()

    def fake(images, targets=None):
        return [
            {
                "boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 64.0, 64.0]]),
                "labels": torch.tensor([2, 0]),
                "scores": torch.tensor([0.9, 0.5]),
            }
            for _ in range(images.shape[0])
        ]

    task.model.forward = fake
    images = torch.zeros(2, 3, 64, 64)
    targets = [
        target([], [], orig_size=(128, 256), image_id="a"),
        target([], [], orig_size=(64, 64), image_id="b"),
    ]
    out = task.predict_step((images, targets), 0)
    # x scales by 256 / 64 = 4, y by 128 / 64 = 2
    assert torch.allclose(
        out[0]["boxes"], torch.tensor([[40.0, 40.0, 120.0, 80.0], [0.0, 0.0, 256.0, 128.0]])
    )
    assert torch.allclose(
        out[1]["boxes"], torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 64.0, 64.0]])
    )
    assert out[0]["labels"].tolist() == [2, 0] and out[0]["image_id"] == "a"
    assert torch.allclose(out[0]["scores"], torch.tensor([0.9, 0.5]))
    # images without targets: input coordinates
    assert torch.allclose(
        task.predict_step(images, 0)[0]["boxes"][0], torch.tensor([10.0, 20.0, 30.0, 40.0])
    )


def test_prediction_images_draw_ground_truth_beside_predictions() -> None:
    task = tiny_task("fcos", class_names=["a", "b", "c", "d", "e", "f"])
    task.display_score_thresh = 0.0
    images, targets = batch_with_empty()
    targets[0]["difficult"] = torch.tensor([False, True])
    panels = task.prediction_images((images, targets))
    assert len(panels) == 2
    caption, image = panels[0]
    # 64 px images are upscaled 4× to 256 for legible labels; GT | 4 px | predictions
    assert image.shape == (256, 2 * 256 + 4, 3) and image.dtype == np.uint8
    assert caption.startswith("0: ground truth (2)")
    assert task.model.training  # restored


def test_real_voc_batches_flow_through_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VOC sample (000005 has difficult objects): train step, validation mAP, predictions in file coordinates."""
    data_dir = (
        Path(os.environ.get("DCK_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")) / "voc-sample"
    )
    if not data_dir.is_dir():
        pytest.skip(f"shared VOC sample not found at {data_dir}")
    from dck_lightning.data.voc import VOCDetectionDataModule

    data = VOCDetectionDataModule(
        str(data_dir),
        train_sets=["2007-trainval"],
        val_sets=["2007-trainval"],
        test_sets=["2007-test"],
        image_size=64,
        batch_size=5,
        num_workers=0,
        keep_difficult_in_train=True,
    )
    data.setup("fit")
    data.setup("test")
    images, targets = data.on_after_batch_transfer(next(iter(data.val_dataloader())), 0)
    assert any(bool(t["difficult"].any()) for t in targets)
    task = tiny_task("retinanet", num_classes=data.num_classes)
    monkeypatch.setattr(task, "log", lambda *args, **kwargs: None)
    task.train()
    assert torch.isfinite(task.training_step((images, targets), 0))
    task.eval()
    with torch.no_grad():
        task.validation_step((images, targets), 0)
        predictions = task.predict_step((images, targets), 0)
    task.on_validation_epoch_end()
    for prediction, t in zip(predictions, targets):
        height, width = t["orig_size"].tolist()
        assert prediction["image_id"] == t["image_id"]
        if len(prediction["boxes"]):
            assert (
                prediction["boxes"][:, 0::2].max() <= width
                and prediction["boxes"][:, 1::2].max() <= height
            )


# -- the metric --------------------------------------------------------------------------


def random_detection_problem(seed: int = 0, n_images: int = 6, n_classes: int = 3):
    """Ground truth with some crowd boxes, and noisy, partly wrong detections."""
    rng = np.random.default_rng(seed)
    gts, dts = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(8, 40, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, n_classes, n)
        crowd = rng.random(n) < 0.2
        gts.append((boxes, labels, crowd))
        # detections: jittered copies of most gt boxes, some with a wrong label, plus clutter
        keep = rng.random(n) < 0.8
        det_boxes = boxes[keep] + rng.normal(0, 0.1, (int(keep.sum()), 4)) * np.tile(wh[keep], 2)
        det_labels = np.where(
            rng.random(int(keep.sum())) < 0.8,
            labels[keep],
            rng.integers(0, n_classes, int(keep.sum())),
        )
        m = int(rng.integers(0, 4))
        cxy = rng.uniform(0, 80, (m, 2))
        clutter = np.concatenate([cxy, cxy + rng.uniform(4, 40, (m, 2))], 1)
        det_boxes = np.concatenate([det_boxes, clutter]).clip(0, 120)
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        det_labels = np.concatenate([det_labels, rng.integers(0, n_classes, m)])
        scores = rng.uniform(0.05, 1.0, len(det_labels))
        dts.append((det_boxes, det_labels, scores))
    return gts, dts


def pycocotools_map(gts, dts, n_classes: int) -> tuple[float, float]:
    images, annotations, results = [], [], []
    for image_id, ((boxes, labels, crowd), (dboxes, dlabels, scores)) in enumerate(zip(gts, dts)):
        images.append({"id": image_id, "width": 128, "height": 128})
        for box, label, is_crowd in zip(boxes, labels, crowd):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": int(is_crowd),
                }
            )
        for box, label, score in zip(dboxes, dlabels, scores):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "score": float(score),
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(n_classes)],
    }
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


@pytest.mark.parametrize("seed", [1, 2])  # both have recalls landing exactly on a threshold
def test_map_matches_pycocotools(seed: int) -> None:
    gts, dts = random_detection_problem(seed)
    metric = coco_map()
    metric.update(
        [
            {
                "boxes": torch.tensor(b, dtype=torch.float32),
                "labels": torch.tensor(lab),
                "scores": torch.tensor(s, dtype=torch.float32),
            }
            for b, lab, s in dts
        ],
        metric_targets([target(b, lab, difficult=c.tolist()) for b, lab, c in gts]),
    )
    ours = metric.compute()
    reference_map, reference_map_50 = pycocotools_map(gts, dts, 3)
    assert 0.05 < reference_map_50 < 0.99  # a non-trivial problem
    assert float(ours["map"]) == pytest.approx(reference_map, abs=1e-6)
    assert float(ours["map_50"]) == pytest.approx(reference_map_50, abs=1e-6)


def test_difficult_objects_are_ignored() -> None:
    images_gt = [
        target(
            [[0, 0, 20, 20], [40, 40, 60, 60], [80, 80, 100, 100]],
            [0, 0, 0],
            difficult=[False, True, True],
        )
    ]
    preds = [
        {
            "boxes": torch.tensor(
                [[0.0, 0, 20, 20], [40, 40, 60, 60]]
            ),  # hits the normal and one difficult box
            "scores": torch.tensor([0.6, 0.9]),  # the difficult hit ranks first
            "labels": torch.tensor([0, 0]),
        }
    ]
    metric = coco_map()
    metric.update(preds, metric_targets(images_gt))
    assert float(metric.compute()["map_50"]) == pytest.approx(
        1.0
    )  # neither a FP nor a missed object
    # the same boxes counted as ordinary objects: one miss and a lower precision
    plain = coco_map()
    plain.update(
        preds, metric_targets([{k: v for k, v in images_gt[0].items() if k != "difficult"}])
    )
    assert float(plain.compute()["map_50"]) < 0.7


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
    assert "dck_lightning.tasks.detection.DetectionTask" in printed
    assert "PredictionImageLogger" in printed


TINY_OVERRIDES = [
    "--data.init_args.image_size",
    "64",
    "--data.init_args.num_train",
    "8",
    "--data.init_args.num_val",
    "4",
    "--data.init_args.num_test",
    "4",
    "--data.init_args.batch_size",
    "4",
    "--data.init_args.num_workers",
    "0",
    "--model.init_args.backbone.init_args",
    '{"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}',
    "--model.init_args.fpn_channels",
    "16",
    "--model.init_args.head_convs",
    "1",
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
]


@pytest.mark.slow
def test_cli_fit_test_predict_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the config's run.wandb is auto: CSV + PNGs only
    config = str(REPO_ROOT / "configs" / "shapes_detection.yaml")
    common = ["-c", config, *TINY_OVERRIDES, "--run.root", str(tmp_path)]
    fit = run_cli(["fit", *common, "--trainer.max_steps", "2", "--trainer.max_epochs", "1"])
    run_dir = Path(fit.run_dir)
    assert "val/map_50" in fit.trainer.callback_metrics
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists()
    assert sorted(
        (run_dir / "images").glob("epoch_000_*.png")
    )  # the PredictionImageLogger of the config
    test = run_cli(["test", *common, "--ckpt_path", str(last)])
    assert {"test/map", "test/map_50"} <= set(test.trainer.callback_metrics)
    sizes = {f"test/map_{b}" for b in ("small", "medium", "large")}
    assert sizes & set(test.trainer.callback_metrics)  # the buckets the test images have
    predict = run_cli(["predict", *common, "--ckpt_path", str(last)])
    predictions = predict.trainer.predict_loop.predictions
    assert predictions and set(predictions[0][0]) == {"image_id", "boxes", "labels", "scores"}

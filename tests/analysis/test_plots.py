"""Plot helpers return figures; models load from checkpoints; DCK layers are found and read."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from torch import nn

from dck_lightning.analysis import (
    ablation_table,
    dck_layers,
    deform_layers,
    draw_predictions,
    evaluate,
    figure_to_array,
    load_datamodule,
    load_history,
    load_runs,
    load_task,
    per_class_metrics,
    per_class_values,
    plot_ablation,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_per_class,
    plot_position_fields,
    plot_predictions,
    plot_receptive_fields,
    plot_sweep,
    position_fields,
    predict,
    receptive_field_table,
    sample_batch,
    to_display,
)
from dck_lightning.layers import DynamicConv2d
from dck_lightning.tasks import ClassificationTask

DCK = "model.init_args.backbone.init_args.dck"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def runs(runs_root):
    return load_runs(runs_root)


@pytest.fixture(scope="module")
def task(ablation_runs):
    return load_task(ablation_runs[0])


@pytest.fixture(scope="module")
def batch(ablation_runs):
    datamodule = load_datamodule(ablation_runs[0])
    return datamodule, *sample_batch(datamodule, "val", 3)


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_learning_curves(runs, ablation_runs):
    fig = plot_learning_curves(runs, ["train/loss_epoch", "val/acc", "no/such_metric"], hue=DCK)
    assert isinstance(fig, Figure)
    loss, acc, missing = fig.axes[:3]
    # The "wandb" run did not set dck: it is recorded at its default, adaptive.
    assert legend_texts(acc) == ["dck=adaptive", "dck=static"]
    assert len(acc.get_lines()) == 5 and not missing.get_lines()
    line = acc.get_lines()[0]
    assert list(line.get_xdata()) == [1, 2]  # "after epoch N"
    assert list(line.get_ydata()) == pytest.approx(
        list(load_history(ablation_runs[0])["val/acc"].dropna())
    )
    # From histories, per step.
    fig = plot_learning_curves({"a": load_history(ablation_runs[0])}, "train/loss_epoch", x="step")
    assert legend_texts(fig.axes[0]) == ["a"]
    figure_to_array(fig)


def test_ablation(runs):
    table = ablation_table(runs, DCK, "best/val/acc")
    expected = runs.groupby(DCK)["best/val/acc"].agg(["mean", "std", "count"])
    assert not runs[DCK].isna().any()  # the run that did not set dck has its default value
    assert set(table.index) == {"adaptive", "static"} and table.loc["adaptive", "count"] == 3
    for key in table.index:
        assert table.loc[key, "mean"] == pytest.approx(expected.loc[key, "mean"])
        assert table.loc[key, "count"] == expected.loc[key, "count"]
    fig = plot_ablation(runs, DCK, "best/val/acc")
    ax = fig.axes[0]
    assert len(ax.patches) == 2 and [
        t.get_text().split("\n")[0] for t in ax.get_xticklabels()
    ] == list(table.index)
    assert (
        sum(
            len(c.get_offsets())
            for c in ax.collections
            if hasattr(c, "get_offsets") and len(c.get_offsets())
        )
        >= 5
    )
    two = ablation_table(runs, [DCK, "seed_everything"])
    assert len(two) == 5
    with pytest.raises(KeyError, match="no column"):
        plot_ablation(runs, "model.init_args.backbone.init_args.nope")


def test_sweep_plot_zooms_on_the_seeds_and_sets_them_against_throughput():
    """plot_sweep: a dot per finished seed, the mean and its 95 % interval per combination on a
    zoomed axis (0.97-0.99 values: 0 not shown), the means against training images/s (log)."""
    per_run = pd.DataFrame({
        "combination": ["a", "b", "a", "b", "a", "b"], "seed": [1, 1, 2, 2, 3, 3],
        "state": ["finished"] * 5 + ["failed"], "test/acc": [0.98, 0.97, 0.982, 0.972, 0.981, None],
    })  # fmt: skip
    summary = pd.DataFrame({
        "combination": ["a", "b"], "test/acc mean": [0.981, 0.971], "ci95 low": [0.9785, 0.958],
        "ci95 high": [0.9835, 0.984], "train images/s": [140.0, 540.0],
    })  # fmt: skip
    fig = plot_sweep(summary, per_run, "test/acc")
    left, right = fig.axes
    dots = [c for c in left.collections if isinstance(c, PathCollection)]  # the scatters
    assert sum(len(c.get_offsets()) for c in dots) == 5  # the failed seed has no dot
    assert left.get_ylim()[0] > 0.9 and left.get_ylim()[1] < 1.0
    assert [t.get_text() for t in left.get_xticklabels()] == ["a\n(n=3)", "b\n(n=2)"]
    _, _, (bars,) = left.containers[0]  # the errorbar: mean point, caps, interval segments
    intervals = [value for segment in bars.get_segments() for value in segment[:, 1]]
    assert intervals == pytest.approx([0.9785, 0.9835, 0.958, 0.984])
    assert right.get_xscale() == "log" and {t.get_text() for t in right.texts} == {"a", "b"}
    empty = plot_sweep(summary.assign(**{"train images/s": float("nan")}), per_run, "test/acc")
    assert "no training throughput" in empty.axes[1].texts[0].get_text()
    plt.close("all")


def test_confusion_matrix_and_per_class():
    matrix = torch.tensor([[3, 1, 0], [0, 2, 2], [0, 0, 4]])
    fig = plot_confusion_matrix(matrix, ["a", "b", "c"])
    shown = fig.axes[0].get_images()[0].get_array()
    assert np.allclose(np.asarray(shown).sum(axis=1), 1.0)
    assert isinstance(plot_confusion_matrix(matrix.numpy(), normalize=False), Figure)
    fig = plot_per_class({"cat": 0.5, "dog": float("nan"), "cow": 0.25}, metric="AP")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog", "cow"]
    assert legend_texts(fig.axes[0]) == ["mean 0.375"]
    assert isinstance(plot_per_class(torch.tensor([0.1, 0.2]), ["x", "y"], metric="IoU"), Figure)
    row = pd.Series({"final/test/iou/road": 0.5, "final/test/iou/sky": 0.9, "final/val/miou": 0.7})
    assert per_class_values(row, "final/test/iou/").to_dict() == {"road": 0.5, "sky": 0.9}
    assert per_class_metrics(row)[0] == "IoU"
    label, values = per_class_metrics({"test/ap/car": 0.3, "test/map": 0.3})
    assert label == "AP" and values.to_dict() == {"car": 0.3}


def test_load_task_finds_dck_layers_and_their_extents(task, ablation_runs):
    assert isinstance(task, ClassificationTask) and not task.training
    assert task.checkpoint_path.startswith(str(ablation_runs[0] / "checkpoints" / "best-"))
    layers = dck_layers(task)
    assert list(layers) == ["stages.2.0.dck.conv", "stages.3.0.dck.conv"]
    assert (
        all(isinstance(m, DynamicConv2d) for m in layers.values()) and len(deform_layers(task)) == 2
    )
    table = receptive_field_table(task)
    assert list(table["layer"]) == list(layers) and table["adaptive"].all()
    for (_, row), layer in zip(table.iterrows(), layers.values()):
        assert row["sigma_y"] == pytest.approx(float(layer.sigma[:, 0].detach().mean()))
        assert row["effective_kernel_size"] == layer.effective_kernel_size
    static = receptive_field_table(load_task(ablation_runs[2]))
    assert not static["adaptive"].any()
    fig = plot_receptive_fields(task)
    assert len(fig.axes) == 1 + len(layers)  # the σ bars, one mask per layer


def test_position_fields_and_their_plot(task, batch):
    datamodule, images, _ = batch
    fields = position_fields(task, images[:2])
    assert [f.kind for f in fields.values()] == ["dck", "deform", "dck", "deform"]
    dck = fields["stages.2.0.dck.conv"]
    assert dck.shift.shape == dck.scale.shape == (2, 2, *dck.shift.shape[-2:])
    assert dck.shift.abs().max() <= dck.max_shift and (dck.scale > 0).all()
    assert fields["stages.2.0.deform"].modulation.shape[0] == 2
    fig = plot_position_fields(task, images, datamodule, index=1, exaggerate=5)
    assert len([ax for ax in fig.axes if ax.get_images()]) == 4
    assert figure_to_array(fig).dtype == np.uint8
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert (
        plot_position_fields(plain, images[0]).axes[0].get_title()
        == "no adaptive DCK or deformable layers"
    )
    assert isinstance(plot_receptive_fields(plain), Figure)


def test_predictions_and_evaluation(task, batch):
    datamodule, images, labels = batch
    probabilities = predict(task, images)
    assert probabilities.shape == (3, datamodule.num_classes)
    fig = plot_predictions(images, probabilities, datamodule, targets=labels)
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert all("(true: " in t for t in titles)
    metrics = evaluate(task, datamodule)
    assert "test/acc" in metrics and task.confusion_matrix.shape == (6, 6)
    assert int(task.confusion_matrix.sum()) == 16  # num_test


def test_boxes_and_masks_are_drawn():
    images = torch.zeros(2, 3, 16, 16)
    pixels = to_display(images)
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 16, 16)
    detections = [
        {"boxes": torch.tensor([[2.0, 2.0, 10.0, 10.0], [1.0, 1.0, 4.0, 4.0]]), "labels": torch.tensor([1, 0]),
         "scores": torch.tensor([0.9, 0.1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)},
    ]  # fmt: skip
    drawn = draw_predictions(pixels, detections, ["cat", "dog"], score_threshold=0.5)
    assert drawn[0].shape == (3, 128, 128) and drawn[0].dtype == torch.uint8
    assert drawn[0].any() and not drawn[1].any()  # one box kept; nothing to draw on the second
    masks = [torch.zeros(16, 16, dtype=torch.uint8), torch.full((8, 8), 2, dtype=torch.uint8)]
    masks[0][4:8, 4:8] = 1
    drawn = draw_predictions(pixels, masks, ["background", "a", "b"], min_side=16)
    assert drawn[0][:, 5, 5].any() and not drawn[0][:, 0, 0].any() and drawn[1].any()
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    fig = plot_predictions(images, detections, class_names=["cat", "dog"], targets=targets)
    assert [ax.get_title() for ax in fig.axes] == [
        "prediction",
        "prediction",
        "ground truth",
        "ground truth",
    ]
    fig = plot_predictions(images, masks, class_names=["background", "a", "b"])
    assert len(fig.axes) == 2


@pytest.mark.parametrize("task_name", ["detection", "segmentation"])
def test_detection_and_segmentation_predictions_and_fields(task_name):
    from dck_lightning.data import SyntheticShapesDataModule

    backbone = {"class_path": "dcb_resnet18",
                "init_args": {"widths": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}}  # fmt: skip
    datamodule = SyntheticShapesDataModule(
        task_name, image_size=32, num_train=8, num_val=4, num_test=4, batch_size=4
    )
    if task_name == "detection":
        from dck_lightning.tasks.detection import DetectionTask

        task = DetectionTask(backbone=backbone, fpn_channels=16, head_convs=1,
                             num_classes=datamodule.num_classes, score_thresh=0.0)  # fmt: skip
    else:
        from dck_lightning.tasks.segmentation import SegmentationTask

        task = SegmentationTask(backbone=backbone, num_classes=datamodule.num_classes)
    images, targets = sample_batch(datamodule, "val", 2)
    predictions = predict(task, images)
    assert len(predictions) == 2
    fig = plot_predictions(images, predictions, datamodule, targets=targets, score_threshold=0.0)
    assert [ax.get_title() for ax in fig.axes] == ["prediction"] * 2 + ["ground truth"] * 2
    truth = fig.axes[2].get_images()[0].get_array()
    plain = to_display(images[:1])[0].permute(1, 2, 0).numpy()
    assert (
        truth.shape[0] >= 128
        and (truth[:: truth.shape[0] // 32, :: truth.shape[1] // 32] != plain).any()
    )
    fields = position_fields(task, images[:1])
    assert fields and {f.kind for f in fields.values()} <= {"dck", "deform"}
    assert isinstance(plot_position_fields(task, images, datamodule), Figure)

"""``dck export``: a trained tiny model of each task exported as ONNX (run in onnxruntime),
TorchScript and torch.export, each matching PyTorch within 1e-4 at another batch size than
the one it was traced with; clear errors; nothing overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dck_lightning.cli import main as dck
from dck_lightning.export import FORMATS, load_checkpoint_task
from dck_lightning.export import main as export

REPO = Path(__file__).resolve().parents[2]
TINY_BACKBONE = '{"widths": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}'


def fit_tiny(root: Path, config: str | None, *extra: str) -> Path:
    """``dck fit`` two steps on tiny synthetic shapes; the last checkpoint."""
    args = ["fit"] + (["-c", str(REPO / "configs" / config)] if config else [])
    args += [
        "--run.root",
        str(root),
        "--run.wandb",
        "disabled",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks",
        "[]",
        "--model.init_args.backbone.init_args",
        TINY_BACKBONE,
        "--data.init_args.num_train",
        "16",
        "--data.init_args.num_val",
        "8",
        "--data.init_args.num_test",
        "8",
        "--data.init_args.batch_size",
        "8",
        *extra,
    ]
    dck(args)
    (checkpoint,) = root.glob("**/last.ckpt")
    return checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {
        "classification": fit_tiny(root / "cls", None, "--data.init_args.image_size", "16"),
        "segmentation": fit_tiny(
            root / "seg",
            "shapes_segmentation.yaml",
            "--data.init_args.image_size",
            "32",
            "--model.init_args.head_kwargs",
            '{"fpn_channels": 8, "channels": 8}',
            "--model.init_args.lr_scheduler",
            "null",
        ),
        "detection": fit_tiny(
            root / "det",
            "shapes_detection.yaml",
            "--data.init_args.image_size",
            "64",
            "--model.init_args.fpn_channels",
            "8",
            "--model.init_args.lr_scheduler",
            "null",
        ),
    }


def run_exported(path: Path, format: str, images: torch.Tensor) -> torch.Tensor:
    if format == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out, *_) = session.run(None, {"images": images.numpy()})
        return torch.from_numpy(out)
    if format == "torchscript":
        return torch.jit.load(str(path))(images)
    return torch.export.load(str(path)).module()(images)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("task_name", ["classification", "segmentation"])
def test_exported_model_matches_pytorch_at_any_batch_size(checkpoints, task_name, format):
    checkpoint = checkpoints[task_name]
    path = export(["--ckpt_path", str(checkpoint), "--format", format, "--batch_size", "2"])
    assert path.parent == checkpoint.parent and path.is_file()
    info = json.loads(path.with_name(path.name + ".json").read_text())
    assert info["format"] == format and info["input"]["shape"][0] == "batch"
    if format == "onnx":  # a valid graph of standard operators: the sampling as gathers
        onnx = pytest.importorskip("onnx")
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
        assert "Gather" in {node.op_type for node in model.graph.node}
    task = load_checkpoint_task(str(checkpoint))
    channels, height, width = info["input"]["shape"][1:]
    for batch in (1, 3):  # traced with 2
        images = torch.randn(batch, channels, height, width)
        with torch.no_grad():
            expected = task.model(images)
        expected = expected["out"] if isinstance(expected, dict) else expected
        out = run_exported(path, format, images)
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_existing_output_is_not_overwritten(checkpoints, tmp_path, capsys):
    target = tmp_path / "model.pt2"
    target.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        export(
            [
                "--ckpt_path",
                str(checkpoints["classification"]),
                "--format",
                "exported_program",
                "--output",
                str(target),
            ]
        )
    assert exit_info.value.code == 2
    assert "exists" in capsys.readouterr().err and target.read_text() == "mine"


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export(["--ckpt_path", str(tmp_path / "nope.ckpt"), "--format", "onnx"])
    assert exit_info.value.code == 2
    assert "nope.ckpt: no such file" in capsys.readouterr().err


def test_dck_export_is_a_subcommand_of_dck(checkpoints, tmp_path, monkeypatch):
    from dck_lightning.cli import entry_point

    target = tmp_path / "via_dck.pt"
    monkeypatch.setattr(
        "sys.argv",
        [
            "dck",
            "export",
            "--ckpt_path",
            str(checkpoints["classification"]),
            "--format",
            "torchscript",
            "--output",
            str(target),
        ],
    )
    entry_point()
    assert target.is_file()


def test_detection_exports_its_backbone_features_only(checkpoints, tmp_path, capsys):
    """torchvision's detection post-processing (thresholds, NMS, per-image box lists) does not
    export with a dynamic batch: a clear error, and the backbone's feature maps on request."""
    checkpoint = str(checkpoints["detection"])
    with pytest.raises(SystemExit):
        export(["--ckpt_path", checkpoint, "--format", "onnx"])
    assert "--detection_features" in capsys.readouterr().err
    path = export(
        [
            "--ckpt_path",
            checkpoint,
            "--format",
            "exported_program",
            "--detection_features",
            "--output",
            str(tmp_path / "features.pt2"),
        ]
    )
    body = load_checkpoint_task(checkpoint).model.backbone.body
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = body(images)
    out = torch.export.load(str(path)).module()(images)
    assert list(out) == ["c2", "c3", "c4", "c5"]
    for name in out:
        torch.testing.assert_close(out[name], expected[name], atol=1e-4, rtol=1e-4)


# -- what the JSON beside an export says -----------------------------------------------------------


def fit_tiny_on(root: Path, datamodule: str, data_dir: Path) -> Path:
    """``dck fit`` two steps of a tiny classifier on a CIFAR-10- or MNIST-format folder; the
    run folder."""
    dck(
        [
            "fit",
            "--data", f"dck_lightning.data.{datamodule}",
            "--data.init_args.data_dir", str(data_dir),
            "--data.init_args.batch_size", "4",
            "--run.root", str(root),
            "--run.wandb", "disabled",
            "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", "[]",
            "--model.init_args.backbone.init_args", TINY_BACKBONE,
        ]
    )  # fmt: skip
    return root / "default" / "version_0"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_an_onnx_export_is_usable_with_its_json_alone(tmp_path, dataset):
    """CIFAR-10 and MNIST checkpoints export without ``--image_size`` (32×32, 28×28 from the
    DataModule); an 8-bit image normalised with the JSON's numbers only, run in onnxruntime,
    gives the task's output on the DataModule's own batch."""
    ort = pytest.importorskip("onnxruntime")
    from data_fixtures import write_cifar_batches, write_mnist

    from dck_lightning.data import CIFAR10_CLASSES
    from dck_lightning.export import build_datamodule

    data_dir = tmp_path / "data"
    if dataset == "cifar10":
        write_cifar_batches(data_dir)
        run_dir = fit_tiny_on(tmp_path / "runs", "CIFAR10DataModule", data_dir)
        shape, names = [3, 32, 32], list(CIFAR10_CLASSES)
    else:
        write_mnist(data_dir)
        run_dir = fit_tiny_on(tmp_path / "runs", "MNISTDataModule", data_dir)
        shape, names = [1, 28, 28], [str(digit) for digit in range(10)]
    path = export(["--ckpt_path", str(run_dir), "--format", "onnx"])
    info = json.loads(path.with_name(path.name + ".json").read_text())
    spec = info["input"]
    assert spec["shape"] == ["batch", *shape] and info["class_names"] == names
    assert spec["channels"] == ("RGB" if shape[0] == 3 else "L")
    assert spec["value_range"] == [0, 255] and len(spec["mean"]) == len(spec["std"]) == shape[0]

    task = load_checkpoint_task(str(run_dir))
    datamodule = build_datamodule(task.datamodule_spec)
    datamodule.setup("test")
    pixels, labels = next(iter(datamodule.test_dataloader()))  # uint8, as the loader gives them
    assert pixels.dtype == torch.uint8
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    inputs = ((pixels.numpy() / spec["scale"] - mean) / std).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {spec["name"]: inputs})
    with torch.no_grad():
        images, _ = datamodule.on_after_batch_transfer((pixels, labels), 0)
        expected = task.model(images)
    torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=1e-4)


def test_the_json_gives_the_datamodules_numbers(tmp_path):
    from dck_lightning.data import MNISTDataModule
    from dck_lightning.export import input_description

    described = input_description(MNISTDataModule(data_dir=str(tmp_path)), 1, 28, 28)
    assert described["mean"] == [0.1307] and described["std"] == [0.3081]
    assert described["channels"] == "L" and described["shape"] == ["batch", 1, 28, 28]
    plain = input_description(MNISTDataModule(data_dir=str(tmp_path), normalize=False), 1, 28, 28)
    assert plain["mean"] == [0.0] and plain["std"] == [1.0]  # what the model saw: pixel / 255


def test_a_datamodule_class_that_is_not_one_is_refused(tmp_path):
    from dck_lightning.export import ExportError, build_datamodule

    marker = tmp_path / "ran"
    spec = {"class_path": "subprocess.run", "init_args": {"args": f"touch {marker}"}}
    with pytest.raises(ExportError, match="subprocess.run .* not a dck_lightning BaseDataModule"):
        build_datamodule(spec)
    assert not marker.exists()

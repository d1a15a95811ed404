"""``dck export``: a trained checkpoint as an ONNX, TorchScript or ``torch.export`` file.

::

    dck export --ckpt_path runs/default/version_0/checkpoints/last.ckpt --format onnx
    dck export --ckpt_path CKPT --format torchscript --output model.pt
    dck export --ckpt_path CKPT --format exported_program --image_size 64

The network of the checkpoint's task is frozen for inference (:func:`dck_lightning.deploy.freeze`:
DCK masks and batch norms folded, fixed kernel sizes) and exported with a dynamic batch
size. It takes the images as the task's model does — ``float32 [batch, C, H, W]``, normalised
as the DataModule normalises them — at the training image size (from the checkpoint's
DataModule, or ``--image_size``), and returns:

* classification: ``logits [batch, num_classes]``;
* segmentation: ``logits [batch, num_classes, H, W]`` (the main head);
* detection: not exported whole. ``torch.export`` and the ONNX exporter stop at torchvision's
  post-processing (score thresholds, top-k, NMS: data-dependent sizes); a TorchScript trace
  runs, but fixes the batch size and, for RetinaNet, bakes in a box count (FCOS and Faster
  R-CNN traced outputs matched eager ones in our probe, at batch 1 only). ``--detection_features``
  exports the shared backbone instead: the ``c2…c5`` feature maps (every format, any batch),
  for a detection head run outside the exported graph.

ONNX models use the ``torch`` sampling backend's gathers (``Gather``/``Mul``/``ReduceSum``/
``MatMul``, opset 18) and run in onnxruntime. A JSON file beside the export (``<file>.json``)
says what the file needs without the repository: the input size, channel order (``RGB`` or
``L``), value range, the ``mean``/``std`` numbers and the formula that turns an 8-bit image
into the input, the outputs, the class names and the checkpoint it came from
(:func:`input_description`). The training image size, normalisation and class names come from
the checkpoint's DataModule (its class and arguments, recorded by ``dck fit``; CIFAR-10
32×32, MNIST 28×28, the others their ``image_size``). An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

from .deploy import freeze
from .run_folder import RunFolder

FORMATS = ("onnx", "torchscript", "exported_program")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported_program": ".pt2"}
INPUT_NAME = "images"


class ExportError(ValueError):
    """Bad ``dck export`` input: the message says what to change."""


class ExportedNetwork(nn.Module):
    """The task's network with one tensor out: ``logits`` (the ``"out"`` entry of a
    segmentation model's dict) or, for detection, the backbone's feature maps."""

    def __init__(self, network: nn.Module, output: Optional[str] = None) -> None:
        super().__init__()
        self.network = network
        self.output = output

    def forward(self, images: Tensor):
        out = self.network(images)
        return out[self.output] if self.output is not None else out


def _task_network(task, detection_features: bool) -> tuple[nn.Module, list[str]]:
    """The network to export and its output names."""
    from .tasks import ClassificationTask, DetectionTask, SegmentationTask

    if isinstance(task, ClassificationTask):
        return ExportedNetwork(task.model), ["logits"]
    if isinstance(task, SegmentationTask):
        return ExportedNetwork(task.model, "out"), ["logits"]
    if isinstance(task, DetectionTask):
        if not detection_features:
            raise ExportError(
                "detection models are not exported whole: torchvision's post-processing (score "
                "thresholds, NMS, per-image box lists) has data-dependent shapes that "
                "torch.export and ONNX do not capture; add --detection_features to export the "
                "backbone's feature maps (c2…c5)"
            )
        body = task.model.backbone.body
        return ExportedNetwork(body), list(body.out_channels)
    raise ExportError(
        f"dck export knows classification, segmentation and detection tasks, got {type(task).__name__}"
    )


def _image_size(
    image_size: Optional[Sequence[int]], datamodule: Optional[Any] = None
) -> tuple[int, int]:
    """``--image_size`` (H, or H W), else the DataModule's ``image_size``."""
    if image_size:
        size = tuple(image_size) * (2 if len(image_size) == 1 else 1)
    else:
        size = getattr(datamodule, "image_size", None)
        if size is None:
            where = type(datamodule).__name__ if datamodule is not None else "the checkpoint"
            raise ExportError(
                f"{where} does not fix the image size (its images keep their own); "
                "give it: --image_size H [W]"
            )
        size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) < 1:
        raise ExportError(f"--image_size takes one or two positive sizes, got {image_size}")
    return int(size[0]), int(size[1])


def _datamodule_spec(checkpoint: dict[str, Any], path: Path) -> Optional[dict[str, Any]]:
    """``{"class_path", "init_args"}`` of the DataModule a checkpoint was trained with: its
    ``datamodule_hyper_parameters`` (``dck fit`` records the class there), else ``data`` in
    its run folder's config."""
    hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    if class_path:
        init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
        return {"class_path": class_path, "init_args": init_args}
    folder = RunFolder.of_checkpoint(path)
    data = folder.config.get("data") if folder is not None else None
    if isinstance(data, dict) and isinstance(data.get("class_path"), str):
        return {"class_path": data["class_path"], "init_args": dict(data.get("init_args") or {})}
    return None


def build_datamodule(spec: dict[str, Any]) -> Any:
    """The DataModule of ``spec`` (built, not set up: no data is read). The class is checked
    to be a :class:`~dck_lightning.data.BaseDataModule` before it is called."""
    import importlib

    from .data import BaseDataModule

    class_path = spec["class_path"]
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        message = f"the checkpoint's DataModule {class_path} cannot be imported: {error}"
        raise ExportError(message) from error
    if not (isinstance(cls, type) and issubclass(cls, BaseDataModule)):
        raise ExportError(
            f"the checkpoint names {class_path} as its DataModule, which is not a "
            "dck_lightning BaseDataModule: refused (it would run arbitrary code)"
        )
    try:
        return cls(**spec["init_args"])
    except (TypeError, ValueError) as error:
        message = f"the checkpoint's DataModule {class_path} cannot be rebuilt: {error}"
        raise ExportError(message) from error


def load_checkpoint_task(ckpt_path: str):
    """The task of a checkpoint (eval mode, CPU), with ``task.datamodule_spec``: the class and
    arguments of the DataModule it was trained with (``None`` when unknown)."""
    from .analysis import load_task

    path = Path(ckpt_path)
    if not path.exists():
        raise ExportError(f"--ckpt_path {ckpt_path}: no such file or folder")
    task = load_task(path)
    checkpoint = torch.load(task.checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    task.datamodule_spec = _datamodule_spec(checkpoint, Path(task.checkpoint_path))
    return task


def _class_names(task: Any, datamodule: Optional[Any]) -> Optional[list[str]]:
    """The task's ``class_names``, else the DataModule's (``None`` where neither knows them,
    e.g. an image-folder DataModule whose folders are not on this machine)."""
    names = task.hparams.get("class_names")
    if not names and datamodule is not None:
        try:
            names = datamodule.class_names
        except (AttributeError, OSError):  # DataNotFoundError is an OSError
            names = None
    return [str(name) for name in names] if names else None


def input_description(
    datamodule: Optional[Any], in_channels: int, height: int, width: int
) -> dict[str, Any]:
    """The exported input, in numbers: an 8-bit ``RGB`` (3 channels) or greyscale ``L`` (1
    channel) image resized to ``height × width``, each value ``(pixel / 255 - mean[c]) /
    std[c]``, ``float32 NCHW``.

    ``mean``/``std`` are the DataModule's (``0``/``1`` when it does not normalise); without a
    DataModule they are ``None`` and ``normalisation`` says that they are unknown."""
    mean = list(getattr(datamodule, "mean", None) or []) or None
    std = list(getattr(datamodule, "std", None) or []) or None
    return {
        "name": INPUT_NAME,
        "shape": ["batch", in_channels, height, width],
        "dtype": "float32",
        "layout": "NCHW",
        "channels": "RGB" if in_channels == 3 else "L" if in_channels == 1 else in_channels,
        "height": height,
        "width": width,
        "resize": "bilinear, to height x width (as the DataModule's test images)",
        "value_range": [0, 255],
        "scale": 255.0,
        "mean": mean,
        "std": std,
        "normalisation": "x[c] = (pixel[c] / scale - mean[c]) / std[c], pixel in value_range"
        if mean is not None
        else "unknown: the checkpoint does not record its DataModule",
    }


def export_network(
    network: nn.Module,
    example: Tensor,
    format: str,
    output: Path,
    output_names: list[str],
    opset: int = 18,
) -> None:
    """Write ``network`` (eval mode) traced at ``example`` to ``output``, batch size dynamic."""
    batch = torch.export.Dim("batch", min=1)
    if format == "onnx":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                network,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_shapes={"images": {0: batch}},
                verbose=False,
            )
        program.save(str(output))
    elif format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(network, example, check_trace=False)
        traced.save(str(output))
    else:
        program = torch.export.export(
            network, (example,), dynamic_shapes={"images": {0: batch}}, strict=False
        )
        torch.export.save(program, str(output))


def export_checkpoint(
    ckpt_path: str,
    format: str,
    output: Optional[str] = None,
    image_size: Optional[Sequence[int]] = None,
    batch_size: int = 2,
    fold: bool = True,
    detection_features: bool = False,
    opset: int = 18,
) -> Path:
    """Export the network of ``ckpt_path`` (see the module docstring); the written file."""
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {format!r}")
    task = load_checkpoint_task(ckpt_path)
    target = Path(output) if output else Path(task.checkpoint_path).with_suffix(SUFFIXES[format])
    sidecar = target.with_name(target.name + ".json")
    for path in (target, sidecar):
        if path.exists():
            raise ExportError(f"{path} exists; choose another --output (nothing is overwritten)")
    network, output_names = _task_network(task, detection_features)
    network = freeze(network, fold_norms=fold) if fold else network.eval()
    spec = getattr(task, "datamodule_spec", None)
    datamodule = build_datamodule(spec) if spec is not None else None
    height, width = _image_size(image_size, datamodule)
    in_channels = int(task.hparams.in_channels)
    example = torch.randn(batch_size, in_channels, height, width)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        export_network(network, example, format, target, output_names, opset)
    sidecar.write_text(
        json.dumps(
            {
                "format": format,
                "checkpoint": str(Path(task.checkpoint_path).resolve()),
                "task": f"{type(task).__module__}.{type(task).__qualname__}",
                "datamodule": spec["class_path"] if spec is not None else None,
                "input": input_description(datamodule, in_channels, height, width),
                "outputs": output_names,
                "class_names": _class_names(task, datamodule),
                "frozen": fold,
            },
            indent=2,
        )
        + "\n"
    )
    return target


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="dck export",
        allow_abbrev=False,  # --image is not --image_size
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint or a run folder")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--output", help="file to write (default: beside the checkpoint, by format)"
    )
    parser.add_argument(
        "--image_size",
        type=int,
        nargs="+",
        metavar="SIZE",
        help="H [W] of the input (default: the image size of the checkpoint's DataModule)",
    )
    parser.add_argument("--batch_size", type=int, default=2, help="batch of the example input")
    parser.add_argument(
        "--no_fold", action="store_true", help="export the network as trained (no freeze)"
    )
    parser.add_argument(
        "--detection_features",
        action="store_true",
        help="detection checkpoints: export the backbone's feature maps",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18: the exporter's own)")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """``dck export …``; prints the written file. Bad input: ``dck export: error: …``, exit 2."""
    args = parse_args(argv)
    try:
        path = export_checkpoint(
            args.ckpt_path,
            args.format,
            args.output,
            args.image_size,
            args.batch_size,
            fold=not args.no_fold,
            detection_features=args.detection_features,
            opset=args.opset,
        )
    except ExportError as error:
        print(f"dck export: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(path)
    return path

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
``MatMul``, opset 18) and run in onnxruntime. A JSON file beside the export records the input
and outputs, the class names and the checkpoint it came from. An existing file is never
overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .deploy import freeze

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


def _image_size(task, image_size: Optional[Sequence[int]]) -> tuple[int, int]:
    if image_size:
        size = tuple(image_size) * (2 if len(image_size) == 1 else 1)
    else:
        hparams = getattr(task, "_dck_datamodule_hparams", None) or {}
        size = hparams.get("image_size")
        if size is None:
            raise ExportError(
                "the checkpoint does not record the image size; give it: --image_size H [W]"
            )
        size = (size, size) if isinstance(size, int) else tuple(size)
    if len(size) != 2 or min(size) < 1:
        raise ExportError(f"--image_size takes one or two positive sizes, got {image_size}")
    return int(size[0]), int(size[1])


def load_checkpoint_task(ckpt_path: str):
    """The task of a checkpoint (eval mode, CPU), with its DataModule's hyperparameters."""
    from .analysis import load_task

    path = Path(ckpt_path)
    if not path.exists():
        raise ExportError(f"--ckpt_path {ckpt_path}: no such file or folder")
    task = load_task(path)
    checkpoint = torch.load(task.checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    task._dck_datamodule_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    return task


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
    height, width = _image_size(task, image_size)
    example = torch.randn(batch_size, task.hparams.in_channels, height, width)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        export_network(network, example, format, target, output_names, opset)
    sidecar.write_text(
        json.dumps(
            {
                "format": format,
                "checkpoint": str(Path(task.checkpoint_path).resolve()),
                "task": f"{type(task).__module__}.{type(task).__qualname__}",
                "input": {
                    "name": INPUT_NAME,
                    "shape": ["batch", task.hparams.in_channels, height, width],
                    "dtype": "float32",
                    "normalised": "as the DataModule normalises images (its mean/std)",
                },
                "outputs": output_names,
                "class_names": task.hparams.get("class_names"),
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
        help="H [W] of the input (default: the checkpoint's DataModule image size)",
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

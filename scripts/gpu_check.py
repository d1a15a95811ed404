#!/usr/bin/env python
"""A short, prepared check for a machine with a GPU (a few minutes at most).

What it checks, each printed as a PASS/FAIL line with its time:

1. ``backends`` — the two sampling backends of the DCK/deformable layers
   (``torch``: bilinear gathers + one matmul; ``torchvision``: ``torchvision.ops.deform_conv2d``)
   give the same outputs and gradients on CUDA in float32, and the ``torch`` backend in
   bfloat16 stays close to float32.
2. ``train-bf16`` — ``dck fit`` of a DCB backbone (``dcb_resnet18``, small widths) on synthetic
   shapes, one GPU, ``bf16-mixed``, a few steps: the loss stays finite, a checkpoint is written,
   and a second ``fit`` into the same run folder resumes from it.
3. ``tasks-bf16`` — ``dck fit`` (one epoch of 128 images) and ``dck test`` of
   ``configs/shapes_detection.yaml`` and ``configs/shapes_segmentation.yaml`` on one GPU in
   ``bf16-mixed``: finite loss, a finite test mAP / mIoU from the checkpoint.
4. ``ddp`` (only with ``--ddp`` and at least 2 GPUs) — the same with ``strategy=ddp``,
   2 GPUs and SyncBatchNorm, in a subprocess (Lightning starts the second process).

Usage::

    python scripts/gpu_check.py            # 1, 2 and 3
    python scripts/gpu_check.py --ddp      # 1 to 4

Exit status: 0 all passed, 1 a check failed, 3 no CUDA device (nothing was run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

TINY_DCB = '{"widths": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}'


def check_backends() -> str:
    import torch

    from dck_lightning.layers.sampling import deform_conv2d

    torch.manual_seed(0)
    device = torch.device("cuda")
    x = torch.randn(4, 16, 24, 24, device=device, requires_grad=True)
    weight = torch.randn(32, 16, 3, 3, device=device, requires_grad=True)
    offset = (2.0 * torch.randn(4, 2 * 9, 24, 24, device=device)).requires_grad_()
    mask = torch.rand(4, 9, 24, 24, device=device, requires_grad=True)
    results = {}
    for backend in ("torch", "torchvision"):
        out = deform_conv2d(x, offset, weight, padding=1, mask=mask, backend=backend)
        grads = torch.autograd.grad(out.square().sum(), (x, weight, offset, mask))
        results[backend] = (out.detach(), [g.detach() for g in grads])
    (a, ga), (b, gb) = results["torch"], results["torchvision"]
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    assert diff <= 1e-4 * max(scale, 1.0), f"forward differs by {diff:.3g} (scale {scale:.3g})"
    for name, g1, g2 in zip(("input", "weight", "offset", "mask"), ga, gb):
        rel = (g1 - g2).abs().max().item() / max(g2.abs().max().item(), 1e-6)
        assert rel <= 1e-3, f"grad of {name} differs by {rel:.3g} (relative)"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = deform_conv2d(x, offset, weight, padding=1, mask=mask, backend="torch")
    rel = (low.float() - b).abs().max().item() / max(scale, 1e-6)
    assert rel <= 5e-2, f"bf16 torch backend differs by {rel:.3g} (relative) from float32"
    return f"forward max diff {diff:.2e}, bf16 relative diff {rel:.2e}"


def _fit_args(root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--run.root", str(root),
        "--run.version", "gpu",
        "--run.wandb", "disabled",
        "--trainer.accelerator", "gpu",
        "--trainer.devices", "1",
        "--trainer.precision", "bf16-mixed",
        "--trainer.limit_train_batches", "8",
        "--trainer.limit_val_batches", "2",
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.model", "dcb_resnet18",
        "--model.init_args.backbone.init_args", TINY_DCB,
        "--data.init_args.image_size", "64",
        "--data.init_args.num_train", "256",
        "--data.init_args.num_val", "64",
        "--data.init_args.batch_size", "32",
        *extra,
    ]  # fmt: skip


def check_train_bf16() -> str:
    import torch

    from dck_lightning.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cli = main(_fit_args(root, "--trainer.max_epochs", "1"))
        loss = cli.trainer.callback_metrics.get("train/loss_epoch")
        assert loss is not None and torch.isfinite(loss), f"training loss {loss}"
        last = root / "default" / "gpu" / "checkpoints" / "last.ckpt"
        assert last.is_file(), f"no checkpoint at {last}"
        cli = main(_fit_args(root, "--trainer.max_epochs", "2"))  # same folder: resumes
        assert cli.trainer.global_step == 16, (
            f"resumed run ended at step {cli.trainer.global_step}, expected 16"
        )
        return f"loss {float(loss):.3f} after 8 bf16 steps; resumed to step 16"


def check_tasks_bf16() -> str:
    """``dck fit`` + ``dck test`` of the detection and segmentation configs, one GPU, bf16."""
    import torch

    from dck_lightning.cli import main

    results = []
    for config, metric in (
        ("shapes_detection", "test/map_50"),
        ("shapes_segmentation", "test/miou"),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            common = [
                "-c", str(REPO / "configs" / f"{config}.yaml"),
                "--run.root", tmp,
                "--run.version", "gpu",
                "--run.wandb", "disabled",
                "--trainer.accelerator", "gpu",
                "--trainer.devices", "1",
                "--trainer.precision", "bf16-mixed",
                "--trainer.enable_progress_bar", "false",
                "--data.init_args.num_train", "128",
                "--data.init_args.num_val", "32",
                "--data.init_args.num_test", "32",
            ]  # fmt: skip
            cli = main(["fit", *common, "--trainer.max_epochs", "1"])
            loss = cli.trainer.callback_metrics.get("train/loss")  # the last step's
            assert loss is not None and torch.isfinite(loss), f"{config}: training loss {loss}"
            last = Path(tmp) / config / "gpu" / "checkpoints" / "last.ckpt"
            cli = main(["test", *common, "--ckpt_path", str(last)])
            value = cli.trainer.callback_metrics.get(metric)
            assert value is not None and torch.isfinite(value), f"{config}: {metric} {value}"
            results.append(f"{config}: loss {float(loss):.3f}, {metric} {float(value):.3f}")
    return "; ".join(results)


def check_ddp() -> str:
    import torch

    if torch.cuda.device_count() < 2:
        return "skipped: fewer than 2 GPUs"
    with tempfile.TemporaryDirectory() as tmp:
        args = _fit_args(
            Path(tmp),
            "--trainer.max_epochs",
            "1",
            "--trainer.strategy",
            "ddp",
            "--trainer.sync_batchnorm",
            "true",
        )
        args[args.index("--trainer.devices") + 1] = "2"
        done = subprocess.run(
            [sys.executable, "-m", "dck_lightning.cli", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
        runs = list((Path(tmp) / "default").iterdir())
        assert [p.name for p in runs] == ["gpu"], f"run folders {runs}"
        return "2 GPUs, SyncBatchNorm, one run folder"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ddp", action="store_true", help="also run the 2-GPU DDP check")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "scripts/gpu_check.py: no CUDA device (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}): this check needs a GPU; nothing was run.",
            file=sys.stderr,
        )
        return 3
    print(
        f"GPU: {torch.cuda.get_device_name(0)} ×{torch.cuda.device_count()}, torch {torch.__version__}",
        flush=True,
    )
    checks: list[tuple[str, Callable[[], str]]] = [
        ("backends", check_backends),
        ("train-bf16", check_train_bf16),
        ("tasks-bf16", check_tasks_bf16),
    ]
    if args.ddp:
        checks.append(("ddp", check_ddp))
    failed = 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            detail = check()
            print(f"PASS {name} ({time.perf_counter() - start:.1f} s): {detail}", flush=True)
        except Exception as error:  # report every check
            failed += 1
            traceback.print_exc()
            print(f"FAIL {name} ({time.perf_counter() - start:.1f} s): {error}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

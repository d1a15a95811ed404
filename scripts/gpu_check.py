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
4. ``recipes`` — ``scripts/check_recipes.py`` on tiny real-format data: the CIFAR-10
   ResNet-18 recipes (plain and DCB) with ``configs/trainer/gpu.yaml`` (bf16-mixed) at their
   own optimiser, learning rate and head: no non-finite loss, no spike, a falling loss.
5. ``ddp`` (only with ``--ddp`` and at least 2 GPUs) — the same with ``strategy=ddp``,
   2 GPUs and SyncBatchNorm, in a subprocess (Lightning starts the second process).

A check that fails — an assertion, an exception, or a ``dck`` command that exits (a renamed
flag is ``SystemExit: 2``) — is a FAIL line, and the remaining checks still run.

Usage::

    python scripts/gpu_check.py                       # 1 to 4 on the GPU
    python scripts/gpu_check.py --ddp                 # 1 to 5
    python scripts/gpu_check.py --device cpu --tiny   # the same code paths on CPU, tiny (CI)

``--device cpu`` runs every check on the CPU (bf16 autocast included) so that CI exercises the
command lines a GPU run uses; ``--tiny`` shrinks images, batches and steps.

Exit status: 0 all passed, 1 a check failed, 3 no CUDA device for ``--device cuda`` (nothing
was run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

TINY_DCB = '{"widths": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}'


@dataclass(frozen=True)
class Setting:
    """Where and how large the checks run: ``device`` is ``"cuda"`` or ``"cpu"``."""

    device: str = "cuda"
    tiny: bool = False

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def trainer_args(self) -> list[str]:
        """One device of the accelerator, bf16-mixed, no progress bar."""
        return [
            "--trainer.accelerator", self.accelerator,
            "--trainer.devices", "1",
            "--trainer.precision", "bf16-mixed",
            "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip


def check_backends(setting: Setting) -> str:
    import torch

    from dck_lightning.layers.sampling import deform_conv2d, triton_ready

    torch.manual_seed(0)
    device = torch.device(setting.device)
    n, c, size = (2, 4, 8) if setting.tiny else (4, 16, 24)
    x = torch.randn(n, c, size, size, device=device, requires_grad=True)
    weight = torch.randn(2 * c, c, 3, 3, device=device, requires_grad=True)
    offset = (2.0 * torch.randn(n, 2 * 9, size, size, device=device)).requires_grad_()
    mask = torch.rand(n, 9, size, size, device=device, requires_grad=True)
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
    with torch.autocast(setting.device, dtype=torch.bfloat16):
        low = deform_conv2d(x, offset, weight, padding=1, mask=mask, backend="torch")
    rel = (low.float() - b).abs().max().item() / max(scale, 1e-6)
    assert rel <= 5e-2, f"bf16 torch backend differs by {rel:.3g} (relative) from float32"
    kernels = "Triton kernels" if triton_ready(device, torch.float32) else "torch reference"
    return f"forward max diff {diff:.2e}, bf16 relative diff {rel:.2e}; torch backend: {kernels}"


def _fit_args(setting: Setting, root: Path, *extra: str) -> list[str]:
    size, train, val, batch, steps = (32, 32, 16, 8, 2) if setting.tiny else (64, 256, 64, 32, 8)
    return [
        "fit",
        "--run.root", str(root),
        "--run.version", "gpu",
        "--run.wandb", "disabled",
        *setting.trainer_args(),
        "--trainer.limit_train_batches", str(steps),
        "--trainer.limit_val_batches", "2",
        "--model.init_args.backbone", "dcb_resnet18",
        "--model.init_args.backbone.init_args", TINY_DCB,
        # no schedule: the resume below trains one more epoch, which a schedule whose length
        # follows max_epochs refuses (by design: the resumed run would change its lr curve)
        "--model.init_args.lr_scheduler", "null",
        "--data.init_args.image_size", str(size),
        "--data.init_args.num_train", str(train),
        "--data.init_args.num_val", str(val),
        "--data.init_args.batch_size", str(batch),
        *extra,
    ]  # fmt: skip


def check_train_bf16(setting: Setting) -> str:
    import torch

    from dck_lightning.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cli = main(_fit_args(setting, root, "--trainer.max_epochs", "1"))
        steps = cli.trainer.global_step
        loss = cli.trainer.callback_metrics.get("train/loss_epoch")
        assert loss is not None and torch.isfinite(loss), f"training loss {loss}"
        last = root / "default" / "gpu" / "checkpoints" / "last.ckpt"
        assert last.is_file(), f"no checkpoint at {last}"
        cli = main(_fit_args(setting, root, "--trainer.max_epochs", "2"))  # same folder: resumes
        assert cli.trainer.global_step == 2 * steps, (
            f"resumed run ended at step {cli.trainer.global_step}, expected {2 * steps}"
        )
        return f"loss {float(loss):.3f} after {steps} bf16 steps; resumed to step {2 * steps}"


def check_tasks_bf16(setting: Setting) -> str:
    """``dck fit`` + ``dck test`` of the detection and segmentation configs, one device, bf16."""
    import torch

    from dck_lightning.cli import main

    sizes = ["--data.init_args.image_size", "64", "--data.init_args.batch_size", "4"]
    counts = ("8", "4", "4") if setting.tiny else ("128", "32", "32")
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
                *setting.trainer_args(),
                "--data.init_args.num_train", counts[0],
                "--data.init_args.num_val", counts[1],
                "--data.init_args.num_test", counts[2],
                *(sizes if setting.tiny else []),
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


def check_recipes(setting: Setting) -> str:
    """The CIFAR-10 ResNet-18 recipes' first steps in bf16 (``scripts/check_recipes.py``)."""
    sys.path.insert(0, str(REPO / "scripts"))
    import check_recipes as recipes

    configs = [
        REPO / "configs" / f"{name}.yaml" for name in ("cifar10_resnet18", "cifar10_dcb_resnet18")
    ]
    steps, batch = ("12", "16") if setting.tiny else ("60", "128")
    args = [*map(str, configs), "--tiny", "--steps", steps, "--batch-size", batch,
            "--device", setting.device, "--trainer-config", str(REPO / "configs/trainer/gpu.yaml")]  # fmt: skip
    status = recipes.main(args)
    assert status == 0, "a recipe's first steps diverged (see its line above)"
    return f"{len(configs)} recipes, {steps} steps at batch {batch}, bf16-mixed"


def check_ddp(setting: Setting) -> str:
    import torch

    if setting.device != "cuda" or torch.cuda.device_count() < 2:
        return "skipped: fewer than 2 GPUs"
    with tempfile.TemporaryDirectory() as tmp:
        args = _fit_args(
            setting,
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
            [sys.executable, "-m", "dck_lightning", *args],
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
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="where the checks run (cpu: CI's run of the GPU code paths)")  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="tiny images, batches and steps")
    args = parser.parse_args(argv)
    setting = Setting(args.device, args.tiny)

    import torch

    if setting.device == "cpu":
        print(f"CPU ({torch.get_num_threads()} threads), torch {torch.__version__}", flush=True)
    elif not torch.cuda.is_available():
        print(
            "scripts/gpu_check.py: no CUDA device (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}): this check needs a GPU; nothing was run.",
            file=sys.stderr,
        )
        return 3
    else:
        print(
            f"GPU: {torch.cuda.get_device_name(0)} ×{torch.cuda.device_count()}, torch {torch.__version__}",
            flush=True,
        )
    checks: list[tuple[str, Callable[[Setting], str]]] = [
        ("backends", check_backends),
        ("train-bf16", check_train_bf16),
        ("tasks-bf16", check_tasks_bf16),
        ("recipes", check_recipes),
    ]
    if args.ddp:
        checks.append(("ddp", check_ddp))
    failed = 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            detail = check(setting)
            print(f"PASS {name} ({time.perf_counter() - start:.1f} s): {detail}", flush=True)
        except KeyboardInterrupt:
            raise
        except BaseException as error:  # report every check; a dck command exits with SystemExit
            failed += 1
            traceback.print_exc()
            reason = f"exit status {error.code}" if isinstance(error, SystemExit) else error
            print(f"FAIL {name} ({time.perf_counter() - start:.1f} s): {reason}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

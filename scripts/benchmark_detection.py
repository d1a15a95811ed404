"""Training throughput of FCOS over the DCB backbone vs the plain ResNet backbone.

Both detectors are built by :class:`~dck_lightning.tasks.detection.DetectionTask` with the same
stage widths, depths, FPN and head, on the same synthetic-shapes batches (128×128 by default),
and timed in the same process: one training step is forward + FCOS loss + backward + AdamW
step. The two models alternate in rounds of a few steps so that a machine shared with other
jobs slows both alike; the median step time gives images/s, and the ratio DCB / plain is
printed. The load average is reported with the numbers.

    python scripts/benchmark_detection.py                           # prints the table
    python scripts/benchmark_detection.py --write BENCHMARKS.md     # and updates BENCHMARKS.md

On a CPU shared with other jobs use ``--threads 1``: two OpenMP threads that keep losing
their core spin-wait for each other, and a step can take ten times longer.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from dck_lightning.data import SyntheticShapesDataModule  # noqa: E402
from dck_lightning.tasks.detection import DetectionTask  # noqa: E402

SECTION_START = "<!-- benchmark_detection:start -->"
SECTION_END = "<!-- benchmark_detection:end -->"
KEPT_HEADING = "### "


def make_batches(size: int, batch: int, count: int, device: torch.device) -> list[Any]:
    """``count`` normalised training batches of synthetic shapes (as the task's step sees them)."""
    data = SyntheticShapesDataModule(
        task="detection", image_size=size, num_train=batch * count, batch_size=batch
    )
    data.setup("fit")
    out = []
    for images, targets in data.train_dataloader():
        images = images.to(device)
        targets = [
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets
        ]
        out.append(data.on_after_batch_transfer((images, targets), 0))
    return out


def make_task(backbone: str, args: argparse.Namespace, device: torch.device) -> DetectionTask:
    kwargs: dict[str, Any] = {"widths": list(args.widths), "depths": [1] * 4}
    if backbone.startswith("dcb"):
        kwargs.update(dck_kernel_size=args.dck_kernel_size, dcb_stages=args.dcb_stages)
    torch.manual_seed(0)
    task = DetectionTask(
        detector=args.detector,
        backbone={"class_path": backbone, "init_args": kwargs},
        fpn_levels=args.fpn_levels,
        fpn_channels=args.fpn_channels,
        head_convs=args.head_convs,
        num_classes=6,
    ).to(device)
    task.train()
    return task


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_steps(
    task: DetectionTask, optimizer: torch.optim.Optimizer, batches: list[Any], n: int, start: int
) -> list[tuple[float, float]]:
    """``(wall, process CPU)`` seconds of ``n`` training steps (forward, loss, backward, optimiser step)."""
    device = next(task.parameters()).device
    times = []
    for i in range(n):
        images, targets = batches[(start + i) % len(batches)]
        _sync(device)
        begin, cpu = time.perf_counter(), time.process_time()
        losses = task.model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        _sync(device)
        times.append((time.perf_counter() - begin, time.process_time() - cpu))
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    batches = make_batches(args.size, args.batch, 4, device)
    tasks = {name: make_task(name, args, device) for name in ("resnet18", "dcb_resnet18")}
    optimizers = {
        name: torch.optim.AdamW(task.parameters(), lr=1e-3) for name, task in tasks.items()
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in tasks}
    load_before = os.getloadavg()
    for name in tasks:  # warm-up
        train_steps(tasks[name], optimizers[name], batches, args.warmup, 0)
    rounds = max(1, args.steps // args.round)
    for r in range(rounds):
        order = list(tasks) if r % 2 == 0 else list(reversed(tasks))
        for name in order:
            times[name] += train_steps(
                tasks[name], optimizers[name], batches, args.round, r * args.round
            )
    load_after = os.getloadavg()
    result: dict[str, Any] = {"load": (load_before[0], load_after[0])}
    for name, values in times.items():
        median = statistics.median(wall for wall, _ in values)
        result[name] = {
            "median_s": median,
            "median_cpu_s": statistics.median(cpu for _, cpu in values),
            "images_per_s": args.batch / median,
            "parameters": sum(p.numel() for p in tasks[name].model.parameters()),
        }
    result["ratio"] = result["dcb_resnet18"]["images_per_s"] / result["resnet18"]["images_per_s"]
    result["cpu_ratio"] = (
        result["resnet18"]["median_cpu_s"] / result["dcb_resnet18"]["median_cpu_s"]
    )
    return result


def machine_description(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def table(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    lines = [
        "| backbone | parameters (detector) | median s/step (wall) | median CPU s/step | training images/s (wall) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("resnet18", "dcb_resnet18"):
        row = result[name]
        lines.append(
            f"| {name} | {row['parameters'] / 1e6:.3f} M | {row['median_s']:.3f} | {row['median_cpu_s']:.3f} "
            f"| {row['images_per_s']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"DCB / plain throughput ratio: **{result['ratio']:.2f}** (wall), {result['cpu_ratio']:.2f} (CPU time) "
        f"(load average {result['load'][0]:.1f} before, {result['load'][1]:.1f} after)"
    )
    return lines


def write_section(path: Path, body: str) -> None:
    """Replace this script's section of ``path`` (between markers), keeping the rest as it is now.

    A ``### `` sub-section already in the section (the hand-written convergence result of
    ``configs/shapes_detection.yaml``) is kept after the new table.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        old, tail = rest.split(SECTION_END, 1)
        kept = old[old.index(KEPT_HEADING) :].strip() if KEPT_HEADING in old else ""
        section = f"{SECTION_START}\n{body}\n" + (f"\n{kept}\n" if kept else "") + SECTION_END
        text = head + section + tail
    else:
        text = text.rstrip() + "\n\n" + f"{SECTION_START}\n{body}\n{SECTION_END}" + "\n"
    path.write_text(text)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--detector", default="fcos", choices=["fcos", "retinanet", "faster_rcnn"])
    parser.add_argument("--size", type=int, default=128, help="image side")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--widths", type=int, nargs=4, default=[32, 64, 128, 256], help="backbone stage widths"
    )
    parser.add_argument("--dck-kernel-size", type=int, default=3)
    parser.add_argument("--dcb-stages", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--fpn-levels", nargs="+", default=["c2", "c3", "c4", "c5"])
    parser.add_argument("--fpn-channels", type=int, default=32)
    parser.add_argument("--head-convs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per backbone")
    parser.add_argument("--round", type=int, default=5, help="steps per backbone before switching")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: torch's choice)"
    )
    parser.add_argument(
        "--tiny", action="store_true",
        help="one step of each backbone at batch 2, 64², widths 8-32 (CI's run of the GPU command)",
    )  # fmt: skip
    parser.add_argument("--write", type=Path, help="update this markdown file's detection section")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.round, args.warmup, args.batch, args.size = 1, 1, 0, 2, 64
        args.widths, args.fpn_channels = [8, 16, 24, 32], 16
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    lines = table(args, result)
    print("\n".join(lines))
    if args.write:
        command = "python " + " ".join(
            [Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]
        )
        body = "\n".join(
            [
                "## Detection: FCOS training throughput, DCB vs plain backbone",
                "",
                f"Command: `{command}`  ",
                f"Machine: {machine_description(args.device)}; {time.strftime('%Y-%m-%d')}.  ",
                f"FCOS, {args.size}×{args.size} synthetic shapes, batch {args.batch}, stage widths "
                f"{list(args.widths)}, depths 1, FPN {args.fpn_levels} × {args.fpn_channels} ch, "
                f"{args.head_convs} head convs; DCB: stages {args.dcb_stages}, DCK kernel {args.dck_kernel_size}. "
                "One step = forward + loss + backward + AdamW; median of "
                f"{max(1, args.steps // args.round) * args.round} steps, models alternating every {args.round} steps.",
                "",
                *lines,
            ]
        )
        write_section(args.write, body)
    return result


if __name__ == "__main__":
    main()

"""Forward+backward time and peak memory of the DCK layers relative to ``nn.Conv2d``.

Every layer is timed in the same process as its ``nn.Conv2d`` baseline of the same kernel
size (warm-up, then the median of repeats), at batch 32, 64→64 channels, 32×32 pixels,
k = 3 and k = 7. Peak memory is the largest allocation during one forward+backward
(CPU: the profiler's memory accounting; CUDA: ``max_memory_allocated``).

    python scripts/benchmark_layers.py                     # prints the table
    python scripts/benchmark_layers.py --write BENCHMARKS.md  # and updates BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from dck_lightning.layers import DeformConv2d, DynamicConv2d

SECTION_START = "<!-- benchmark_layers:start -->"
SECTION_END = "<!-- benchmark_layers:end -->"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(layer: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median seconds of ``layer(x).sum().backward()``."""
    times = []
    for i in range(warmup + repeats):
        _sync(x.device)
        start = time.perf_counter()
        layer(x).sum().backward()
        _sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    return statistics.median(times)


def peak_memory_mb(layer: nn.Module, x: torch.Tensor) -> float:
    """Peak bytes allocated during one forward+backward, in MiB."""
    if x.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        layer(x).sum().backward()
        return (torch.cuda.max_memory_allocated(x.device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer(x).sum().backward()
    # Running sum of allocations/frees in event order gives the peak.
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start
    )
    current = peak = 0
    for e in events:
        current += e.cpu_memory_usage
        peak = max(peak, current)
    layer.zero_grad(set_to_none=True)
    return peak / 2**20


class TorchvisionDeform(nn.Module):
    """``torchvision.ops.DeformConv2d`` with its offsets predicted by a conv (as in DCNv2)."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.offset = nn.Conv2d(channels, 3 * k * k, k, padding=k // 2)
        self.conv = torchvision.ops.DeformConv2d(channels, channels, k, padding=k // 2)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset(x)
        taps = self.k * self.k
        return self.conv(x, out[:, : 2 * taps], torch.sigmoid(out[:, 2 * taps :]))


def cropped_dck(channels: int, k: int, keep: int) -> DynamicConv2d:
    """A static DCK whose learned extent keeps ``keep × keep`` of its ``k × k`` window."""
    layer = DynamicConv2d(channels, channels, k, adaptive=False)
    # σ such that the tap at distance (keep+1)/2 falls below the crop threshold.
    sigma = ((keep + 1) / 2) / math.sqrt(2 * math.log(1 / layer.crop_threshold)) * 0.999
    with torch.no_grad():
        layer.extent.fill_(math.log(math.expm1(sigma)))
    assert layer.effective_kernel_size == (keep, keep), layer.effective_kernel_size
    return layer


def layer_cases(channels: int, k: int) -> list[tuple[str, Callable[[], nn.Module]]]:
    cases = [
        (f"nn.Conv2d {k}x{k} (baseline)", lambda: nn.Conv2d(channels, channels, k, padding=k // 2)),
        ("DCK static, full extent", lambda: DynamicConv2d(channels, channels, k, adaptive=False)),
    ]
    if k == 7:
        cases.append(("DCK static, extent cropped to 3x3", lambda: cropped_dck(channels, k, 3)))
    cases += [
        ("DCK adaptive, torch backend", lambda: DynamicConv2d(channels, channels, k, backend="torch")),
        (
            "DCK adaptive, torchvision backend",
            lambda: DynamicConv2d(channels, channels, k, backend="torchvision"),
        ),
        ("DeformConv2d, torch backend", lambda: DeformConv2d(channels, channels, k, padding=k // 2, backend="torch")),
        (
            "DeformConv2d, torchvision backend",
            lambda: DeformConv2d(channels, channels, k, padding=k // 2, backend="torchvision"),
        ),
        ("torchvision.ops.DeformConv2d + offset conv", lambda: TorchvisionDeform(channels, k)),
    ]
    return cases


def run(args: argparse.Namespace) -> list[str]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    lines = [
        f"Batch {args.batch}, {args.channels}→{args.channels} channels, {args.size}×{args.size}, "
        f"float32, {args.device}; median of {args.repeats} forward+backward after {args.warmup} warm-up.",
        "",
        "| k | layer | ms | × conv2d | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for k in args.kernel_sizes:
        x = torch.randn(args.batch, args.channels, args.size, args.size, device=device, requires_grad=True)
        baseline = None
        for name, make in layer_cases(args.channels, k):
            layer = make().to(device)
            seconds = time_fwd_bwd(layer, x, args.repeats, args.warmup)
            baseline = baseline or seconds
            memory = peak_memory_mb(layer, x)
            row = f"| {k} | {name} | {seconds * 1e3:.1f} | {seconds / baseline:.2f} | {memory:.0f} |"
            print(row, flush=True)
            lines.append(row)
    return lines


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return (
        f"{name}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}"
    )


def write_section(path: Path, body: str) -> None:
    """Replace this script's section of ``path`` (between markers), keeping the rest."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{SECTION_START}\n{body}\n{SECTION_END}"
    if SECTION_START in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--write", type=Path, help="update this markdown file's layer section")
    args = parser.parse_args(argv)
    lines = run(args)
    if args.write:
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
        body = "\n".join(
            [
                "## Layers: forward+backward vs nn.Conv2d",
                "",
                f"Command: `{command}`  ",
                f"Machine: {machine_description(args.device)}, {os.cpu_count()} CPUs",
                "",
                *lines,
            ]
        )
        write_section(args.write, body)


if __name__ == "__main__":
    main()

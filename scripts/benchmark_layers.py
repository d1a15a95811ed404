"""Forward+backward time and peak memory of the DCK layers relative to ``nn.Conv2d``.

Every layer is timed in the same process as an ``nn.Conv2d`` baseline of the same kernel
size, at the shapes of ``--shapes`` (default: batch 16, 32→32 channels, 32×32 pixels and
batch 32, 64→64 channels, 32×32), k = 3 and k = 7. The layers of one shape and kernel
size are timed *interleaved*: each round runs every layer once, the baseline included, in a
rotating order, so that a change of machine load mid-run hits them all alike. A row's time
is the median over its rounds and its ratio the median of (layer / baseline of the same
round). Layers slower than ``--budget`` seconds a round get fewer rounds (at least
``--min-repeats``). Peak memory is the most bytes allocated at once during one
forward+backward (CPU: the profiler's allocation records; CUDA: ``max_memory_allocated``).

    python scripts/benchmark_layers.py                        # prints the table
    python scripts/benchmark_layers.py --write BENCHMARKS.md  # and updates BENCHMARKS.md
    python scripts/benchmark_layers.py --kernel-sizes 3 --only DCK --threads 1  # a quick look
    python scripts/benchmark_layers.py --shapes 64x128x56 --device cuda         # another shape
    python scripts/benchmark_layers.py --device cpu --tiny     # CI: the GPU command line, tiny

On a shared machine, look at the load average printed with the table (``uptime``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import torch
import torchvision
from bench_utils import CLOCKS, add_clock_argument, interleaved_times, paired_ratio, write_section
from torch import nn

from dck_lightning.layers import DeformConv2d, DynamicConv2d

SECTION = "benchmark_layers"  # BENCHMARKS.md section; CUDA results go to their own ("benchmark_layers_cuda")


def section_markers(device: str) -> tuple[str, str]:
    """The BENCHMARKS.md markers of this device type's table, so CPU and GPU results coexist."""
    name = (
        SECTION if torch.device(device).type == "cpu" else f"{SECTION}_{torch.device(device).type}"
    )
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(
    layer: nn.Module, x: torch.Tensor, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds of one ``layer(x).sum().backward()``."""
    _sync(x.device)
    start = clock()
    layer(x).sum().backward()
    _sync(x.device)
    seconds = clock() - start
    layer.zero_grad(set_to_none=True)
    x.grad = None
    return seconds


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's backend logs "USDT: profiler_start" lines there."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(layer: nn.Module, x: torch.Tensor) -> float:
    """Most bytes allocated at once during one forward+backward, in MiB."""
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        layer(x).sum().backward()
        peak = torch.cuda.max_memory_allocated(x.device) - base
    else:
        from torch.profiler import ProfilerActivity, profile

        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        with (
            _quiet_stderr(),
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
        ):
            layer(x).sum().backward()
        # Running sum of the allocation (+) and free (-) records, in time order.
        records = sorted(
            (event.start_ns(), event.nbytes())
            for event in prof.profiler.kineto_results.events()
            if event.name() == "[memory]"
        )
        current = peak = 0
        for _, nbytes in records:
            current += nbytes
            peak = max(peak, current)
    layer.zero_grad(set_to_none=True)
    x.grad = None
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


BASELINE = "nn.Conv2d {k}x{k} (baseline)"


def layer_cases(channels: int, k: int) -> list[tuple[str, Callable[[], nn.Module]]]:
    cases = [
        (BASELINE.format(k=k), lambda: nn.Conv2d(channels, channels, k, padding=k // 2)),
        ("DCK static, full extent", lambda: DynamicConv2d(channels, channels, k, adaptive=False)),
    ]
    if k == 7:
        cases.append(("DCK static, extent cropped to 3x3", lambda: cropped_dck(channels, k, 3)))
    cases += [
        (
            "DCK adaptive, torch backend",
            lambda: DynamicConv2d(channels, channels, k, backend="torch"),
        ),
        (
            "DCK adaptive, torchvision backend",
            lambda: DynamicConv2d(channels, channels, k, backend="torchvision"),
        ),
        (
            "DeformConv2d, torch backend",
            lambda: DeformConv2d(channels, channels, k, padding=k // 2, backend="torch"),
        ),
        (
            "DeformConv2d, torchvision backend",
            lambda: DeformConv2d(channels, channels, k, padding=k // 2, backend="torchvision"),
        ),
        ("torchvision.ops.DeformConv2d + offset conv", lambda: TorchvisionDeform(channels, k)),
    ]
    return cases


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"16x32x32"`` → ``(batch 16, 32→32 channels, 32×32 pixels)``."""
    try:
        batch, channels, size = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is BATCHxCHANNELSxSIZE, e.g. 16x32x32; got {text!r}"
        ) from None
    return batch, channels, size


def run(args: argparse.Namespace) -> list[str]:
    """Time every layer at every shape and kernel size with the current number of threads."""
    device = torch.device(args.device)
    start_load = os.getloadavg()[0]
    print(f"{torch.get_num_threads()} threads, load average at start: {start_load:.2f}", flush=True)
    lines = [
        f"### {torch.get_num_threads()} thread(s)"
        if device.type == "cpu"
        else f"### {device.type}",
        "",
        "| batch, channels, size | k | layer | ms | × conv2d | rounds | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, channels, size in args.shapes:
        for k in args.kernel_sizes:
            torch.manual_seed(0)
            x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
            cases = [
                (name, make)
                for name, make in layer_cases(channels, k)
                if name == BASELINE.format(k=k)
                or not args.only
                or any(s in name for s in args.only)
            ]
            layers = {name: make().to(device) for name, make in cases}
            clock = CLOCKS[args.clock]
            steps = {
                name: functools.partial(time_fwd_bwd, layer, x, clock)
                for name, layer in layers.items()
            }
            times = interleaved_times(
                steps, args.repeats, args.warmup, args.budget, args.min_repeats
            )
            baseline = times[BASELINE.format(k=k)]
            for name, layer in layers.items():
                seconds = statistics.median(times[name].values())
                ratio = paired_ratio(times[name], baseline)
                memory = peak_memory_mb(layer, x)
                row = (
                    f"| {batch}, {channels}→{channels}, {size}×{size} | {k} | {name} | "
                    f"{seconds * 1e3:.1f} | {ratio:.2f} | {len(times[name])} | {memory:.0f} |"
                )
                print(row, flush=True)
                lines.append(row)
    end_load = os.getloadavg()[0]
    print(f"load average at end: {end_load:.2f}", flush=True)
    lines += [
        "",
        f"Load average (1 min): {start_load:.2f} at the start, {end_load:.2f} at the end.",
    ]
    return lines


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
    return (
        f"{name}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--shapes",
        type=parse_shape,
        nargs="+",
        default=[(16, 32, 32), (32, 64, 32)],
        help="BATCHxCHANNELSxSIZE of the input (channels in = out); default 16x32x32 32x64x32",
    )
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 7])
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument(
        "--budget",
        type=float,
        default=5.0,
        help="seconds a round above which a layer gets fewer rounds",
    )
    parser.add_argument(
        "--min-repeats", type=int, default=3, help="timed rounds of the slowest layers"
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        help="one table per torch.set_num_threads value (default: torch's choice)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        help="time only the layers whose name contains one of these (and the baseline)",
    )
    add_clock_argument(parser)
    parser.add_argument(
        "--tiny", action="store_true",
        help="one round of k=3 at batch 2, 4 channels, 8² (CI's run of the GPU command)",
    )  # fmt: skip
    parser.add_argument("--write", type=Path, help="update this markdown file's layer section")
    args = parser.parse_args(argv)
    if args.tiny:
        args.shapes, args.kernel_sizes = [(2, 4, 8)], [3]
        args.repeats, args.warmup, args.min_repeats = 1, 0, 1
    if args.clock == "cpu" and (args.threads or [torch.get_num_threads()]) != [1]:
        parser.error("--clock cpu measures one thread: give --threads 1")
    lines = [
        f"Float32, {args.device}; forward+backward, {args.clock} time. The layers of one kernel size are timed "
        f"interleaved, round by round: ms is the median of {args.repeats} rounds after "
        f"{args.warmup} warm-up (layers slower than {args.budget:g} s a round: fewer rounds, at "
        f"least {args.min_repeats}, after one warm-up); × conv2d is the median over rounds of "
        "the layer's time over the baseline's in the same round. Peak MiB: most memory "
        "allocated at once during one forward+backward.",
    ]
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        lines += ["", *run(args)]
    if args.write:
        command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
        body = "\n".join(
            [
                f"## Layers: forward+backward vs nn.Conv2d ({torch.device(args.device).type})",
                "",
                f"Command: `{command}`  ",
                f"Machine: {machine_description(args.device)}, {os.cpu_count()} CPUs",
                "",
                *lines,
            ]
        )
        write_section(args.write, body, section_markers(args.device))


if __name__ == "__main__":
    main()

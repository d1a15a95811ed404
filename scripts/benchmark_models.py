"""Training and evaluation step of the DCK models against their plain twins, same process.

A *plain twin* is the same network without the DCK family: SeedNet with ``nn.Conv2d`` of the
same kernel sizes in place of its DCKs, and the DCB backbones with every stage built from
torchvision's ``BasicBlock`` (``dcb_stages=()``: ``dcb_resnet18`` → ``resnet18``). The DCB
models also run with static DCKs (no position-adaptive sampling) to separate the cost of the
block from the cost of the sampling.

One *training step* is ``zero_grad`` + forward + cross-entropy + backward + ``Adam.step``
(``model.train()``); one *eval step* a forward under :func:`torch.inference_mode`
(``model.eval()``). Models of one group are timed *interleaved*: each round runs every model
once, in a rotating order, so that a change of machine load hits them all alike. ms is the
median over rounds, × twin the median over rounds of (model / twin of the same round).
``--compile`` adds every model once more under :func:`torch.compile` (timed after its
compilation), compared with the compiled twin; "× eager" is its time over its own eager time.

    python scripts/benchmark_models.py                                  # prints the tables
    python scripts/benchmark_models.py --threads 2 1 --write BENCHMARKS.md
    python scripts/benchmark_models.py --only seednet --threads 1        # a quick look
    python scripts/benchmark_models.py --device cuda --precision bf16-mixed  # on a GPU
    python scripts/benchmark_models.py --device cpu --tiny              # CI: the GPU command, tiny

``--device cuda`` (and ``--tiny``) also times ``dcb_resnet18_224`` (ImageNet stem, 224², batch 64); CUDA times
are taken after ``torch.cuda.synchronize``. ``--precision bf16-mixed`` runs every step under
bf16 autocast (as ``configs/trainer/gpu.yaml``). ``--tiny`` keeps the command line and
shrinks it to one round at batch 2 (64² for the 224² group), so a renamed flag or a broken
path fails in CI rather than on the GPU.

On a shared machine, look at the load average printed with the tables (``uptime``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from bench_utils import CLOCKS, add_clock_argument, interleaved_times, paired_ratio, write_section
from torch import nn

from dck_lightning.layers import DynamicConv2d
from dck_lightning.models import SeedNet, create_classifier

SECTION = ("<!-- benchmark_models:start -->", "<!-- benchmark_models:end -->")
CUDA_SECTION = ("<!-- benchmark_models_cuda:start -->", "<!-- benchmark_models_cuda:end -->")


def plain_twin_of_seednet(model: SeedNet) -> SeedNet:
    """``model`` with each DCK replaced by an ``nn.Conv2d`` of its full kernel and geometry."""
    for index, layer in enumerate(model.features):
        if isinstance(layer, DynamicConv2d):
            model.features[index] = nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups,
                bias=layer.bias is not None,
            )
    return model


@dataclass
class Group:
    """Models timed together: ``{name: factory}``, the twin's name, the input shape."""

    name: str
    models: dict[str, Callable[[], nn.Module]]
    twin: str
    batch: int
    channels: int
    size: int
    classes: int = 10
    gpu_only: bool = False  # too slow on a CPU at its size: timed with --device cuda (or --only)


def groups() -> list[Group]:
    def classifier(name: str, **kwargs) -> Callable[[], nn.Module]:
        return functools.partial(create_classifier, name, 10, in_channels=3, **kwargs)

    cifar = {"stem": "small", "stem_stride": 1}  # configs/cifar10_dcb_resnet18.yaml
    return [
        Group(
            "seednet",
            {
                "SeedNet, plain twin (nn.Conv2d)": lambda: plain_twin_of_seednet(
                    SeedNet(adaptive=False)
                ),
                "SeedNet, static DCKs": lambda: SeedNet(adaptive=False),
                "SeedNet, adaptive DCKs (design document)": lambda: SeedNet(),
            },
            twin="SeedNet, plain twin (nn.Conv2d)",
            batch=128,
            channels=1,
            size=28,
        ),
        Group(
            "dcb_small",
            {
                "dcb_small, plain twin (dcb_stages=())": classifier("dcb_small", dcb_stages=()),
                "dcb_small, static DCK": classifier("dcb_small", dck="static"),
                "dcb_small, adaptive DCK": classifier("dcb_small"),
            },
            twin="dcb_small, plain twin (dcb_stages=())",
            batch=64,
            channels=3,
            size=32,
        ),
        Group(
            "dcb_resnet18",
            {
                "resnet18 (plain twin)": classifier("resnet18", **cifar),
                "dcb_resnet18, static DCK": classifier("dcb_resnet18", dck="static", **cifar),
                "dcb_resnet18, adaptive DCK": classifier("dcb_resnet18", **cifar),
            },
            twin="resnet18 (plain twin)",
            batch=32,
            channels=3,
            size=32,
        ),
        Group(
            "dcb_resnet18_224",
            {
                "resnet18 (plain twin), 224²": classifier("resnet18"),
                "dcb_resnet18, adaptive DCK, 224²": classifier("dcb_resnet18"),
            },
            twin="resnet18 (plain twin), 224²",
            batch=64,
            channels=3,
            size=224,
            gpu_only=True,
        ),
    ]


def tiny(group: Group) -> Group:
    """``group`` at batch 2 and at most 64² (``--tiny``)."""
    return dataclasses.replace(group, batch=2, size=min(group.size, 64))


def synchronized(clock: Callable[[], float], device: torch.device) -> Callable[[], float]:
    """``clock`` read after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return clock

    def read() -> float:
        torch.cuda.synchronize(device)
        return clock()

    return read


def autocast(x: torch.Tensor, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``x``'s device for ``bf16-mixed``, else nothing."""
    if precision == "bf16-mixed":
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    clock: Callable[[], float] = time.perf_counter,
    precision: str = "32",
) -> float:
    start = clock()
    optimizer.zero_grad(set_to_none=True)
    with autocast(x, precision):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return clock() - start


def eval_step(
    model: nn.Module,
    x: torch.Tensor,
    clock: Callable[[], float] = time.perf_counter,
    precision: str = "32",
) -> float:
    start = clock()
    with torch.inference_mode(), autocast(x, precision):
        model(x)
    return clock() - start


def time_group(group: Group, args: argparse.Namespace) -> list[str]:
    """Rows ``| model | train ms | × twin | eval ms | × twin |`` of one group."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.randn(group.batch, group.channels, group.size, group.size, device=device)
    y = torch.randint(0, group.classes, (group.batch,), device=device)
    variants = {name: make().to(device) for name, make in group.models.items()}
    if args.compile:
        for name in list(variants):
            fresh = group.models[name]().to(device)
            variants[f"{name} [compiled]"] = torch.compile(fresh)
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in variants.items()}
    results, clock = {}, synchronized(CLOCKS[args.clock], device)
    for mode in ("train", "eval"):
        for model in variants.values():
            model.train(mode == "train")
        if mode == "train":
            steps = {
                name: functools.partial(
                    train_step, model, optimizers[name], x, y, clock, args.precision
                )
                for name, model in variants.items()
            }
        else:
            steps = {
                name: functools.partial(eval_step, model, x, clock, args.precision)
                for name, model in variants.items()
            }
        if args.compile:  # compile (both modes) outside the timed rounds
            for name, step in steps.items():
                if name.endswith("[compiled]"):
                    step()
                    step()
        results[mode] = interleaved_times(steps, args.repeats, args.warmup)
    rows = []
    for name in variants:
        compiled = name.endswith("[compiled]")
        twin = f"{group.twin} [compiled]" if compiled else group.twin
        cells = [name]
        for mode in ("train", "eval"):
            times = results[mode]
            cells += [
                f"{statistics.median(times[name].values()) * 1e3:.1f}",
                f"{paired_ratio(times[name], times[twin]):.2f}",
            ]
            if args.compile:
                eager = name.removesuffix(" [compiled]")
                cells.append(f"{paired_ratio(times[name], times[eager]):.2f}" if compiled else "")
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def run(args: argparse.Namespace) -> list[str]:
    start_load = os.getloadavg()[0]
    print(f"{torch.get_num_threads()} threads, load average at start: {start_load:.2f}", flush=True)
    lines = [f"### {torch.get_num_threads()} thread(s)", ""]
    if args.compile:
        lines += [
            "| model | train ms | × twin | × eager | eval ms | × twin | × eager |",
            "|---|---|---|---|---|---|---|",
        ]
    else:
        lines += ["| model | train ms | × twin | eval ms | × twin |", "|---|---|---|---|---|"]
    for group in groups():
        if args.only and group.name not in args.only:
            continue
        if not args.only and group.gpu_only and args.device != "cuda" and not args.tiny:
            continue
        if args.tiny:
            group = tiny(group)
        lines.append(
            f"| **{group.name}**: batch {group.batch}, {group.channels}×{group.size}×{group.size} |"
            + " |" * (6 if args.compile else 4)
        )
        lines += time_group(group, args)
    end_load = os.getloadavg()[0]
    print(f"load average at end: {end_load:.2f}", flush=True)
    return lines + [
        "",
        f"Load average (1 min): {start_load:.2f} at the start, {end_load:.2f} at the end.",
    ]


def machine(device: str) -> str:
    """The GPU's name for ``cuda``, else the CPU architecture."""
    return torch.cuda.get_device_name(0) if device == "cuda" else platform.machine()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32", "bf16-mixed"), default="32",
                        help="bf16-mixed: every step under bf16 autocast")  # fmt: skip
    parser.add_argument("--tiny", action="store_true",
                        help="one round at batch 2, at most 64² (CI's run of the GPU command)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        help="one table per torch.set_num_threads value (default: torch's choice)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=[g.name for g in groups()], help="time only these groups"
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    add_clock_argument(parser)
    parser.add_argument("--write", type=Path, help="update this markdown file's model section")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and (args.threads or [torch.get_num_threads()]) != [1]:
        parser.error("--clock cpu measures one thread: give --threads 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    if args.tiny:
        args.repeats, args.warmup = 1, 0
    precision = "bf16 autocast" if args.precision == "bf16-mixed" else "Float32"
    lines = [
        f"{precision}, {args.device}, {args.clock} time. Training step: zero_grad + forward + cross-entropy + backward + Adam; "
        "eval step: forward under inference_mode. The models of a group are timed interleaved, "
        f"round by round: ms is the median of {args.repeats} rounds after {args.warmup} warm-up; "
        "× twin is the median over rounds of the model's time over its plain twin's in the same "
        "round" + (" (compiled rows: over the compiled twin's)." if args.compile else "."),
    ]
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        lines += ["", *run(args)]
    if args.write:
        command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
        body = "\n".join(
            [
                f"## Models: training and eval step vs the plain twin ({args.device})",
                "",
                f"Command: `{command}`  ",
                f"Machine: {machine(args.device)}; Python {platform.python_version()}, torch "
                f"{torch.__version__}, torchvision {torchvision.__version__}, {os.cpu_count()} CPUs",
                "",
                *lines,
            ]
        )
        write_section(args.write, body, SECTION if args.device == "cpu" else CUDA_SECTION)


if __name__ == "__main__":
    main()

"""Count the aten operations a model dispatches, against its plain twin (CPU, no timing).

On a GPU at CIFAR sizes a DCB network waits on kernel launches, not on arithmetic: every
dispatched aten operation is (at least) one launch. This script counts them with a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` for

* one **eval forward** (``model.eval()``, under :func:`torch.inference_mode`), and
* one **training step**: ``zero_grad`` + forward + cross-entropy + backward + ``SGD.step``
  (momentum 0.9, ``foreach=True`` as on CUDA by default: one ``_foreach_*`` call for all
  parameters; the DCKs' optimiser-step hook that re-decides their crops included),

of every preset against its *plain twin* — the same network without the DCK family:
``dcb_stages=()`` for the DCB presets (``dcb_resnet18`` → ``resnet18``), ``SeedNet(plain=True)``
for SeedNet. View operations (``view``, ``permute``, ``t``, ``detach``, ``expand``, … — no
kernel of their own) are not counted. The backbones run with the CIFAR stem (``stem: small``,
``stem_stride: 1``, as ``configs/cifar10_dcb_resnet18.yaml``) on ``batch × 3 × 32 × 32``
(SeedNet: ``batch × 1 × 28 × 28``) behind the classification head. The step is counted
after one untimed warm-up step (lazy state: momentum buffers, crops).

    python scripts/count_ops.py                                     # every preset, a table
    python scripts/count_ops.py --presets dcb_resnet18 dcb_resnet18:dck=static:deform=false
    python scripts/count_ops.py --presets dcb_small --tiny          # CI: seconds
    python scripts/count_ops.py --write BENCHMARKS.md               # the "Dispatched operations" section

A preset is a name of :data:`~dck_lightning.models.BACKBONES` or ``seednet``, optionally with
``:key=value`` overrides of its arguments (YAML values: ``dck=static``, ``gcm=false``); the
overrides apply to the model, not to its twin. ``--tiny`` shrinks every backbone to widths
``(8, 16, 32, 32)``, one block per stage, on 16² inputs (SeedNet keeps its size: it is small).
"""

from __future__ import annotations

import argparse
import collections
import platform
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from bench_utils import write_section
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dck_lightning.models import BACKBONES, SeedNet, create_classifier

SECTION = ("<!-- count_ops:start -->", "<!-- count_ops:end -->")
CIFAR_STEM = {"stem": "small", "stem_stride": 1}  # configs/cifar10_dcb_resnet18.yaml
TINY = {"widths": (8, 16, 32, 32), "depths": (1, 1, 1, 1)}
#: Every preset of the default table: each backbone preset and the whole classifier.
DEFAULT_PRESETS = ("seednet", "dcb_small", "dcb_resnet18", "dcb_resnet34", "resnet18", "resnet34")


class OpCounter(TorchDispatchMode):
    """Counts the aten operations dispatched while active, by name (``aten.add.Tensor``),
    leaving out view operations (:attr:`torch._ops.OpOverload.is_view`)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.is_view:
            self.views += 1
        else:
            self.counts[str(func)] += 1  # e.g. "aten.convolution.default"
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Spec:
    """A model to count: its name in the table, how to build it and its twin, the input."""

    name: str
    model: Callable[[], nn.Module]
    twin: Callable[[], nn.Module]
    twin_name: str
    input_shape: tuple[int, int, int]


def parse_overrides(text: str) -> tuple[str, dict]:
    """``"dcb_resnet18:dck=static:gcm=false"`` → ``("dcb_resnet18", {"dck": "static", "gcm": False})``."""
    name, *pairs = text.split(":")
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"preset override {pair!r} of {text!r} must be key=value")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def make_spec(text: str, tiny: bool = False) -> Spec:
    """The :class:`Spec` of a ``--presets`` entry."""
    name, overrides = parse_overrides(text)
    if name.lower() == "seednet":
        return Spec(
            text,
            lambda: SeedNet(**overrides),
            lambda: SeedNet(plain=True),
            "seednet (plain=True)",
            (1, 28, 28),
        )
    if name not in BACKBONES:
        raise ValueError(
            f"unknown preset {name!r}; choose among {['seednet', *sorted(BACKBONES)]}"
        )
    base = {**CIFAR_STEM, **(TINY if tiny else {})}

    def build(**kwargs) -> nn.Module:
        return create_classifier(name, 10, in_channels=3, **base, **kwargs)

    twin_name = "resnet" + name.removeprefix("dcb_resnet") if name.startswith("dcb_resnet") else (
        f"{name} (dcb_stages=())" if name.startswith("dcb_") else name
    )
    return Spec(
        text,
        lambda: build(**overrides),
        lambda: build(dcb_stages=()),
        twin_name,
        (3, 16, 16) if tiny else (3, 32, 32),
    )


def count_eval(model: nn.Module, x: torch.Tensor) -> OpCounter:
    """Operations of one eval forward (after one untimed one)."""
    model.eval()
    with torch.no_grad():
        model(x)
        with OpCounter() as counter:
            model(x)
    return counter


def count_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> OpCounter:
    """Operations of one training step (after one untimed one): zero_grad, forward,
    cross-entropy, backward, SGD step."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    with OpCounter() as counter:
        step()
    return counter


def top(counter: OpCounter, n: int) -> str:
    """``"convolution 20, add 12, …"``: the ``n`` most dispatched operations."""
    return ", ".join(
        f"{name.removeprefix('aten.')} {count}" for name, count in counter.counts.most_common(n)
    )


def count(spec: Spec, batch: int) -> dict[str, OpCounter]:
    """``{"eval", "train", "twin eval", "twin train"}`` counters of ``spec``."""
    torch.manual_seed(0)
    x = torch.randn(batch, *spec.input_shape)
    y = torch.randint(0, 10, (batch,))
    counters = {}
    for prefix, make in (("", spec.model), ("twin ", spec.twin)):
        counters[prefix + "eval"] = count_eval(make(), x)
        counters[prefix + "train"] = count_train(make(), x, y)
    return counters


def ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}"


def table(specs: list[Spec], batch: int, n_top: int) -> list[str]:
    """The markdown table (and, below it, the most dispatched operations of each model)."""
    lines = [
        "| model | plain twin | eval ops | twin | × twin | train ops | twin | × twin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    tops = []
    for spec in specs:
        c = count(spec, batch)
        e, te, t, tt = (c[k].total for k in ("eval", "twin eval", "train", "twin train"))
        lines.append(
            f"| {spec.name} | {spec.twin_name} | {e} | {te} | {ratio(e, te)} "
            f"| {t} | {tt} | {ratio(t, tt)} |"
        )
        print(lines[-1], flush=True)
        tops += [
            f"- **{spec.name}**, eval: {top(c['eval'], n_top)}",
            f"- **{spec.name}**, train: {top(c['train'], n_top)}",
        ]
    return lines + ["", f"Most dispatched operations (top {n_top}):", "", *tops]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets",
        nargs="+",
        default=list(DEFAULT_PRESETS),
        metavar="PRESET[:KEY=VALUE...]",
        help=f"presets to count (default: {' '.join(DEFAULT_PRESETS)})",
    )
    parser.add_argument("--batch", type=int, default=2, help="images per batch (default: 2)")
    parser.add_argument("--tiny", action="store_true",
                        help="narrow one-block backbones on 16² inputs (CI)")  # fmt: skip
    parser.add_argument("--top", type=int, default=8, help="most dispatched operations listed")
    parser.add_argument("--write", type=Path, help="update this markdown file's section")
    args = parser.parse_args(argv)
    try:
        specs = [make_spec(text, args.tiny) for text in args.presets]
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    lines = table(specs, args.batch, args.top)
    for line in lines[len(specs) + 2 :]:
        print(line)
    if args.write:
        command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])])
        body = "\n".join(
            [
                "## Dispatched operations: DCK models vs their plain twins",
                "",
                f"Command: `{command}`  ",
                f"torch {torch.__version__}, {platform.machine()} CPU, batch {args.batch}"
                + (", --tiny" if args.tiny else ""),
                "",
                "Non-view aten operations dispatched (each is at least one kernel launch on a "
                "GPU) by one eval forward (inference mode) and one training step (zero_grad, "
                "forward, cross-entropy, backward, SGD with momentum, `foreach=True`), counted by "
                "a `TorchDispatchMode`; backbones with the CIFAR stem on 32² behind the "
                "classification head, SeedNet on 28².",
                "",
                *lines,
            ]
        )
        write_section(args.write, body, SECTION)


if __name__ == "__main__":
    main()

"""Claim-1 instruments: learned extents, fixed-kernel variants, FLOPs, peak training memory."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dck_lightning.analysis.cost import (
    TrainingStep,
    cost_table,
    eval_step,
    extent_table,
    peak_training_memory,
    plain_conv_like,
    with_full_windows,
    with_plain_kernels,
)
from dck_lightning.layers import DynamicConv2d
from dck_lightning.models import SeedNet, count_flops

REPO = Path(__file__).resolve().parents[2]


class Classifier(nn.Module):
    """The least a task needs here: ``forward`` and ``training_step`` returning the loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.model(images), labels)


def small_extent(layer: DynamicConv2d, sigma: float) -> DynamicConv2d:
    with torch.no_grad():
        layer.extent.fill_(math.log(math.expm1(sigma)))  # σ = softplus(θ)
    layer.prune()
    return layer


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 7, "padding": "valid"},
        {"kernel_size": 5, "stride": 2},
        {"kernel_size": 3, "dilation": 2, "groups": 2},
    ],
)
@pytest.mark.parametrize("kernel_size", [None, 1, 3, 7, 11])
def test_plain_conv_keeps_the_dcks_output_grid(kwargs, kernel_size):
    dck = DynamicConv2d(4, 8, adaptive=False, **kwargs)
    plain = plain_conv_like(dck, kernel_size)
    x = torch.randn(2, 4, 23, 23)
    assert plain(x).shape == dck(x).shape
    conv = plain[-1] if isinstance(plain, nn.Sequential) else plain
    k = dck.kernel_size[0] if kernel_size is None else kernel_size
    assert conv.kernel_size == (k, k)
    assert sum(p.numel() for p in plain.parameters()) == 8 * (4 // dck.groups) * k * k + 8


def test_plain_kernels_replace_every_dck_and_count_like_the_static_network():
    static = SeedNet(adaptive=False)  # a flat mask at init: every tap runs
    twin = with_plain_kernels(static)
    assert not any(isinstance(m, DynamicConv2d) for m in twin.modules())
    assert any(isinstance(m, DynamicConv2d) for m in static.modules())  # a copy
    x = torch.randn(2, 1, 28, 28)
    assert count_flops(twin, x) == count_flops(static, x)
    assert twin(x).shape == (2, 10)
    # SeedNet with 11×11 kernels: conv1 (1 → 32) and conv2 (32 → 64) on its 22² and 11² grids
    eleven = count_flops(with_plain_kernels(static, 11), x)
    linear = 2 * 2 * (1600 * 256 + 256 * 10)
    assert eleven == 2 * 2 * (22 * 22 * 32 * 121 + 11 * 11 * 64 * 32 * 121) + linear


def test_extent_table_gives_the_crop_and_its_flops():
    """A static 7×7 DCK with σ = 0.5: the mask exp(−u²/2σ²) is 0.135 at u = 1 and 3e-4 at
    u = 2, so it runs a 3×3 kernel: 9/49 of the full window's multiply-adds."""
    layer = small_extent(DynamicConv2d(4, 8, 7, adaptive=False), 0.5)
    model = nn.Sequential(layer)
    table = extent_table(model, torch.randn(1, 4, 10, 10))
    row = table.iloc[0]
    assert row.effective_kernel_size == (3, 3) and row.kernel_size == (7, 7)
    assert row.sigma_y == pytest.approx(0.5) and row.sigma_x == pytest.approx(0.5)
    assert row.flops == 2 * 100 * 8 * 4 * 9 and row.flops_full_window == 2 * 100 * 8 * 4 * 49
    assert row.flops_ratio == pytest.approx(9 / 49)
    full = with_full_windows(model)
    assert full[0].effective_kernel_size == (7, 7) and layer.effective_kernel_size == (3, 3)


def test_adaptive_dck_flops_include_its_sampled_convolution():
    """count_flops sees the DCK's sampled convolution (the CPU backend's fused op and the
    grid_sample path alike): the adaptive SeedNet costs the static one plus its two
    localisation convolutions."""
    x = torch.randn(2, 1, 28, 28)
    adaptive, static = SeedNet(), SeedNet(adaptive=False)
    # 3×3 convolutions to 4 channels (shift, scale) on each DCK's output grid: 22² and 11²
    localisation = 2 * 2 * (22 * 22 * 4 * 1 * 9 + 11 * 11 * 4 * 32 * 9)
    assert count_flops(adaptive, x) == count_flops(static, x) + localisation


def test_training_step_leaves_the_trained_weights_and_crops():
    layer = small_extent(DynamicConv2d(3, 8, 7, adaptive=False), 0.6)
    task = Classifier(nn.Sequential(layer, nn.Flatten(), nn.LazyLinear(5)))
    batch = (torch.randn(4, 3, 9, 9), torch.randint(0, 5, (4,)))
    task(batch[0])  # materialise the lazy layer
    before = {k: v.clone() for k, v in task.state_dict().items()}
    step = TrainingStep(task, batch)
    assert step() > 0 and step() > 0
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())
    assert layer.effective_kernel_size == (3, 3)
    assert task.model[2].weight.grad is not None
    assert eval_step(task, batch[0])() > 0 and not task.training


def test_peak_training_memory_counts_weights_gradients_optimiser_and_activations():
    """A bias-free 256 → 256 linear layer: 256 KiB of weights, as much gradient, twice that
    of AdamW moments (and the AdamW update's temporaries of the weights' size: 6× at the
    peak here); the batch's activations come on top and grow with the batch."""
    weights = 256 * 256 * 4
    task = Classifier(nn.Linear(256, 256, bias=False))
    small = peak_training_memory(task, (torch.randn(8, 256), torch.randint(0, 256, (8,))))
    large = peak_training_memory(task, (torch.randn(512, 256), torch.randint(0, 256, (512,))))
    assert 4 * weights <= small <= 7 * weights
    assert large - small >= (512 - 8) * 256 * 4  # at least the logits of the larger batch


def test_cost_table_orders_the_fixed_kernels():
    task = Classifier(SeedNet(adaptive=False))
    batch = (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    variants = {f"{k}×{k}": with_plain_kernels(task, k) for k in (3, 7, 11)}
    table = cost_table(variants, batch).set_index("model")
    for column in ("gflops", "params", "train_mib"):
        assert table.loc["3×3", column] < table.loc["7×7", column] < table.loc["11×11", column]
    assert table.loc["3×3", "params"] == 32 * 9 + 32 + 64 * 32 * 9 + 64 + 1600 * 256 + 256 + 2570


@pytest.mark.slow
def test_report_script_on_trained_runs(ablation_runs, tmp_path, capsys):
    """The report of a tiny trained dcb_small (adaptive DCKs), the static run beside it."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from report_dck_cost import main
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nkept\n")
    main(
        [
            str(ablation_runs[0]),
            "--compare",
            "static",
            str(ablation_runs[2]),
            "--kernels",
            "3",
            "11",
            "--batch",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--metric",
            "val/acc",
            "--write",
            str(out),
            "--section",
            "tiny",
        ]
    )
    text = out.read_text()
    assert text.startswith("# Results\n\nkept\n") and "<!-- tiny:start -->" in text
    rows = ("trained DCKs (cropped)", "same, DCKs at full window", "plain 3×3", "plain 11×11")
    for row in rows:
        assert f"| {row} |" in text
    assert "| static | 0." in text  # a trained configuration has its accuracy
    assert "| plain 11×11 | — |" in text  # an untrained variant has none
    frozen = next(line for line in text.splitlines() if "frozen (deploy.freeze)" in line)
    assert frozen.split(" | ")[4:7] == ["—", "—", "—"]  # inference only: no training columns
    assert "stages.2.0.dck.conv" in text and "stages.3.0.dck.conv" in text
    assert "Command: `python scripts/report_dck_cost.py" in capsys.readouterr().out


def test_a_seednet_checkpoint_loads_back_as_seednet(tmp_path):
    """load_task of a run whose backbone is a whole classifier (SeedNet): jsonargparse hands
    the task its class wrapped in its own instantiation partial, which must still read as a
    classifier (it was built as a DCBNet backbone + head and failed)."""
    from data_fixtures import write_mnist

    from dck_lightning.analysis import load_task
    from dck_lightning.cli import main

    write_mnist(tmp_path / "data")
    args = ["fit", "-c", str(REPO / "configs" / "mnist_seed.yaml"), "--run.root", str(tmp_path),
            "--data.init_args.data_dir", str(tmp_path / "data"), "--data.init_args.batch_size", "4",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--run.wandb", "disabled", "--model.init_args.backbone.init_args.adaptive", "false"]  # fmt: skip
    run_dir = Path(main(args).run_dir)
    task = load_task(run_dir)
    assert isinstance(task.model, SeedNet)
    assert not task.model.features[0].adaptive

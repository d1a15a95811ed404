"""Recipe health: every shipped config's first steps train (scripts/check_recipes.py --tiny).

Each config under ``configs/`` runs alone and with ``configs/trainer/gpu.yaml`` (bf16-mixed)
on the CPU, at its own optimiser, learning rate, schedule and head, on tiny learnable data in
the real on-disk formats; a non-finite loss, a spike above 3× the first loss or a loss that
does not fall fails the test. The judge itself is tested on made-up curves, and the check on
the divergence that motivated it (the CIFAR ResNet recipes' old multi-scale max-pooled head).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import check_recipes  # noqa: E402

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
GPU_TRAINER = REPO / "configs" / "trainer" / "gpu.yaml"
STEPS = "24"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return check_recipes.tiny_data(tmp_path_factory.mktemp("recipe_data"))


def run_check(capsys, *args: str) -> tuple[int, list[str]]:
    """``check_recipes.py ARGS``: exit status and the table's rows of configs."""
    status = check_recipes.main(list(args))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    return status, rows[1:]  # without the header


@pytest.mark.parametrize("trainer", ["alone", "gpu.yaml"])
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_trains_its_first_steps(config, trainer, tiny_data, capsys):
    args = [str(config), "--tiny", "--data-dir", str(tiny_data), "--steps", STEPS]
    if trainer == "gpu.yaml":  # the GPU trainer minus the accelerator: bf16 autocast on CPU
        args += ["--trainer-config", str(GPU_TRAINER), "--device", "cpu"]
    status, rows = run_check(capsys, *args)
    assert len(rows) == 1 and f"| {config.stem} |" in rows[0], rows
    assert status == 0, rows[0]
    assert rows[0].endswith("| ok |")
    if trainer == "gpu.yaml":
        assert "| bf16-mixed |" in rows[0]


def test_the_check_catches_the_cifar_head_that_diverged(tiny_data, capsys):
    """The CIFAR ResNet-18 recipe with its old head (every stage's features, max-pooled) at
    SGD 0.1: the tiny check fails it, as the full-size run diverged (2.8 → 71 → 94)."""
    config = REPO / "configs" / "cifar10_resnet18.yaml"
    status, rows = run_check(
        capsys, str(config), "--tiny", "--data-dir", str(tiny_data), "--steps", "30",
        "--override=--model.init_args.feature=all", "--override=--model.init_args.pool=max",
    )  # fmt: skip
    assert status == 1
    assert "FAIL: spike" in rows[0]


@pytest.mark.parametrize(
    "losses, problem",
    [
        ([2.3, 2.2, float("nan"), 2.0], "non-finite loss at step 2"),
        ([2.3, 2.2, float("inf"), 2.0], "non-finite loss at step 2"),
        ([2.3, 7.5, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6], "spike: 7.5 at step 1"),
        ([2.3, 2.3, 2.4, 2.3, 2.3, 2.4, 2.4, 2.4], "flat"),
        ([2.3], "flat"),
        ([], "no training step ran"),
    ],
)
def test_the_judge_names_what_is_wrong(losses, problem):
    problems = check_recipes.judge(losses)
    assert any(p.startswith(problem) for p in problems), problems


def test_a_falling_loss_with_noise_below_the_spike_factor_passes():
    losses = [2.3 - 0.05 * step + (0.3 if step % 5 == 0 else 0.0) for step in range(24)]
    assert max(losses) < 3 * losses[0]
    assert check_recipes.judge(losses) == []
    assert check_recipes.judge([1.0, 2.9, 0.9, 0.8]) == []  # 2.9 < 3 × 1.0
    assert check_recipes.judge([1.0, 3.1, 0.9, 0.8])[0].startswith("spike")


def test_tiny_mode_shrinks_full_width_resnets_only():
    assert check_recipes.tiny_model_overrides(
        {"model": {"init_args": {"backbone": "dcb_resnet18"}}}
    ) == ["--model.init_args.backbone.init_args.widths=[16,32,64,128]"]
    narrow = {"class_path": "dcb_resnet18", "init_args": {"widths": [32, 64, 128, 256]}}
    assert check_recipes.tiny_model_overrides({"model": {"init_args": {"backbone": narrow}}}) == []
    small = {"model": {"init_args": {"backbone": {"class_path": "dcb_small"}}}}
    assert check_recipes.tiny_model_overrides(small) == []


def test_the_table_goes_into_its_markdown_section(tiny_data, tmp_path, capsys):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n")
    status, rows = run_check(
        capsys, str(REPO / "configs" / "mnist_seed.yaml"), "--tiny", "--data-dir",
        str(tiny_data), "--steps", "6", "--write", str(out),
    )  # fmt: skip
    text = out.read_text()
    assert "<!-- recipe_health:start -->" in text and "<!-- recipe_health:end -->" in text
    assert "python scripts/check_recipes.py" in text and rows[0] in text
    first, last = rows[0].split("|")[5].split("(")[0].split("→")
    assert math.isfinite(float(first)) and math.isfinite(float(last))

"""Runs for the analysis tests: tiny in-process fits made once per session by the ``dck`` CLI.

``ablation/``: 2 DCK modes (adaptive, static) × 2 seeds, CSV only; the first run also has the
:class:`KernelVisualizationCallback` (PNG files). ``wandb/``: one run logged to an offline
W&B run, with the callback.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

TINY_MODEL = {"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}
CALLBACK = "dck_lightning.callbacks.kernel_visualization.KernelVisualizationCallback"
DCK_MODES = ("adaptive", "static")
SEEDS = (1, 2)
EPOCHS = 2


def tiny_args(root: Path, *extra: str, **model_kwargs: object) -> list[str]:
    """A 2-epoch fit of a tiny ``dcb_small`` on 16×16 synthetic shapes (as in tests/cli)."""
    return [
        "--run.root", str(root),
        "--trainer.max_epochs", str(EPOCHS),
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1",  # the default's one-cycle lr is logged per step
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--model.init_args.backbone.init_args", json.dumps({**TINY_MODEL, **model_kwargs}),
        "--data.init_args.image_size", "16",
        "--data.init_args.num_train", "32",
        "--data.init_args.num_val", "16",
        "--data.init_args.num_test", "16",
        "--data.init_args.batch_size", "8",
        *extra,
    ]  # fmt: skip


def make_runs(root: Path) -> Path:
    """Train the session's runs into ``root`` (see the module docstring); returns ``root``."""
    import wandb

    from dck_lightning.cli import main

    with pytest.MonkeyPatch.context() as env:
        for dck in DCK_MODES:
            for seed in SEEDS:
                extra = [
                    "--run.name",
                    "ablation",
                    "--run.wandb",
                    "disabled",
                    "--seed_everything",
                    str(seed),
                ]
                if dck == DCK_MODES[0] and seed == SEEDS[0]:
                    extra += ["--trainer.callbacks+", CALLBACK]
                main(["fit", *tiny_args(root, *extra, dck=dck)])
        env.setenv("WANDB_MODE", "offline")
        wandb.finish()  # a W&B run left open in this process would be reused by the next fit
        try:
            main(["fit", *tiny_args(root, "--run.name", "wandb", "--run.wandb", "offline",
                                    "--trainer.callbacks+", CALLBACK)])  # fmt: skip
        finally:
            wandb.finish()  # the CLI leaves its run open
    return root


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def ablation_runs(runs_root: Path) -> list[Path]:
    return sorted((runs_root / "ablation").glob("version_*"))


@pytest.fixture(scope="session")
def wandb_run_dir(runs_root: Path) -> Path:
    return runs_root / "wandb" / "version_0"

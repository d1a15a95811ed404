"""``--run.log_model``: the best and the last checkpoint become W&B artifacts, each with its
own alias (read back from the offline run's records)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wandb_records import artifacts

from dck_lightning.cli import main

TINY = [
    "--trainer.max_epochs", "3",
    "--trainer.limit_train_batches", "2",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--model.init_args.backbone.init_args",
    '{"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}',
    "--data.init_args.image_size", "16",
    "--data.init_args.num_train", "16",
    "--data.init_args.num_val", "16",
    "--data.init_args.batch_size", "8",
]  # fmt: skip


@pytest.mark.parametrize("log_model", ["true", "all"])
def test_best_and_last_checkpoints_are_uploaded_with_their_aliases(tmp_path: Path, log_model):
    cli = main(
        ["fit", "--run.root", str(tmp_path), "--run.wandb", "offline", "--run.log_model", log_model]
        + TINY
    )
    run_dir = Path(cli.trainer.log_dir)
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert best.name.startswith("best-") and (run_dir / "checkpoints" / "last.ckpt").is_file()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    epochs_saved = 3 if log_model == "all" else 1  # last.ckpt uploads expected

    def complete(found: list[dict]) -> bool:
        names = [a["metadata"].get("original_filename") for a in found]
        return names.count("last.ckpt") >= epochs_saved

    logged = artifacts(offline, until=complete)
    assert logged and all(
        a["type"] == "model" and list(a["files"]) == ["model.ckpt"] for a in logged
    )
    names = [artifact["metadata"]["original_filename"] for artifact in logged]
    for name, artifact in zip(names, logged):
        if name.startswith("best-"):
            assert "best" in artifact["aliases"], artifact
        else:
            assert name == "last.ckpt" and "best" not in artifact["aliases"], artifact
    final_best = [a for n, a in zip(names, logged) if n.startswith("best-")][-1]
    assert final_best["metadata"]["original_filename"] == best.name
    assert final_best["metadata"]["monitor"] == "val/acc"
    assert final_best["metadata"]["score"] == pytest.approx(
        float(cli.trainer.checkpoint_callback.best_model_score)
    )
    assert names[-1] == "last.ckpt"  # logged last: W&B moves `latest` to it
    if log_model == "true":  # once each, at the end of the fit
        assert names == [best.name, "last.ckpt"]
    else:  # after every save: last.ckpt once per epoch
        assert names.count("last.ckpt") == 3

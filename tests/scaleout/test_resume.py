"""Exact resume, resume into the same run folder (never clobbering), W&B run continuity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import wandb
import yaml
from scaleout_utils import tiny_args

from dck_lightning.cli import main

# Dropout and augmentation on: both draw random numbers, so an exact resume must restore the
# global RNG (dropout, shuffling) and the DataModule's augmentation generator.
EXACT = [
    "--trainer.limit_train_batches",
    "3",
    "--model.init_args.dropout",
    "0.3",
    "--data.init_args.augment",
    "true",
]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_fit_two_epochs_equals_one_epoch_then_resume(tmp_path, no_wandb):
    main(
        [
            "fit",
            *tiny_args(tmp_path, "--run.version", "straight", "--trainer.max_epochs", "2", *EXACT),
        ]
    )
    main(
        [
            "fit",
            *tiny_args(tmp_path, "--run.version", "resumed", "--trainer.max_epochs", "1", *EXACT),
        ]
    )
    half = load(tmp_path / "default" / "resumed" / "checkpoints" / "last.ckpt")
    assert half["global_step"] == 3
    # The same command with max_epochs 2 and --ckpt_path last resumes the same run folder.
    main(
        [
            "fit",
            *tiny_args(tmp_path, "--run.version", "resumed", "--trainer.max_epochs", "2", *EXACT),
            "--ckpt_path",
            "last",
        ]
    )

    straight = load(tmp_path / "default" / "straight" / "checkpoints" / "last.ckpt")
    resumed = load(tmp_path / "default" / "resumed" / "checkpoints" / "last.ckpt")
    assert straight["global_step"] == resumed["global_step"] == 6
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key  # bit-exact on CPU
    for a, b in zip(
        straight["optimizer_states"][0]["state"].values(),
        resumed["optimizer_states"][0]["state"].values(),
    ):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # What made it exact is in the checkpoint: the RNG states and the augmentation generator.
    assert set(straight["dck"]["rng"]) >= {"torch", "numpy", "python"}
    assert straight["SyntheticShapesDataModule"]["augment_generators"]


def test_fit_into_an_existing_run_folder_resumes_and_never_clobbers(tmp_path, no_wandb, capsys):
    args = tiny_args(tmp_path, "--run.version", "exp1")
    main(["fit", *args])
    run_dir = tmp_path / "default" / "exp1"
    config, rows = (
        (run_dir / "config.yaml").read_text(),
        (run_dir / "metrics.csv").read_text().splitlines(),
    )

    # Started again (here with more epochs), the same command resumes: nothing is lost.
    cli = main(["fit", *args, "--trainer.max_epochs", "2"])
    assert cli.trainer.global_step == 4
    assert (run_dir / "config.yaml").read_text() == config and (run_dir / "config_1.yaml").is_file()
    second = yaml.safe_load((run_dir / "config_1.yaml").read_text())  # what the resumed command ran
    assert second["ckpt_path"] == str((run_dir / "checkpoints" / "last.ckpt").resolve())
    assert second["weights_only"] is True  # loaded with torch.load(weights_only=True)
    rows_now = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows_now[: len(rows)] == rows and len(rows_now) > len(rows)
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["exp1"]
    capsys.readouterr()

    # --run.resume false refuses instead.
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--run.resume", "false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        f"dck: error: the run folder {run_dir.resolve()} already has checkpoints (last.ckpt)" in err
    )
    assert "Traceback" not in err


def test_ckpt_path_last_without_a_version_continues_the_latest_run(tmp_path, no_wandb):
    main(["fit", *tiny_args(tmp_path)])
    cli = main(["fit", *tiny_args(tmp_path, "--trainer.max_epochs", "2"), "--ckpt_path", "last"])
    assert cli.trainer.global_step == 4
    assert [p.name for p in (tmp_path / "default").iterdir()] == ["version_0"]


def test_resume_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    try:
        main(["fit", *tiny_args(tmp_path, "--run.version", "w")])
        wandb.finish()
        run_dir = tmp_path / "default" / "w"
        run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
        assert load(run_dir / "checkpoints" / "last.ckpt")["dck"]["wandb_run_id"] == run_id

        main(["fit", *tiny_args(tmp_path, "--run.version", "w", "--trainer.max_epochs", "2")])
        wandb.finish()
        offline = sorted((run_dir / "wandb").glob("offline-run-*"))
        assert len(offline) == 2 and all(
            p.name.endswith(f"-{run_id}") for p in offline
        )  # `wandb sync` joins them

        # A checkpoint copied elsewhere still continues its W&B run in a new run folder.
        copy = tmp_path / "elsewhere.ckpt"
        copy.write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
        main(
            [
                "fit",
                *tiny_args(tmp_path, "--run.version", "moved", "--trainer.max_epochs", "3"),
                "--ckpt_path",
                str(copy),
            ]
        )
        wandb.finish()
        moved = tmp_path / "default" / "moved"
        assert (moved / "wandb_run_id.txt").read_text().strip() == run_id
        assert all(p.name.endswith(f"-{run_id}") for p in (moved / "wandb").glob("offline-run-*"))
    finally:
        wandb.finish()

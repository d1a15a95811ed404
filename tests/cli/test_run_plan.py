"""plan_run: the run folder, checkpoint and W&B run of a command, from plain dicts and folders.

No Lightning object is built here: the plan is a function of the settings, the environment
and what the run folders hold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import pytest

from dck_lightning.checkpoints import CheckpointError
from dck_lightning.run_plan import (
    RunEnvironment,
    RunFolderError,
    RunPlan,
    make_run_folder,
    plan_run,
)


def env(
    environ: Optional[dict[str, str]] = None, ids: Optional[dict[str, str]] = None, online=False
):
    """An environment with no W&B credentials, fixed new ids and checkpoints' W&B ids from ``ids``."""
    return RunEnvironment(
        environ=environ or {},
        checkpoint_wandb_id=lambda path: (ids or {}).get(Path(path).name),
        wandb_online=lambda: online,
        new_wandb_id=lambda: "new1",
    )


def settings(root: Path, subcommand: str = "fit", **run: Any) -> dict[str, Any]:
    trainer = {"logger": run.pop("logger", None)}
    ckpt_path = run.pop("ckpt_path", None)
    return {
        "subcommand": subcommand,
        "run": {"root": str(root), "wandb": "offline", **run},
        "trainer": trainer,
        "ckpt_path": ckpt_path,
        "config": run.pop("config", []),
    }


def make_run(root: Path, name: str, version: str, *checkpoints: str, mtime: float = 100) -> Path:
    folder = root / name / version
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    for i, file in enumerate(checkpoints):
        path = folder / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (mtime + i, mtime + i))
    return folder


def test_a_new_run_gets_the_next_version(tmp_path):
    make_run(tmp_path, "default", "version_0")
    plan = plan_run(settings(tmp_path), env())
    assert plan == RunPlan(
        folder=(tmp_path / "default" / "version_1").resolve(),
        new_version=True,
        wandb_mode="offline",
        wandb_id="new1",
    )
    assert not plan.folder.exists()  # the plan writes nothing
    folder = make_run_folder(plan)
    assert folder == plan.folder and (folder / "wandb_run_id.txt").read_text() == "new1\n"


def test_the_experiment_is_named_after_the_main_config(tmp_path):
    configs = [Path("configs/trainer/gpu.yaml"), Path("configs/mnist_seed.yaml")]
    plan = plan_run(settings(tmp_path, config=configs), env())
    assert plan.folder.parent.name == "mnist_seed"
    named = plan_run(settings(tmp_path, config=configs, name="mine"), env())
    assert named.folder.parent.name == "mine"


def test_default_root_dir_holds_the_run_folders(tmp_path):
    config = settings(tmp_path / "ignored")
    config["trainer"]["default_root_dir"] = str(tmp_path / "lightning")
    assert plan_run(config, env()).folder.parent.parent == (tmp_path / "lightning").resolve()


@pytest.mark.parametrize(
    ("environ", "version"),
    [
        ({"SLURM_JOB_ID": "77"}, "slurm-77"),
        (
            {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "3"},
            "slurm-70_3",
        ),
        ({"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "interactive"}, "version_0"),
        ({"TORCHELASTIC_RUN_ID": "job1"}, "torchrun-job1"),
    ],
)
def test_a_job_uses_its_own_folder(tmp_path, environ, version):
    plan = plan_run(settings(tmp_path), env(environ))
    assert plan.version == version and plan.new_version == (version == "version_0")


def test_dck_run_dir_wins_and_ranks_need_a_fixed_folder(tmp_path):
    fixed = tmp_path / "elsewhere"
    plan = plan_run(settings(tmp_path, version="v"), env({"DCK_RUN_DIR": str(fixed), "RANK": "1"}))
    assert plan.folder == fixed.resolve() and not plan.new_version
    with pytest.raises(RuntimeError, match="distributed rank but DCK_RUN_DIR is not set"):
        plan_run(settings(tmp_path), env({"RANK": "1"}))


def test_fit_into_a_folder_with_checkpoints_resumes_it(tmp_path):
    folder = make_run(tmp_path, "default", "v", "checkpoints/last.ckpt", "hpc_ckpt_1.ckpt")
    (folder / "wandb_run_id.txt").write_text("abc\n")
    plan = plan_run(settings(tmp_path, version="v"), env())
    assert plan.checkpoint == folder / "hpc_ckpt_1.ckpt" and plan.resumes  # the newest
    assert plan.info == (f"Resuming {folder.resolve()} from {folder / 'hpc_ckpt_1.ckpt'}",)
    assert plan.wandb_id == "abc"  # the folder's W&B run continues
    with pytest.raises(RunFolderError, match="--run.resume is false"):
        plan_run(settings(tmp_path, version="v", resume=False), env())
    # validate/test read the folder, they do not resume it
    assert plan_run(settings(tmp_path, "validate", version="v"), env()).checkpoint is None


def test_fit_from_another_checkpoint_of_a_resumable_folder_says_which_it_takes(tmp_path):
    folder = make_run(tmp_path, "default", "v", "checkpoints/last.ckpt")
    other = make_run(tmp_path, "default", "w", "checkpoints/last.ckpt") / "checkpoints/last.ckpt"
    plan = plan_run(settings(tmp_path, version="v", ckpt_path=str(other)), env())
    assert plan.checkpoint == folder / "checkpoints" / "last.ckpt"
    assert "resuming from it, not from --ckpt_path" in plan.warnings[0]
    # an earlier checkpoint of that very folder is taken as given
    earlier = folder / "checkpoints" / "best-epoch=0-step=1.ckpt"
    earlier.write_bytes(b"x")
    plan = plan_run(settings(tmp_path, version="v", ckpt_path=str(earlier)), env())
    assert plan.checkpoint == earlier and not plan.resumes and not plan.warnings


def test_fit_from_a_checkpoint_continues_in_its_folder_and_w_and_b_run(tmp_path):
    folder = make_run(tmp_path, "default", "version_0", "checkpoints/last.ckpt")
    last = folder / "checkpoints" / "last.ckpt"
    plan = plan_run(settings(tmp_path, ckpt_path=str(last)), env(ids={"last.ckpt": "fromckpt"}))
    assert plan.folder == folder.resolve() and plan.checkpoint == last
    assert plan.wandb_id == "fromckpt"
    # a checkpoint outside any run folder starts a new version
    loose = tmp_path / "model.ckpt"
    loose.write_bytes(b"x")
    assert plan_run(settings(tmp_path, ckpt_path=str(loose)), env()).new_version


def test_checkpoint_aliases_take_the_newest_run(tmp_path):
    make_run(tmp_path, "default", "version_0", "checkpoints/last.ckpt", mtime=100)
    newer = make_run(tmp_path, "default", "version_1", "checkpoints/best-a.ckpt", mtime=200)
    plan = plan_run(settings(tmp_path, "test", ckpt_path="best"), env())
    assert plan.checkpoint == newer / "checkpoints" / "best-a.ckpt"
    assert plan.new_version and plan.version == "version_2"  # test writes its own folder
    fit = plan_run(settings(tmp_path, ckpt_path="last"), env())
    assert fit.folder == (tmp_path / "default" / "version_0").resolve() and fit.resumes is False
    with pytest.raises(CheckpointError, match="no run of 'nothing' under"):
        plan_run(settings(tmp_path, ckpt_path="last", name="nothing"), env())
    with pytest.raises(CheckpointError, match="has no hpc checkpoint"):
        plan_run(settings(tmp_path, "validate", ckpt_path="hpc", version="version_0"), env())


@pytest.mark.parametrize(
    ("requested", "environ", "online", "logger", "mode"),
    [
        ("auto", {}, True, None, "online"),
        ("auto", {}, False, None, "offline"),
        ("auto", {"WANDB_MODE": "dryrun"}, True, None, "offline"),
        ("disabled", {}, True, None, "disabled"),
        ("online", {}, True, False, None),  # --trainer.logger false: no W&B run of ours
    ],
)
def test_wandb_mode_and_id(tmp_path, requested, environ, online, logger, mode):
    plan = plan_run(settings(tmp_path, wandb=requested, logger=logger), env(environ, online=online))
    assert plan.wandb_mode == mode
    assert plan.wandb_id == ("new1" if mode in ("online", "offline") else None)
    assert any("logging offline" in m for m in plan.info) == (mode == "offline" and not environ)

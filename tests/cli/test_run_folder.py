"""RunFolder: the one reader of run folders (config, W&B id, checkpoints, task class)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dck_lightning.analysis import find_checkpoint, load_config
from dck_lightning.run_folder import (
    RunFolder,
    checkpoint_task_class_path,
    is_run_folder,
    newest_run,
)


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def run(tmp_path: Path) -> RunFolder:
    folder = tmp_path / "runs" / "exp" / "version_0"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "model:\n  class_path: dck_lightning.tasks.DetectionTask\ntrainer:\n  max_epochs: 3\n"
    )
    (folder / "config_1.yaml").write_text("trainer:\n  max_epochs: 5\n")
    (folder / "wandb_run_id.txt").write_text("abc123\n")
    return RunFolder(folder)


def test_config_files_merge_in_resume_order(run):
    assert [p.name for p in run.config_files()] == ["config.yaml", "config_1.yaml"]
    assert run.config()["trainer"] == {"max_epochs": 5}
    assert run.task_class_path() == "dck_lightning.tasks.DetectionTask"
    assert run.wandb_run_id() == "abc123"
    assert load_config(run.path) == run.config()  # the analysis helpers read the same


def test_markers_decide_what_a_run_folder_is(tmp_path):
    assert not is_run_folder(tmp_path)
    (tmp_path / "hparams.yaml").write_text("{}\n")
    assert is_run_folder(tmp_path)
    assert not RunFolder(tmp_path / "missing").exists


def test_last_is_the_newest_of_last_and_hpc(run):
    assert run.last is None and run.best is None
    last = _touch(run.checkpoint_dir / "last.ckpt", 100)
    assert run.last == last
    hpc = _touch(run.path / "hpc_ckpt_2.ckpt", 200)
    assert run.last == hpc and run.checkpoints("hpc") == [hpc]
    assert run.checkpoints("last") == [hpc, last]


def test_best_falls_back_to_last_the_one_documented_fallback(run):
    last = _touch(run.checkpoint_dir / "last.ckpt", 300)
    assert run.best == last  # no best-*.ckpt: the last checkpoint
    old = _touch(run.checkpoint_dir / "best-epoch=0-step=1.ckpt", 100)
    new = _touch(run.checkpoint_dir / "best-epoch=1-step=2.ckpt", 200)
    assert run.best == new and run.checkpoints("best") == [new, old]
    # the analysis helper follows the same rule
    assert find_checkpoint(run.path) == new
    assert find_checkpoint(run.path, "last") == last
    with pytest.raises(ValueError, match="unknown checkpoint alias 'newest'"):
        run.checkpoints("newest")


def test_of_checkpoint_and_containing(run, tmp_path):
    ckpt = _touch(run.checkpoint_dir / "last.ckpt", 100)
    hpc = _touch(run.path / "hpc_ckpt_1.ckpt", 100)
    assert RunFolder.of_checkpoint(ckpt) == run == RunFolder.of_checkpoint(hpc)
    loose = _touch(tmp_path / "elsewhere" / "model.ckpt", 100)
    assert RunFolder.of_checkpoint(loose) is None
    assert RunFolder.containing(ckpt) == run and RunFolder.containing(run.path) == run
    assert RunFolder.containing(loose).path == loose.parent


def test_newest_run_is_the_one_written_last(tmp_path):
    a, b = RunFolder(tmp_path / "a"), RunFolder(tmp_path / "b")
    _touch(a.checkpoint_dir / "last.ckpt", 200)
    _touch(b.checkpoint_dir / "last.ckpt", 100)
    _touch(b.checkpoint_dir / "best-epoch=0-step=1.ckpt", 300)
    assert newest_run([a, b], "last") == a
    assert newest_run([a, b], "best") == b
    assert newest_run([RunFolder(tmp_path / "none")]) is None


def test_task_class_path_of_a_checkpoint():
    cli = {"hyper_parameters": {"_class_path": "dck_lightning.tasks.ClassificationTask"}}
    assert checkpoint_task_class_path(cli) == "dck_lightning.tasks.ClassificationTask"
    meta = {"dck": {"task": "dck_lightning.tasks.detection.DetectionTask"}}
    assert checkpoint_task_class_path(meta) == "dck_lightning.tasks.detection.DetectionTask"
    assert checkpoint_task_class_path({"state_dict": {}}) is None

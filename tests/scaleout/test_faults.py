"""Faults: non-finite loss (stop / skip), credentials never saved, data preparation under a lock,
unpadded DDP evaluation, and the CLI's fault-tolerance wiring."""

from __future__ import annotations

import csv
import fcntl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import wandb
from scaleout_utils import REPO, tiny_args

from dck_lightning.callbacks import NonFiniteLossGuard, PreemptionCheckpoint, ResumeState
from dck_lightning.cli import DCKLightningCLI, main
from dck_lightning.data import MNISTDataModule, SyntheticShapesDataModule
from dck_lightning.locking import file_lock


def poison(step: int) -> list[str]:
    """A task whose training loss is NaN at global step ``step``."""
    return [
        "--model",
        "dck_test_helpers.NaNLossClassificationTask",
        "--model.init_args.nan_at_step",
        str(step),
    ]


@pytest.fixture
def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, no_wandb, capsys):
    run_dir = tmp_path / "default" / "nan"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "fit",
                *poison(3),
                *tiny_args(tmp_path, "--run.version", "nan", "--trainer.max_epochs", "3"),
            ]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    last = run_dir / "checkpoints" / "last.ckpt"
    assert (
        "dck: error: non-finite training loss (nan) at epoch 1, global step 3 (batch 1): training stopped "
        f"before the weights were updated; the last good checkpoint is {last}"
    ) in err
    assert "Traceback" not in err
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 2  # written at the end of epoch 0, not after the bad batch
    assert all(
        torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point()
    )


def test_nonfinite_loss_skip_drops_the_batch(tmp_path, no_wandb):
    cli = main(
        [
            "fit",
            *poison(3),
            *tiny_args(tmp_path, "--run.nonfinite_loss", "skip", "--trainer.max_epochs", "2"),
        ]
    )
    guard = next(c for c in cli.trainer.callbacks if isinstance(c, NonFiniteLossGuard))
    assert guard.total_skipped == 1 and cli.trainer.global_step == 4
    weights = cli.model.state_dict()
    assert all(
        torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()
    )  # incl. BatchNorm stats
    rows = list(csv.DictReader((tmp_path / "default" / "version_0" / "metrics.csv").open()))
    skipped = [
        float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped")
    ]
    assert skipped == [0.0, 1.0]


def test_no_credentials_in_configs_hparams_logs_or_checkpoints(tmp_path, monkeypatch):
    """A token in the config and a W&B key in the environment end up nowhere in the run folder."""
    token, key = "tok-3f9a61c07e", "wandbkey-8d2c44b1a9e07f"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", key)
    config = tmp_path / "private.yaml"  # credentials belong in files or the environment, not argv
    config.write_text(
        f"data:\n  class_path: dck_test_helpers.TokenShapes\n  init_args:\n    access_token: {token}\n"
    )
    try:
        cli = main(
            ["fit", "-c", str(config), *tiny_args(tmp_path, "--run.prepare_data_per_node", "false")]
        )
    finally:
        wandb.finish()
    assert cli.datamodule.access_token == token  # it was used…
    assert cli.datamodule.prepare_data_per_node is False
    run_dir = tmp_path / "private" / "version_0"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.name.endswith(".wandb") for p in files)
    for path in files:  # …and saved nowhere: configs, hparams.yaml, checkpoints, the W&B run
        data = path.read_bytes()
        assert token.encode() not in data and key.encode() not in data, path
    saved = (run_dir / "config.yaml").read_text()
    assert "access_token: '***'" in saved
    assert "access_token: '***'" in (run_dir / "hparams.yaml").read_text()
    assert (
        torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)[
            "datamodule_hyper_parameters"
        ]["access_token"]
        == "***"
    )


# -- data preparation under a file lock ------------------------------------------------------


def test_file_lock_serialises_processes_and_threads(tmp_path):
    lock, log = tmp_path / "sub" / "x.lock", []

    def work(name: str) -> None:
        with file_lock(lock):
            log.append(f"{name} in")
            time.sleep(0.2)
            log.append(f"{name} out")

    threads = [threading.Thread(target=work, args=(str(i),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(
        log[i].split()[0] == log[i + 1].split()[0] for i in range(0, 6, 2)
    )  # never interleaved
    with file_lock(lock):  # held here: another process gives up after its timeout
        child = (  # load locking.py alone: a quick child process
            "import importlib.util as u\n"
            f"spec = u.spec_from_file_location('locking', {str(REPO / 'dck_lightning' / 'locking.py')!r})\n"
            "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
            f"with m.file_lock({str(lock)!r}, timeout=0.3): pass\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, timeout=120
        )
    assert done.returncode != 0 and "Timeout" in done.stderr


def test_prepare_data_downloads_under_the_lock(tmp_path, monkeypatch):
    held = []

    def download(self) -> None:
        with open(
            tmp_path / "data" / ".prepare_data.lock", "a"
        ) as handle:  # a second opener must wait
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
            except BlockingIOError:
                held.append(True)

    monkeypatch.setattr(MNISTDataModule, "download_data", download)
    MNISTDataModule(str(tmp_path / "data"), download=True).prepare_data()
    assert held == [True]


# -- DDP evaluation without padding ------------------------------------------------------------


def test_evaluation_sampler_gives_every_sample_to_exactly_one_rank():
    seen = []
    for rank in range(2):
        dm = SyntheticShapesDataModule(
            image_size=16, num_train=8, num_val=13, num_test=13, batch_size=4
        )
        dm.trainer = SimpleNamespace(
            world_size=2,
            global_rank=rank,
            training=False,
            strategy=SimpleNamespace(reduce=None),
            _accelerator_connector=SimpleNamespace(use_distributed_sampler=True),
        )
        dm.setup("fit")
        loader = dm.val_dataloader()
        seen += [i for batch in loader.batch_sampler for i in batch]
        assert type(loader.sampler).__name__ == "UnrepeatedDistributedSampler"
    assert sorted(seen) == list(
        range(13)
    )  # Lightning's DistributedSampler would give 14 (one repeated)
    single = SyntheticShapesDataModule(image_size=16, num_train=8, num_val=13, batch_size=4)
    single.setup("fit")
    assert type(single.val_dataloader().sampler).__name__ == "SequentialSampler"


# -- the CLI's wiring ----------------------------------------------------------------------------


def test_cli_adds_the_fault_tolerance_pieces(tmp_path, no_wandb, capsys):
    cli = DCKLightningCLI(
        args=[
            *tiny_args(tmp_path),
            "-c",
            str(REPO / "configs" / "trainer" / "ddp.yaml"),
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
        ],
        run=False,
        save_config_callback=None,
    )
    trainer = cli.trainer
    kinds = {type(c) for c in trainer.callbacks}
    assert {NonFiniteLossGuard, PreemptionCheckpoint, ResumeState} <= kinds
    assert (
        Path(trainer.default_root_dir) == cli.run_dir
    )  # Lightning's hpc_ckpt_N.ckpt go to the run folder
    names = sorted(
        Path(c.format_checkpoint_name({"epoch": 0, "step": 1})).name
        for c in trainer.checkpoint_callbacks
    )
    assert names == ["best-epoch=0-step=1.ckpt", "last.ckpt"]
    assert cli.config.trainer.sync_batchnorm is False  # GPU-only: dropped for the CPU run
    assert trainer.precision == "bf16-mixed"


def test_gpu_check_says_it_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: run scripts/gpu_check.py itself")
    done = subprocess.run(
        [sys.executable, "scripts/gpu_check.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    assert (
        "no CUDA device" in done.stderr and "this check needs a GPU; nothing was run" in done.stderr
    )


def test_nonfinite_guard_arguments():
    with pytest.raises(ValueError, match="action must be 'stop' or 'skip', got 'ignore'"):
        NonFiniteLossGuard("ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_consecutive_skips must be >= 1, got 0"):
        NonFiniteLossGuard("skip", max_consecutive_skips=0)

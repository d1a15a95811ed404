"""Bad input across the CLI, the DataModules and checkpoints: each case and the exact error it gives.

Every case runs ``dck`` in-process and must end with ``SystemExit`` of the given status and a
``dck: error: …`` (or the CLI parser's) message on stderr — no traceback.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch
from scaleout_utils import REPO, tiny_args

from dck_lightning.cli import main


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ClassificationTask (tiny dcb_small) checkpoint from a one-epoch fit."""
    root = tmp_path_factory.mktemp("good")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        main(["fit", *tiny_args(root, "--run.version", "v")])
    return root / "default" / "v" / "checkpoints" / "last.ckpt"


def _damaged(tmp: Path, good: Path, kind: str) -> Path:
    data = good.read_bytes()
    path = tmp / f"{kind}.ckpt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "bitflip":  # damage the largest tensor's bytes; sizes and zip structure intact
        with zipfile.ZipFile(good) as archive:
            info = max(archive.infolist(), key=lambda i: i.file_size)
        name_len, extra_len = struct.unpack(
            "<HH", data[info.header_offset + 26 : info.header_offset + 30]
        )
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        buffer = bytearray(data)
        buffer[start : start + 16] = bytes(b ^ 0xFF for b in buffer[start : start + 16])
        path.write_bytes(bytes(buffer))
    elif kind == "text":
        path.write_text("this is not a checkpoint\n" * 20)
    elif kind == "pickled":
        torch.save({"state_dict": {}, "callback": zipfile.ZipInfo("x")}, path)  # an arbitrary class
    elif kind == "bare_state_dict":
        torch.save(torch.load(good, weights_only=True)["state_dict"], path)
    elif kind == "missing":
        pass
    return path


def _in_run_folder(tmp: Path, good: Path) -> str:
    """A run folder ``runs/default/edited`` holding the good checkpoint as its last.ckpt."""
    run_dir = tmp / "runs" / "default" / "edited"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("# the first run's config\n")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(good.read_bytes())
    return "edited"


WIDER = '{"widths": [8, 16, 24, 48], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}'

# (case id, command, arguments(tmp, good checkpoint) -> list, exit status, message parts).
# "T" in the arguments stands for the tiny run arguments (tests/scaleout/conftest.py).
Case = tuple[str, str, Callable[[Path, Path], list[str]], int, list[str]]

CASES: list[Case] = [
    # -- the CLI -------------------------------------------------------------------------------
    ("unknown-run-key", "fit", lambda t, g: ["T", "--run.no_such_key", "1"], 2, ["no_such_key"]),
    (
        "bad-nonfinite-action",
        "fit",
        lambda t, g: ["T", "--run.nonfinite_loss", "sometimes"],
        2,
        ["nonfinite_loss", "sometimes"],
    ),
    (
        "ckpt-last-without-runs",
        "fit",
        lambda t, g: ["T", "--ckpt_path", "last"],
        2,
        [
            "dck: error: --ckpt_path last: no run of 'default' under",
            "has a last checkpoint; give the checkpoint file instead",
        ],
    ),
    (
        "ckpt-best-empty-folder",
        "validate",
        lambda t, g: ["T", "--run.version", "empty", "--ckpt_path", "best"],
        2,
        ["dck: error: --ckpt_path best: the run folder", "empty has no best checkpoint"],
    ),
    # -- DataModules ---------------------------------------------------------------------------
    (
        "batch-size-zero",
        "fit",
        lambda t, g: ["T", "--data.init_args.batch_size", "0"],
        2,
        ["dck: error: invalid config: batch_size must be >= 1, got 0"],
    ),
    (
        "image-too-small",
        "fit",
        lambda t, g: ["T", "--data.init_args.image_size", "4"],
        2,
        ["dck: error: invalid config: image_size must be >= 8, got 4"],
    ),
    (
        "mnist-missing",
        "fit",
        lambda t, g: [
            "-c",
            str(REPO / "configs" / "mnist_seed.yaml"),
            "--run.root",
            str(t / "runs"),
            "--data.init_args.data_dir",
            str(t / "nodata"),
        ],
        2,
        [
            "dck: error: MNIST data not found in data_dir=",
            "MNIST/raw/train-images-idx3-ubyte",
            "dck-prepare-data --dataset mnist --data-dir",
        ],
    ),
    (
        "cifar-missing",
        "validate",
        lambda t, g: [
            "-c",
            str(REPO / "configs" / "cifar10_resnet18.yaml"),
            "--run.root",
            str(t / "runs"),
            "--data.init_args.data_dir",
            str(t / "nodata"),
        ],
        2,
        [
            "dck: error: CIFAR-10 data not found",
            "dck-prepare-data --dataset cifar10 --data-dir",
        ],
    ),
    # -- checkpoints ---------------------------------------------------------------------------
    (
        "ckpt-missing",
        "validate",
        lambda t, g: ["T", "--ckpt_path", str(_damaged(t, g, "missing"))],
        2,
        ["missing.ckpt: no such file"],
    ),
    (
        "ckpt-empty",
        "validate",
        lambda t, g: ["T", "--ckpt_path", str(_damaged(t, g, "empty"))],
        2,
        ["empty.ckpt is empty (0 bytes): the save or copy that wrote it was interrupted"],
    ),
    (
        "ckpt-truncated",
        "fit",
        lambda t, g: ["T", "--ckpt_path", str(_damaged(t, g, "truncated"))],
        2,
        ["truncated.ckpt is truncated (", "failed finding central directory"],
    ),
    (
        "ckpt-bitflip",
        "test",
        lambda t, g: ["T", "--ckpt_path", str(_damaged(t, g, "bitflip"))],
        2,
        ["bitflip.ckpt is corrupt: its member", "fails the CRC check"],
    ),
    (
        "ckpt-not-torch",
        "validate",
        lambda t, g: ["T", "--ckpt_path", str(_damaged(t, g, "text"))],
        2,
        ["text.ckpt is corrupt or not a torch checkpoint"],
    ),
    (
        "ckpt-pickled-code",
        "validate",
        lambda t, g: ["T", "--ckpt_path", str(_damaged(t, g, "pickled"))],
        2,
        [
            "pickled.ckpt contains pickled Python objects that weights_only=True refuses to load",
            "--weights_only false only if you trust",
        ],
    ),
    (
        "ckpt-bare-state-dict",
        "validate",
        lambda t, g: ["T", "--ckpt_path", str(_damaged(t, g, "bare_state_dict"))],
        2,
        ["bare_state_dict.ckpt is not a Lightning checkpoint: it has no 'state_dict'"],
    ),
    (
        "ckpt-other-task",
        "validate",
        lambda t, g: [
            "-c",
            str(REPO / "configs" / "shapes_segmentation.yaml"),
            "--run.root",
            str(t / "runs"),
            "--ckpt_path",
            str(g),
        ],
        2,
        ["last.ckpt was saved by ClassificationTask, but this run builds SegmentationTask"],
    ),
    (
        "ckpt-other-backbone",
        "validate",
        lambda t, g: ["T", "--model.init_args.backbone", "resnet18", "--ckpt_path", str(g)],
        2,
        ["last.ckpt holds a 'dcb_small' backbone, but this run builds 'resnet18'"],
    ),
    # The run folder's own checkpoint (auto-resume) after the config was edited to wider layers.
    (
        "ckpt-other-shapes",
        "fit",
        lambda t, g: [
            "T",
            "--run.version",
            _in_run_folder(t, g),
            "--model.init_args.backbone.init_args",
            WIDER,
        ],
        2,
        [
            "edited/checkpoints/last.ckpt does not fit this run's ClassificationTask:",
            "tensor(s) of another shape (checkpoint vs model)",
            "The checkpoint's backbone has widths=[8, 16, 24, 32] (this run: [8, 16, 24, 48])",
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_its_exact_error(
    case: Case, good_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
):
    name, command, build, status, messages = case
    monkeypatch.setenv("WANDB_MODE", "disabled")
    if name == "ckpt-best-empty-folder":
        (tmp_path / "runs" / "default" / "empty").mkdir(parents=True)
    args = []
    for arg in build(tmp_path, good_checkpoint):
        args += tiny_args(tmp_path / "runs") if arg == "T" else [arg]
    before = good_checkpoint.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == status, err[-2000:]
    for message in messages:
        assert message in err, f"{message!r} not in:\n{err[-2000:]}"
    assert "Traceback" not in err
    assert good_checkpoint.stat().st_mtime_ns == before  # nothing resumed or overwrote it


def test_the_good_checkpoint_passes_the_same_checks(
    good_checkpoint: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = main(["validate", *tiny_args(tmp_path), "--ckpt_path", str(good_checkpoint)])
    assert "val/acc" in cli.trainer.callback_metrics


# -- launchers: processes started vs trainer.devices × num_nodes ---------------------------------

TORCHRUN_2 = {
    "TORCHELASTIC_RUN_ID": "job7",
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "GROUP_RANK": "0",
}
SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "dck",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}

LAUNCHER_CASES = [
    (
        "torchrun-devices",
        TORCHRUN_2,
        ["--trainer.devices", "1"],
        "dck: error: torchrun started 2 process(es) per node (--nproc-per-node=2) but trainer.devices=1 means 1 per node",
    ),
    (
        "torchrun-auto-cpu",
        TORCHRUN_2,
        ["--trainer.accelerator", "cpu", "--trainer.devices", "auto"],
        "torchrun started 2 process(es) per node (--nproc-per-node=2) but trainer.devices=auto means 1 per node",
    ),
    (
        "torchrun-nodes",
        {**TORCHRUN_2, "WORLD_SIZE": "4"},
        ["--trainer.devices", "2"],
        "dck: error: torchrun started processes on 2 node(s) (--nnodes=2) but trainer.num_nodes=1",
    ),
    (
        "slurm-tasks",
        {**SLURM, "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "4", "SLURM_NNODES": "1"},
        ["--trainer.devices", "2"],
        "dck: error: srun started 4 process(es) per node (--ntasks-per-node=4) but trainer.devices=2 means 2 per node",
    ),
    (
        "slurm-nodes",
        {**SLURM, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2"},
        ["--trainer.devices", "1"],
        "dck: error: srun started processes on 2 node(s) (--nodes=2) but trainer.num_nodes=1",
    ),
]


@pytest.mark.parametrize(
    "name,env,args,message", LAUNCHER_CASES, ids=[c[0] for c in LAUNCHER_CASES]
)
def test_launcher_mismatch_fails_fast(name, env, args, message, tmp_path, capsys, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_args(tmp_path, "--trainer.accelerator", "cpu"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "default").exists()  # failed before any run folder was made

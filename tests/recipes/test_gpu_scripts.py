"""The GPU scripts run in CI on CPU through the command lines a GPU run uses (``--device cpu
--tiny``), so a renamed flag or a stale argument fails here, not on a lent GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402


def test_gpu_benchmarks_sh_runs_every_command_on_cpu_in_tiny_mode(tmp_path):
    out = tmp_path / "gpu-results"
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_benchmarks.sh"), str(out), "--device", "cpu", "--tiny"],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    check = (out / "gpu_check.log").read_text()
    for name in ("backends", "train-bf16", "tasks-bf16", "recipes"):
        assert f"PASS {name} " in check, check[-3000:]
    assert "FAIL" not in check
    assert "| cifar10_dcb_resnet18 | bf16-mixed |" in check
    models = (out / "models_cuda.log").read_text()
    assert "dcb_resnet18, adaptive DCK, 224²" in models  # the GPU-only group, tiny
    for log in ("layers_cuda.log", "layers_cuda_stage2.log", "detection_cuda.log"):
        assert (out / log).stat().st_size > 0, log
    assert "<!-- benchmark_models:start -->" in (out / "BENCHMARKS.md").read_text()


def test_gpu_benchmarks_sh_refuses_an_unknown_argument(tmp_path):
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_benchmarks.sh"), str(tmp_path), "--devices", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown argument --devices" in done.stderr


def test_a_failing_check_is_a_fail_line_and_the_others_still_run(monkeypatch, capsys):
    """A ``dck`` sub-command that exits (``SystemExit: 2``, as the stale
    ``--model.init_args.model`` did on the H200) is reported, and the next checks run."""
    ran = []

    def stale_command(setting):
        from dck_lightning.cli import main

        main(["fit", "--model.init_args.model", "dcb_resnet18", "--print_config"])

    def passing(name):
        def check(setting):
            ran.append(name)
            return "fine"

        return check

    monkeypatch.setattr(gpu_check, "check_backends", stale_command)
    for name in ("check_train_bf16", "check_tasks_bf16", "check_recipes"):
        monkeypatch.setattr(gpu_check, name, passing(name))
    assert gpu_check.main(["--device", "cpu", "--tiny"]) == 1
    out = capsys.readouterr().out
    assert "FAIL backends" in out and "exit status 2" in out
    assert ran == ["check_train_bf16", "check_tasks_bf16", "check_recipes"]
    assert out.count("PASS ") == 3


def test_without_a_gpu_the_cuda_check_runs_nothing(capsys):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main([]) == 3
    assert "no CUDA device" in capsys.readouterr().err

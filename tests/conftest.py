"""Shared test configuration: offline W&B, no albumentations update check, the shared data path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository, or ``$DCK_SHARED_DATA``."""
    return Path(os.environ.get("DCK_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared sample data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _isolated_run_dir(monkeypatch):
    """A CLI built in-process (not through ``main``) leaves ``DCK_RUN_DIR`` set for the DDP
    processes it would start; never let it leak from one test into the next."""
    monkeypatch.setenv("DCK_RUN_DIR", "")  # recorded, so teardown removes what the test set
    monkeypatch.delenv("DCK_RUN_DIR")

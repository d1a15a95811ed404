"""Fixtures of the scale-out tests (helpers live in ``scaleout_utils``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scaleout_utils, dck_test_helpers

from scaleout_utils import LAUNCHER_VARS  # noqa: E402


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must not see a launcher (e.g. when pytest itself runs inside SLURM)."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))

"""What a run folder is, and what is in it: config, metrics, checkpoints, W&B id, task class.

The one reader of ``runs/<name>/<version>/`` (written by ``dck``, see :mod:`dck_lightning.runs`)
that the CLI (:mod:`dck_lightning.cli`, :mod:`dck_lightning.checkpoints`) and the notebooks'
helpers (:mod:`dck_lightning.analysis`) share::

    config.yaml, config_1.yaml…   the resolved config of each command (one more per resume)
    metrics.csv, hparams.yaml     CSVLogger's files
    wandb_run_id.txt              the W&B run id (a resumed run continues it)
    checkpoints/best-*.ckpt       the best checkpoint (ModelCheckpoint on the task's monitor)
    checkpoints/last.ckpt         written at every epoch end and on SIGTERM
    hpc_ckpt_N.ckpt               Lightning's checkpoint on SLURM's SIGUSR1 (requeue)

Checkpoints by alias (newest first, by modification time):

- ``last``: ``checkpoints/last.ckpt`` and the ``hpc_ckpt_N.ckpt`` files — the run's latest
  state, what ``fit`` resumes from;
- ``hpc``: only the ``hpc_ckpt_N.ckpt`` files;
- ``best``: the ``best-*.ckpt`` files, **else the ``last`` ones** — the one fallback, as
  Lightning's ``ckpt_path="best"`` of a ModelCheckpoint without a monitor means its latest
  checkpoint.

No Lightning import: plain paths and YAML (torch only to read a checkpoint's task class).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import yaml

__all__ = [
    "CHECKPOINT_ALIASES",
    "RUN_MARKERS",
    "RunFolder",
    "checkpoint_task_class_path",
    "is_run_folder",
    "newest_run",
]

PathLike = Union[str, os.PathLike]

#: ``--ckpt_path`` keywords (and ``RunFolder.checkpoints`` aliases).
CHECKPOINT_ALIASES = ("last", "hpc", "best")
#: Files that mark a folder as a run folder.
RUN_MARKERS = ("config.yaml", "metrics.csv", "wandb_run_id.txt", "hparams.yaml")


def is_run_folder(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding any of :data:`RUN_MARKERS`."""
    path = Path(path)
    return path.is_dir() and any((path / marker).exists() for marker in RUN_MARKERS)


def _hpc_number(path: Path) -> int:
    suffix = path.stem[len("hpc_ckpt_") :]
    return int(suffix) if suffix.isdigit() else -1


def _newest_first(files: Iterable[Path]) -> list[Path]:
    # For equal times prefer the higher hpc number, then last.ckpt.
    return sorted(
        files,
        key=lambda p: (p.stat().st_mtime, _hpc_number(p), p.name == "last.ckpt"),
        reverse=True,
    )


def _deep_update(target: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def checkpoint_task_class_path(checkpoint: Mapping[str, Any]) -> Optional[str]:
    """The task class path a loaded checkpoint names: LightningCLI's ``_class_path``
    hyperparameter (importable as the config wrote it), else the ``dck`` metadata's ``task``."""
    hparams = checkpoint.get("hyper_parameters") or {}
    meta = checkpoint.get("dck") or {}
    class_path = hparams.get("_class_path") or meta.get("task")
    return str(class_path) if class_path else None


class RunFolder:
    """One run folder (see the module docstring); the folder need not exist yet."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def of_checkpoint(cls, checkpoint: PathLike) -> Optional[RunFolder]:
        """The run folder of ``<run>/checkpoints/*.ckpt`` or ``<run>/hpc_ckpt_N.ckpt``, else ``None``."""
        path = Path(checkpoint)
        if path.parent.name == "checkpoints" and is_run_folder(path.parent.parent):
            return cls(path.parent.parent)
        if path.name.startswith("hpc_ckpt_") and is_run_folder(path.parent):
            return cls(path.parent)
        return None

    @classmethod
    def containing(cls, path: PathLike) -> RunFolder:
        """The run folder ``path`` is, or holds the checkpoint ``path`` (``.ckpt``) of."""
        path = Path(path)
        if path.suffix != ".ckpt":
            return cls(path)
        found = cls.of_checkpoint(path)
        if found is not None:
            return found
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    @property
    def exists(self) -> bool:
        return is_run_folder(self.path)

    # -- files -------------------------------------------------------------------------------
    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def config_files(self) -> list[Path]:
        """``config.yaml`` then ``config_1.yaml``, ``config_2.yaml``… (one per resume)."""
        first = self.path / "config.yaml"
        numbered = []
        for path in self.path.glob("config_*.yaml"):
            suffix = path.stem.split("_", 1)[1]
            if suffix.isdigit():
                numbered.append((int(suffix), path))
        return ([first] if first.is_file() else []) + [path for _, path in sorted(numbered)]

    def config(self) -> dict[str, Any]:
        """The resolved config (nested dict; ``{}`` when there is none): later files override
        earlier keys (the newest command line wins, keys it does not mention are kept)."""
        merged: dict[str, Any] = {}
        for path in self.config_files():
            _deep_update(merged, yaml.safe_load(path.read_text()) or {})
        return merged

    def wandb_run_id(self) -> Optional[str]:
        """The W&B run id recorded in ``wandb_run_id.txt``, or ``None``."""
        path = self.path / "wandb_run_id.txt"
        if not path.is_file():
            return None
        return path.read_text().strip() or None

    def task_class_path(self) -> Optional[str]:
        """``model.class_path`` of the run's config, or ``None``."""
        model = self.config().get("model")
        return model.get("class_path") if isinstance(model, Mapping) else None

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoints(self, alias: str = "last") -> list[Path]:
        """Checkpoint files for ``alias`` (``last``, ``hpc`` or ``best``), newest first.

        ``best`` falls back to the ``last`` files when there is no ``best-*.ckpt``.
        """
        if alias not in CHECKPOINT_ALIASES:
            raise ValueError(
                f"unknown checkpoint alias {alias!r}; expected one of {CHECKPOINT_ALIASES}"
            )
        folder = self.checkpoint_dir
        hpc = [
            p
            for p in (*self.path.glob("hpc_ckpt_*.ckpt"), *folder.glob("hpc_ckpt_*.ckpt"))
            if p.is_file()
        ]
        if alias == "hpc":
            return _newest_first(hpc)
        if alias == "best":
            best = [p for p in folder.glob("best*.ckpt") if p.is_file()]
            if best:
                return _newest_first(best)
        last = folder / "last.ckpt"
        return _newest_first(([last] if last.is_file() else []) + hpc)

    def checkpoint(self, alias: str = "last") -> Optional[Path]:
        """The newest checkpoint for ``alias`` (see :meth:`checkpoints`), or ``None``."""
        found = self.checkpoints(alias)
        return found[0] if found else None

    @property
    def best(self) -> Optional[Path]:
        return self.checkpoint("best")

    @property
    def last(self) -> Optional[Path]:
        return self.checkpoint("last")


def newest_run(folders: Iterable[RunFolder], alias: str = "last") -> Optional[RunFolder]:
    """The folder whose checkpoint for ``alias`` was written last, or ``None`` (none has one)."""
    found = [(f.checkpoint(alias), f) for f in folders]
    found = [(c.stat().st_mtime, f) for c, f in found if c is not None]
    return max(found, key=lambda item: (item[0], item[1].path))[1] if found else None

"""What a run folder is, and what is in it: config, metrics, checkpoints, W&B id, task class.

The one reader of ``runs/<name>/<version>/`` (written by ``dck``, see :mod:`dck_lightning.runs`)
that the CLI (:mod:`dck_lightning.cli`, :mod:`dck_lightning.checkpoints`) and the notebooks'
helpers (:mod:`dck_lightning.analysis`) share::

    config.yaml, config_1.yaml…   the resolved config of each command (one more per resume)
    metrics.csv, hparams.yaml     CSVLogger's files
    wandb_run_id.txt              the W&B run id (a resumed run continues it)
    run.json                      every command run in the folder: command, status, config file
    run.lock                      the process writing the folder now (see locking.RunFolderLock)
    attempts/<n>/                 an earlier attempt's files, moved aside by a fit that starts over
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

**Commands and their outcome** (``run.json``, written by the CLI while it holds the folder's
lock): one entry per command, ``{"command": "fit", "status": "running", "config": "config.yaml",
"started": …, "ended": …, "exit_code": …, "error": …, "host": …, "pid": …}``, the status
``running`` at start and ``finished``, ``failed`` or ``interrupted`` (SIGTERM, Ctrl-C) at exit.
An entry still ``running`` whose process is gone (same host, pid no longer alive: a
``kill -9``, a crash of the machine's power) reads as ``interrupted``. The folder's
:meth:`~RunFolder.outcome` is that of its ``fit`` (the latest fit entry) when it has one — a sweep
also tests in the fit's folder — else of its latest command.

No Lightning import: plain paths and YAML (torch only to read a checkpoint's task class).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .locking import RUN_LOCK_FILE, _alive

__all__ = [
    "CHECKPOINT_ALIASES",
    "KEEP_ON_ARCHIVE",
    "RUN_MARKERS",
    "RUN_RECORD",
    "RUN_STATUSES",
    "RunFolder",
    "checkpoint_task_class_path",
    "is_run_folder",
    "newest_run",
]

PathLike = Union[str, os.PathLike]

#: ``--ckpt_path`` keywords (and ``RunFolder.checkpoints`` aliases).
CHECKPOINT_ALIASES = ("last", "hpc", "best")
#: Files that mark a folder as a run folder.
RUN_MARKERS = ("config.yaml", "metrics.csv", "wandb_run_id.txt", "hparams.yaml", "run.json")
#: The record of the commands run in a folder.
RUN_RECORD = "run.json"
#: A command's outcome in :data:`RUN_RECORD`.
RUN_STATUSES = ("running", "finished", "failed", "interrupted")
#: What :meth:`RunFolder.archive_attempt` leaves in place: the folder's own bookkeeping, which
#: spans attempts (the command record, the lock, earlier attempts, ``dck sweep``'s files).
KEEP_ON_ARCHIVE = (RUN_RECORD, RUN_LOCK_FILE, f".{RUN_LOCK_FILE}*", "attempts", "sweep_*")


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

    def config_of(self, command: str) -> dict[str, Any]:
        """The resolved config of the folder's ``command`` runs (``fit``): their config files
        merged as :meth:`config` does, leaving out other commands' (a sweep's ``dck test`` in
        the fit's folder) and archived attempts'. Without a :data:`RUN_RECORD` (a folder older
        than it), :meth:`config`."""
        entries = [e for e in self.commands() if not e.get("archived")]
        if not entries:
            return self.config()
        merged: dict[str, Any] = {}
        for entry in entries:
            path = self.path / str(entry.get("config") or "")
            if entry.get("command") == command and entry.get("config") and path.is_file():
                _deep_update(merged, yaml.safe_load(path.read_text()) or {})
        return merged

    # -- commands and outcome ----------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.path / RUN_RECORD

    def commands(self) -> list[dict[str, Any]]:
        """The entries of :data:`RUN_RECORD`, oldest first (``[]`` without one); an entry still
        ``running`` whose process has gone reads ``interrupted``."""
        try:
            data = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return []
        entries = data.get("commands") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return []
        out = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            entry = dict(entry)
            if entry.get("status") == "running" and _gone(entry):
                entry["status"] = "interrupted"
            out.append(entry)
        return out

    def outcome(self) -> tuple[Optional[str], Optional[str]]:
        """``(command, status)`` of the folder (see the module docstring). A folder without a
        record (older than it) is ``("fit", None)`` when it has a checkpoint or logged
        ``train/`` metrics, else ``(None, None)``."""
        entries = [e for e in self.commands() if not e.get("archived")]
        if not entries:
            return ("fit", None) if self._looks_trained() else (None, None)
        fits = [e for e in entries if e.get("command") == "fit"]
        entry = (fits or entries)[-1]
        return entry.get("command"), entry.get("status")

    def _looks_trained(self) -> bool:
        if self.last is not None:
            return True
        try:
            with self.metrics_csv.open(newline="") as file:
                header = next(csv.reader(file), [])
        except OSError:
            return False
        return any(name.startswith("train/") for name in header)

    def _write_record(self, entries: Sequence[Mapping[str, Any]]) -> None:
        temporary = self.path / f".{RUN_RECORD}.tmp"
        temporary.write_text(json.dumps({"commands": list(entries)}, indent=1) + "\n")
        os.replace(temporary, self.record_path)

    def _raw_commands(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.record_path.read_text())
            return [dict(e) for e in data["commands"] if isinstance(e, dict)]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def start_command(
        self, command: str, config: Optional[str] = None, checkpoint: Optional[PathLike] = None
    ) -> int:
        """Record ``command`` as ``running`` (its config file name, the checkpoint it loads, this
        host and pid); returns its index for :meth:`end_command`. Call it holding the lock."""
        entries = self._raw_commands()
        entries.append({
            "command": command,
            "status": "running",
            "config": config,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ended": None,
            "exit_code": None,
            "error": None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        })  # fmt: skip
        self._write_record(entries)
        return len(entries) - 1

    def end_command(
        self, index: int, status: str, exit_code: Optional[int] = None, error: Optional[str] = None
    ) -> None:
        """Record the outcome of command ``index`` (``finished``, ``failed``, ``interrupted``);
        a config file it announced but never wrote (it failed first) is unset."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        entries = self._raw_commands()
        if not 0 <= index < len(entries):
            return
        entry = entries[index]
        if entry.get("config") and not (self.path / entry["config"]).is_file():
            entry["config"] = None
        entry.update(
            status=status,
            ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            exit_code=exit_code,
            error=None if error is None else str(error).strip().splitlines()[0][:500],
        )
        self._write_record(entries)

    def archive_attempt(self, keep: Sequence[str] = KEEP_ON_ARCHIVE) -> Optional[Path]:
        """Move everything of the folder but ``keep`` (name patterns) into ``attempts/<n>/``
        (``n`` the next number), so the folder shows only what comes next, and nothing is lost;
        the record's earlier entries are marked ``archived``. Returns the new folder, or ``None``
        when there was nothing to move."""
        names = sorted(
            p.name for p in self.path.iterdir() if not any(fnmatch(p.name, k) for k in keep)
        ) if self.path.is_dir() else []  # fmt: skip
        if not names:
            return None
        attempts = self.path / "attempts"
        numbers = [int(p.name) for p in attempts.glob("*") if p.name.isdigit()]
        target = attempts / str(max(numbers, default=0) + 1)
        target.mkdir(parents=True)
        for name in names:
            shutil.move(str(self.path / name), str(target / name))
        entries = self._raw_commands()
        for entry in entries:
            entry.setdefault("archived", str(target.relative_to(self.path)))
        if entries:
            self._write_record(entries)
        return target

    def drop_metrics_after(self, step: int) -> Optional[Path]:
        """Remove the ``metrics.csv`` rows logged at ``step`` or later — what a killed process
        logged after the checkpoint a resumed run continues from, which the resumed run logs
        again — into ``metrics.dropped-<n>.csv`` (the backup; ``n`` counts up). Returns the
        backup, or ``None`` when no row was dropped."""
        path = self.metrics_csv
        if not path.is_file():
            return None
        with path.open(newline="") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            rows = list(reader)
        if not header or "step" not in header:
            return None
        column = header.index("step")

        def later(row: list[str]) -> bool:
            try:
                return column < len(row) and float(row[column]) >= step
            except ValueError:
                return False

        dropped = [row for row in rows if later(row)]
        if not dropped:
            return None
        n = 1
        while (self.path / f"metrics.dropped-{n}.csv").exists():
            n += 1
        backup = self.path / f"metrics.dropped-{n}.csv"
        _write_csv(backup, header, dropped)
        _write_csv(path, header, [row for row in rows if not later(row)])
        return backup

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


def _gone(entry: Mapping[str, Any]) -> bool:
    """Whether the process of a ``running`` entry has ended without recording it (only
    checkable on its own host)."""
    pid = entry.get("pid")
    return (
        entry.get("host") == socket.gethostname()
        and isinstance(pid, int)
        and pid != os.getpid()
        and not _alive(pid, None)
    )


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Write a CSV file through a temporary file (a crash leaves the old one whole)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(temporary, path)


def newest_run(folders: Iterable[RunFolder], alias: str = "last") -> Optional[RunFolder]:
    """The folder whose checkpoint for ``alias`` was written last, or ``None`` (none has one)."""
    found = [(f.checkpoint(alias), f) for f in folders]
    found = [(c.stat().st_mtime, f) for c, f in found if c is not None]
    return max(found, key=lambda item: (item[0], item[1].path))[1] if found else None

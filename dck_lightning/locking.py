"""Inter-process locks: one process prepares (downloads) a dataset while the others wait
(:func:`file_lock`); one process at a time writes a run folder (:class:`RunFolderLock`).

``prepare_data`` runs once per node (or once per job on a shared filesystem, see
``--run.prepare_data_per_node``), but several jobs, or the nodes of one job sharing a
filesystem, may still prepare the same folder at the same time. :func:`file_lock` serialises
them with :class:`filelock.FileLock`: the first downloads, the next finds the files present
and skips.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

from filelock import FileLock

__all__ = ["RUN_LOCK_FILE", "RunFolderBusyError", "RunFolderLock", "file_lock"]


@contextmanager
def file_lock(path: Union[str, Path], timeout: Optional[float] = None) -> Iterator[None]:
    """Hold an exclusive :class:`filelock.FileLock` on ``path`` (parent folders created) inside the block.

    Args:
        path: the lock file, e.g. ``<data_dir>/.prepare_data.lock``.
        timeout: seconds to wait before raising :class:`filelock.Timeout` (a ``TimeoutError``);
            ``None`` waits forever.

    When the lock file cannot be created (a read-only data folder) the block runs unlocked,
    with a warning: a read-only folder cannot be written to by a concurrent download either.

    Example::

        >>> with file_lock("/tmp/dck-example.lock"):  # doctest: +SKIP
        ...     download_if_missing()
    """
    path = Path(path)
    lock = FileLock(path, timeout=-1 if timeout is None else timeout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except TimeoutError:
        raise
    except OSError as error:  # read-only folder: PermissionError, EROFS
        from pytorch_lightning.utilities import rank_zero_warn

        rank_zero_warn(
            f"could not create the lock file {path} ({error}); continuing without a lock"
        )
        yield
        return
    try:
        yield
    finally:
        lock.release()


# -- the run folder lock -------------------------------------------------------------------------

#: The lock file of a run folder (see :class:`RunFolderLock`).
RUN_LOCK_FILE = "run.lock"


class RunFolderBusyError(RuntimeError):
    """The run folder is held by another live process (the message names it)."""


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat``), or
    ``None`` where there is no ``/proc``. Tells a live holder from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie has finished


def _alive(pid: int, start: Optional[str]) -> bool:
    """Whether process ``pid`` (started at ``start``, when known) runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    now = _process_start(pid)
    if Path("/proc").is_dir() and now is None:
        return False  # a zombie
    return start is None or now is None or now == start


def _job_id(environ: Mapping[str, str]) -> Optional[str]:
    """The SLURM job of this process: one instance of a job runs at a time (a requeued job
    keeps its id, on any node), so a holder of the same job with another restart count is dead."""
    job = environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else None


@contextmanager
def _guard(path: Path) -> Iterator[None]:
    """A short :class:`filelock.FileLock` around checking and taking over a lock, so that two
    processes never both judge the same stale lock and take it; where the filesystem has no
    ``fcntl`` locks the hard link alone decides (a narrow race on takeover only)."""
    lock = FileLock(path, timeout=30)
    try:
        lock.acquire()
    except TimeoutError:
        raise
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


class RunFolderLock:
    """One process writes a run folder at a time: ``<folder>/run.lock`` names the holder.

    The lock file holds the holder's host, pid, process start time, command and SLURM job
    (JSON). It is created atomically (a hard link of a complete temporary file, which also
    works on NFS), so a second process finds either no lock or a complete one. A lock is
    *stale*, and taken over, when its holder is gone:

    - on this host: the pid no longer runs (or is a zombie, or another process reuses it —
      the start time differs);
    - of this SLURM job, with another restart count or on another node: SLURM runs one
      instance of a job at a time, so a requeued job takes over from its killed predecessor.

    A holder on another host (not of this job) cannot be checked: its lock stays until that
    process ends, or until the user removes ``run.lock`` after making sure it is gone.
    A process acquiring a lock it holds already (the CLI run twice in one Python process)
    counts up; :meth:`release` counts down and removes the file at zero. Only global rank 0
    of a DDP job takes the lock: the other ranks write nothing to the folder.

    Args:
        folder: the run folder (created when missing).
        command: what holds it, e.g. ``"dck fit"`` (shown to the next process).
        environ: the environment (SLURM job and restart count). Default: ``os.environ``.
    """

    _held: dict[Path, int] = {}  # lock files this process holds -> count

    def __init__(
        self,
        folder: Union[str, Path],
        command: str = "dck",
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / RUN_LOCK_FILE
        self.command = command
        self.environ = os.environ if environ is None else environ

    def _identity(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "process_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": self.command,
            "job": _job_id(self.environ),
            "restart": self.environ.get("SLURM_RESTART_COUNT", "0"),
        }

    def holder(self) -> Optional[dict[str, Any]]:
        """The holder recorded in the lock file, or ``None`` (no lock)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:  # not ours, or hand-edited: a holder we cannot check
            return {"host": "?", "pid": "?", "started": "?", "command": "?"}
        return holder if isinstance(holder, dict) else {"host": "?", "pid": "?"}

    def _is_mine(self, holder: Mapping[str, Any]) -> bool:
        return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()

    def _is_stale(self, holder: Mapping[str, Any]) -> bool:
        job = _job_id(self.environ)
        if job is not None and holder.get("job") == job:
            same_instance = holder.get("host") == socket.gethostname() and holder.get(
                "restart"
            ) == self.environ.get("SLURM_RESTART_COUNT", "0")
            if not same_instance:
                return True
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        return not _alive(holder["pid"], holder.get("process_start"))

    def describe(self, holder: Mapping[str, Any]) -> str:
        """``pid 123 on host n1 (dck fit, started 2026-01-02T03:04:05+0000)``."""
        return (
            f"pid {holder.get('pid')} on host {holder.get('host')} ({holder.get('command')}, "
            f"started {holder.get('started')})"
        )

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunFolderBusyError` naming the live holder."""
        key = self.path.resolve()
        if key in self._held:
            self._held[key] += 1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        identity = self._identity()
        temporary = self.folder / f".{RUN_LOCK_FILE}.{identity['host']}.{identity['pid']}"
        temporary.write_text(json.dumps(identity) + "\n")
        try:
            with _guard(self.folder / f".{RUN_LOCK_FILE}.guard"):
                self._take(temporary)
        finally:
            temporary.unlink(missing_ok=True)
        self._held[key] = 1

    def _take(self, temporary: Path) -> None:
        """Link ``temporary`` as the lock file, taking over a stale lock (under the guard)."""
        for _ in range(3):
            try:
                os.link(temporary, self.path)
                return
            except FileExistsError:
                pass
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile
            if self._is_mine(holder):
                return
            if not self._is_stale(holder):
                raise RunFolderBusyError(
                    f"the run folder {self.folder} is in use by {self.describe(holder)}: wait "
                    "for it to finish, stop it, or give another --run.version (if that process "
                    f"is gone, remove {self.path})"
                )
            self.path.unlink(missing_ok=True)  # stale: its holder is gone
        raise RunFolderBusyError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        """Release the lock (the file goes once this process's last acquire is released)."""
        key = self.path.resolve()
        count = self._held.get(key, 0)
        if count > 1:
            self._held[key] = count - 1
            return
        self._held.pop(key, None)
        holder = self.holder()
        if holder is not None and self._is_mine(holder):
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

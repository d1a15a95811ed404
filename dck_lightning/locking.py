"""An inter-process file lock: one process prepares (downloads) a dataset, the others wait.

``prepare_data`` runs once per node (or once per job on a shared filesystem, see
``--run.prepare_data_per_node``), but several jobs, or the nodes of one job sharing a
filesystem, may still prepare the same folder at the same time. :func:`file_lock` serialises
them: the first downloads, the next finds the files present and skips.

Uses the ``filelock`` package when it is installed, else ``fcntl.flock`` (POSIX; works on
local filesystems and on NFS with a lock daemon).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

__all__ = ["file_lock"]


@contextmanager
def file_lock(path: Union[str, Path], timeout: Optional[float] = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its parent folders) inside the block.

    Args:
        path: the lock file, e.g. ``<data_dir>/.prepare_data.lock``.
        timeout: seconds to wait before raising ``TimeoutError``; ``None`` waits forever.

    When the lock file cannot be created (a read-only data folder) the block runs unlocked,
    with a warning: a read-only folder cannot be written to by a concurrent download either.

    Example::

        >>> with file_lock("/tmp/dck-example.lock"):  # doctest: +SKIP
        ...     download_if_missing()
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - closed below
    except OSError as error:
        from pytorch_lightning.utilities import rank_zero_warn

        rank_zero_warn(
            f"could not create the lock file {path} ({error}); continuing without a lock"
        )
        yield
        return
    try:
        try:
            import filelock
        except ImportError:
            filelock = None
        if filelock is not None:
            with filelock.FileLock(str(path), timeout=-1 if timeout is None else timeout):
                yield
            return
        _flock(handle, timeout, path)
        try:
            yield
        finally:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


def _flock(handle, timeout: Optional[float], path: Path) -> None:
    import fcntl
    import time

    if timeout is None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"could not lock {path} within {timeout} s (pid {os.getpid()})"
                ) from None
            time.sleep(0.05)

"""An inter-process file lock: one process prepares (downloads) a dataset, the others wait.

``prepare_data`` runs once per node (or once per job on a shared filesystem, see
``--run.prepare_data_per_node``), but several jobs, or the nodes of one job sharing a
filesystem, may still prepare the same folder at the same time. :func:`file_lock` serialises
them with :class:`filelock.FileLock`: the first downloads, the next finds the files present
and skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

from filelock import FileLock

__all__ = ["file_lock"]


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

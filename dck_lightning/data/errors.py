"""Errors raised by the DataModules.

:class:`DataNotFoundError` is what a user sees on a cluster node without
network when the dataset files are not where the DataModule looks: it names
the directory, the exact files expected there, and the command that fetches
them on a machine that has network.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

__all__ = ["PREPARE_DATA_COMMAND", "DataNotFoundError", "prepare_command"]


#: The console command installed with the package (``[options.entry_points]`` in ``setup.cfg``)
#: that downloads a dataset: :mod:`dck_lightning.data.prepare`.
PREPARE_DATA_COMMAND = "dck-prepare-data"


def prepare_command(dataset: str, data_dir: Union[str, Path]) -> str:
    """The ``dck-prepare-data`` command line that downloads ``dataset`` into ``data_dir``."""
    return f"{PREPARE_DATA_COMMAND} --dataset {dataset} --data-dir {data_dir}"


class DataNotFoundError(FileNotFoundError):
    """Dataset files are missing and could not (or must not) be downloaded.

    Args:
        dataset: human readable dataset name, e.g. ``"MNIST"``.
        data_dir: the ``data_dir`` the DataModule was given; reported as an absolute path.
        expected: the files (or folder patterns) expected, as paths relative to ``data_dir``.
        missing: the subset of ``expected`` that was not found (defaults to all of them).
        command: a command that fetches the data on a machine with network access.
        download_error: set when ``download=True`` was requested but the download failed.
        hint: an extra line of advice appended to the message.

    Attributes:
        data_dir (Path): absolute data directory.
        expected (list[str]): expected files relative to ``data_dir``.
        missing (list[str]): missing files relative to ``data_dir``.
        command (Optional[str]): the fetch command, if there is one.
    """

    def __init__(
        self,
        dataset: str,
        data_dir: Union[str, Path],
        expected: Sequence[str],
        missing: Optional[Sequence[str]] = None,
        command: Optional[str] = None,
        download_error: Optional[BaseException] = None,
        hint: Optional[str] = None,
    ) -> None:
        self.dataset = dataset
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.expected = list(expected)
        self.missing = list(self.expected if missing is None else missing)
        self.command = command
        self.download_error = download_error
        super().__init__(self._message(hint))

    def _message(self, hint: Optional[str]) -> str:
        if self.download_error is not None:
            lines = [
                f"Downloading {self.dataset} into {self.data_dir} failed "
                f"(no network access?): {type(self.download_error).__name__}: "
                f"{str(self.download_error).strip()}"
            ]
        else:
            lines = [f"{self.dataset} data not found in data_dir={self.data_dir}."]
        lines.append(f"Expected these files under {self.data_dir}:")
        lines += [f"  {name}" for name in self.expected]
        if self.missing and self.missing != self.expected:
            lines.append("Missing:")
            lines += [f"  {name}" for name in self.missing]
        if self.command is not None:
            lines.append("Fetch them on a machine with network access with:")
            lines.append(f"  {self.command}")
            lines.append(
                f"then copy {self.data_dir} to this machine, or pass download=True "
                "where the network is reachable."
            )
        if hint:
            lines.append(hint)
        return "\n".join(lines)

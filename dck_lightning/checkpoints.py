"""Checkpoints: check a file before Lightning loads it.

Lightning's own errors for a bad ``--ckpt_path`` come late and deep (a zip reader message, a
``load_state_dict`` key dump, after the loggers started). The CLI calls these first:

- :func:`read_checkpoint` — the file exists, is a complete, undamaged torch checkpoint (zip
  CRCs checked), loads with ``weights_only=True`` and is a Lightning checkpoint;
- :func:`check_compatible` — it was saved by the same task class and backbone, and its
  state-dict keys and shapes match the model this run builds.

Which checkpoint a run folder has (``last``, ``hpc``, ``best``) is
:class:`~dck_lightning.run_folder.RunFolder`'s.

Writing: :class:`AtomicCheckpointIO` (the CLI's checkpoint plugin) writes every checkpoint to
``<name>.tmp`` and renames it into place only once it is complete, so a full disk or a killed
process never leaves a truncated ``best-*.ckpt`` for ``--ckpt_path best`` to pick.

Every problem is a :class:`CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from .run_folder import checkpoint_task_class_path

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointError",
    "check_compatible",
    "check_config_matches",
    "read_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run: missing, damaged, or of another model."""


# -- writing -------------------------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`~lightning_fabric.plugins.io.TorchCheckpointIO` that writes ``<path>.tmp``,
    flushes it to disk, then renames it to ``path`` (:func:`os.replace`, atomic on one
    filesystem). A save that fails midway (disk full, quota, I/O error) removes the partial
    ``.tmp`` file and raises; ``path`` keeps its previous content, and since
    :class:`~pytorch_lightning.callbacks.ModelCheckpoint` deletes a superseded best checkpoint
    only after the new one is saved, the previous best stays too. Remote paths (``s3://``…) are
    left to Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise


# -- reading and checking ------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _check_zip(path: Path) -> None:
    """Verify the CRC of every member of a zip checkpoint (torch.load does not)."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if infos and all(info.CRC == 0 for info in infos if info.file_size):
                return  # saved without CRCs (torch.serialization.config.save.compute_crc32 = False)
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return  # torch.load reports it
    except OSError as error:
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({_first_line(error)})"
        ) from error
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its member {bad!r} fails the CRC check (the file was "
            "damaged after it was written); use another checkpoint, e.g. an earlier best-*.ckpt"
        )


def read_checkpoint(
    path: Union[str, Path], weights_only: bool = True, verify: bool = True
) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, or raise a :class:`CheckpointError` saying why not.

    Args:
        path: the ``.ckpt`` file.
        weights_only: load with ``torch.load(weights_only=True)`` (tensors and plain Python
            values only; refuses pickled code). ``False`` only for files you trust.
        verify: check the zip CRCs first (reads the whole file once).

    Returns:
        the checkpoint dict (tensors memory-mapped when the format allows).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes): the save or copy that wrote it was interrupted"
        )
    if verify and zipfile.is_zipfile(path):
        _check_zip(path)
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as error:
            if "mmap can only be used" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects that weights_only=True refuses to "
                "load (it was not written by dck, or was edited). Pass --weights_only false only if "
                "you trust where the file comes from."
            ) from error
        raise CheckpointError(
            f"checkpoint {path} is not a torch checkpoint ({_first_line(error)}); {size} bytes"
        ) from error
    except (
        Exception
    ) as error:  # torch.load's errors for damaged files vary: RuntimeError, EOFError, IndexError…
        reason = _first_line(error)
        if "central directory" in reason or isinstance(error, EOFError):
            raise CheckpointError(
                f"checkpoint {path} is truncated ({size} bytes; {reason}): the save or copy that wrote "
                "it was interrupted. Use another checkpoint, e.g. an hpc_ckpt_*.ckpt or best-*.ckpt."
            ) from error
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({reason}); {size} bytes"
        ) from error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        keys = (
            sorted(checkpoint)[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        )
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning checkpoint: it has no 'state_dict' (found {keys}). "
            "A bare model state dict can be loaded with model.load_state_dict(torch.load(...)) instead."
        )
    return dict(checkpoint)


def _short(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", … ({len(names)} in all)" if len(names) > n else "")


def _task_name(class_path: Any) -> Optional[str]:
    return str(class_path).rsplit(".", 1)[-1] if class_path else None


#: Hyperparameters naming the network: the backbone (a preset name, or the backbone's
#: ``class_path`` + ``init_args``; ``model`` in checkpoints older than the typed backbone) and
#: the head.
MODEL_KEYS = ("model", "backbone", "head")


def _name(value: Any) -> Any:
    """A preset name, or the class name of a ``class_path`` spec (dict or Namespace)."""
    class_path = _get(value, "class_path") if not isinstance(value, str) else None
    return str(class_path).rsplit(".", 1)[-1] if class_path else value


def _check_same(path: Union[str, Path], key: str, saved: Any, wanted: Any) -> None:
    saved, wanted = _name(saved), _name(wanted)
    if isinstance(saved, str) and isinstance(wanted, str) and saved != wanted:
        raise CheckpointError(
            f"checkpoint {path} holds a {saved!r} {key}, but this run builds {wanted!r}: set "
            f"--model.init_args.{key} {saved} (and the same arguments) or use another checkpoint"
        )


def _backbone_differences(saved: Any, current: Any) -> str:
    """`` The checkpoint's backbone has widths=[8, 16] (this run: [32, 64]).`` or ``""``."""
    saved_args, current_args = _get(saved, "init_args"), _get(current, "init_args")
    if not isinstance(saved_args, Mapping) or not isinstance(current_args, Mapping):
        return ""
    changed = [
        f"{key}={saved_args[key]} (this run: {current_args.get(key)})"
        for key in saved_args
        if saved_args[key] != current_args.get(key)
    ]
    return f" The checkpoint's backbone has {', '.join(changed)}." if changed else ""


def _get(config: Any, key: str) -> Any:
    if config is None:
        return None
    getter = getattr(config, "get", None)
    return getter(key) if getter is not None else getattr(config, key, None)


def check_config_matches(
    checkpoint: Mapping[str, Any], path: Union[str, Path], model_config: Any
) -> None:
    """Raise a :class:`CheckpointError` when the config's task class or backbone is not the checkpoint's.

    ``model_config`` is the parsed ``model`` section (``class_path`` and ``init_args``), before
    anything is built.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    saved_task = _task_name(checkpoint_task_class_path(checkpoint))
    task = _task_name(_get(model_config, "class_path"))
    if saved_task and task and saved_task != task:
        raise CheckpointError(
            f"checkpoint {path} was saved by {saved_task}, but this run builds {task}: use the config "
            "the checkpoint was trained with (its run folder's config.yaml) or another checkpoint"
        )
    init_args = _get(model_config, "init_args")
    for key in MODEL_KEYS:
        _check_same(path, key, hparams.get(key), _get(init_args, key))


def check_compatible(
    checkpoint: Mapping[str, Any], path: Union[str, Path], module: torch.nn.Module
) -> None:
    """Raise a :class:`CheckpointError` when ``checkpoint`` cannot be loaded into ``module``.

    Checks, in order: the task class (the checkpoint's ``dck`` metadata or LightningCLI's
    ``_class_path`` hyperparameter), the backbone name (``hyper_parameters["model"]``), then
    state-dict keys and tensor shapes against ``module.state_dict()``.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    saved_task = _task_name(checkpoint_task_class_path(checkpoint))
    task = type(module).__name__
    if saved_task and saved_task != task:
        raise CheckpointError(
            f"checkpoint {path} was saved by {saved_task}, but this run builds {task}: use the config "
            "the checkpoint was trained with (its run folder's config.yaml) or another checkpoint"
        )
    current = getattr(module, "hparams", {}) or {}
    for key in MODEL_KEYS:
        _check_same(path, key, hparams.get(key), current.get(key))
    saved = checkpoint["state_dict"]
    expected = module.state_dict()
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    mismatched = [
        f"{k} {tuple(saved[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in saved
        and hasattr(saved[k], "shape")
        and tuple(saved[k].shape) != tuple(expected[k].shape)
    ]
    strict = getattr(module, "strict_loading", True)
    if mismatched or (strict and (missing or unexpected)):
        problems = []
        if mismatched:
            problems.append(
                f"{len(mismatched)} tensor(s) of another shape (checkpoint vs model): {_short(mismatched)}"
            )
        if strict and missing:
            problems.append(
                f"{len(missing)} weight(s) missing from the checkpoint: {_short(missing)}"
            )
        if strict and unexpected:
            problems.append(
                f"{len(unexpected)} weight(s) the model does not have: {_short(unexpected)}"
            )
        differs = _backbone_differences(hparams.get("backbone"), current.get("backbone"))
        if "num_classes" in hparams and hparams.get("num_classes") != current.get("num_classes"):
            differs += f" The checkpoint has {hparams['num_classes']} classes, this run {current.get('num_classes')}."
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's {task}: "
            + "; ".join(problems)
            + "."
            + differs
        )

"""Runs as tables: one row per run (config, best/final metrics, checkpoints), histories per step.

A run is a folder written by the ``dck`` CLI (see :mod:`dck_lightning.runs`)::

    runs/<name>/<version>/config.yaml, metrics.csv, checkpoints/{best-*.ckpt,last.ckpt}, wandb_run_id.txt

or a W&B run, read through ``wandb.Api()``. Both give the same columns:

- ``run`` (``<name>/<version>``), ``run_dir``, ``wandb_id``, ``source`` (``"local"`` / ``"wandb"``);
- ``command`` (``fit``, ``validate``, ``test``, ``predict``) and ``status`` (``running``,
  ``finished``, ``failed``, ``interrupted``) of the run folder, from its ``run.json``
  (:meth:`~dck_lightning.run_folder.RunFolder.outcome`: a sweep's fit folder, tested in
  place, is a ``fit``). Folders older than ``run.json`` are a ``fit`` of unknown status when
  they have a checkpoint, else of unknown command; a W&B run is a ``fit`` when it logged
  ``train/`` metrics, its status W&B's state (``crashed``/``killed``/``preempted``:
  ``interrupted``);
- the resolved config flattened to dotted keys (of a fit folder: its fit commands' configs,
  not a later ``dck test``'s), e.g. ``model.init_args.backbone.init_args.dck``,
  ``trainer.max_epochs``, ``seed_everything`` (lists become tuples so columns can be grouped);
- ``best/<metric>`` and ``final/<metric>`` for every logged metric: the best value over the
  run with the metric's mode (:func:`metric_mode`: ``min`` for losses, ``max`` for accuracy,
  mAP, mIoU, …) and the last value logged; learning rates and kernel extents get only
  ``final/``;
- ``monitor`` (the task's checkpoint metric), ``epochs``, ``steps``;
- ``best_checkpoint`` and ``last_checkpoint`` (paths; W&B: artifact names, when logged).

**Which runs** (``include``, of :func:`load_runs` and :func:`varying_columns`): by default
the fits that did not fail (finished, interrupted, running, or of unknown status) — the runs
worth comparing. The folders a ``dck test``/``validate``/``predict`` of its own writes and the
failed fits are left out; ``include="all"`` keeps every run folder, and a list of commands
and statuses chooses, e.g. ``include=("fit", "failed")`` for the failed fits.

Example::

    >>> runs = load_runs("runs")                                # every run below runs/
    >>> runs.groupby("model.init_args.backbone.init_args.dck")["best/val/acc"].agg(["mean", "std"])
    >>> history = load_history(runs.iloc[0])                    # per-step metrics of one run
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd

from ..run_folder import RUN_STATUSES, RunFolder, is_run_folder, newest_run

__all__ = [
    "DEFAULT_INCLUDE",
    "RUN_COLUMNS",
    "find_checkpoint",
    "find_runs",
    "flatten_config",
    "load_config",
    "load_history",
    "load_runs",
    "metric_mode",
    "select_runs",
    "summary_table",
    "varying_columns",
]

PathLike = Union[str, os.PathLike]

#: Columns that describe a run rather than its config or metrics, in table order.
RUN_COLUMNS = (
    "run",
    "source",
    "command",
    "status",
    "run_dir",
    "wandb_id",
    "monitor",
    "epochs",
    "steps",
    "best_checkpoint",
    "last_checkpoint",
)

#: The runs :func:`load_runs` and :func:`varying_columns` keep by default: fits that did not fail.
DEFAULT_INCLUDE = ("fit", "finished", "interrupted", "running")
_COMMANDS = ("fit", "validate", "test", "predict")
#: W&B run states as run statuses.
_WANDB_STATES = {
    "finished": "finished", "failed": "failed", "running": "running", "crashed": "interrupted",
    "killed": "interrupted", "preempted": "interrupted", "preempting": "interrupted",
}  # fmt: skip

#: Metrics whose best value means nothing (only ``final/`` is reported).
_FINAL_ONLY_PREFIXES = ("lr-", "kernels/", "model/")
_MIN_WORDS = ("loss", "error", "nll", "perplexity", "seconds", "time")

_WANDB_RUN_DIR = re.compile(r"^(offline-)?run-\d{8}_\d{6}-")

# W&B run objects seen by load_runs, by path, so that load_history needs no second query.
_WANDB_RUNS: dict[str, Any] = {}


# -- config ------------------------------------------------------------------------------------


def _hashable(value: Any) -> Any:
    """Lists become tuples (groupable); lists holding dicts become JSON strings."""
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (dict, list, tuple)) for v in value):
            return json.dumps(value, sort_keys=True, default=str)
        return tuple(value)
    return value


def flatten_config(config: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"model": {"init_args": {"lr": 1}}}`` → ``{"model.init_args.lr": 1}``.

    Dicts are flattened (an empty dict stays a value: ``{}``); lists of scalars become tuples,
    lists holding dicts (e.g. ``trainer.callbacks``) JSON strings.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, name, sep))
        else:
            flat[name] = _hashable(dict(value) if isinstance(value, Mapping) else value)
    return flat


def load_config(run: Union[PathLike, Mapping[str, Any]]) -> dict[str, Any]:
    """The resolved config of a run folder (nested dict; ``{}`` when it has none).

    A resumed run has ``config.yaml`` and ``config_1.yaml``…: later files override earlier
    keys (the newest command line wins, keys it does not mention are kept).
    """
    return RunFolder(_run_dir(run)).config()


# -- metrics -----------------------------------------------------------------------------------


def metric_mode(name: str) -> str | None:
    """``"min"``, ``"max"`` or ``None`` (no best value) for a metric name.

    Losses and errors are minimised; everything else that is a score (``acc``, ``top5``,
    ``map``, ``map_50``, ``miou``, ``pixel_acc``, per-class ``ap``/``iou``…) maximised.
    Times (``train/epoch_seconds``) are minimised too. Learning rates (``lr-*``), kernel
    extents (``kernels/*``), ``epoch`` and ``step`` have no best value.
    """
    leaf = name.rsplit("/", 1)[-1] if "/" in name else name
    if name.startswith(_FINAL_ONLY_PREFIXES) or leaf in ("epoch", "step"):
        return None
    lowered = name.lower()
    if any(word in lowered for word in _MIN_WORDS):
        return "min"
    return "max"


def _merge_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per step: Lightning writes train, validation and lr rows of a step separately."""
    if frame.empty:
        return pd.DataFrame(columns=["epoch"], index=pd.Index([], name="step"))
    if "step" not in frame.columns:
        frame = frame.assign(step=range(len(frame)))
    frame = frame.dropna(subset=["step"])
    frame = frame.assign(step=frame["step"].astype("int64"))
    # A resumed run may repeat steps: the newest value of each metric wins.
    merged = frame.groupby("step", sort=True).last()
    if "epoch" not in merged.columns:
        merged["epoch"] = float("nan")
    # Rows without an epoch (the lr monitor logs at the start of an epoch) belong to the
    # epoch of the next row that has one.
    epoch = pd.to_numeric(merged["epoch"], errors="coerce").bfill().ffill()
    merged["epoch"] = epoch.astype("Int64") if epoch.notna().all() else epoch
    columns = ["epoch"] + sorted(c for c in merged.columns if c != "epoch")
    merged = merged[columns]
    merged.index.name = "step"
    return merged


def _history_from_csv(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return _merge_rows(pd.DataFrame())
    return _merge_rows(pd.read_csv(path))


def _history_from_wandb(run: Any) -> pd.DataFrame:
    rows = list(run.scan_history())
    frame = pd.DataFrame.from_records(rows)
    if frame.empty:
        return _merge_rows(frame)
    if "trainer/global_step" in frame.columns:
        frame = frame.rename(columns={"trainer/global_step": "step"})
    elif "_step" in frame.columns:
        frame = frame.rename(columns={"_step": "step"})
    frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("_")])
    # W&B history may hold media (dicts); keep numbers only.
    numeric = {c: pd.to_numeric(frame[c], errors="coerce") for c in frame.columns}
    frame = pd.DataFrame(
        {c: v for c, v in numeric.items() if v.notna().any() or c in ("step", "epoch")}
    )
    return _merge_rows(frame)


def load_history(run: Any, api: Any = None) -> pd.DataFrame:
    """The metrics of one run, one row per step.

    Args:
        run: a run folder, its ``metrics.csv``, a row of :func:`load_runs` (a
            :class:`pandas.Series`/dict with ``run_dir`` or, for W&B rows, ``wandb_path``), or
            a ``wandb`` API run object.
        api: the ``wandb.Api()`` to fetch a W&B row's run with (default: a new one).

    Returns:
        A :class:`~pandas.DataFrame` indexed by ``step`` (the trainer's global step), with an
        ``epoch`` column and one column per metric. Lightning writes training, validation and
        learning-rate values of the same step on separate CSV lines; they are merged into one
        row (for a resumed run that repeats steps the newest value wins). Epoch-level
        metrics (``val/acc``, ``train/loss_epoch``) are non-null on the last step of each
        epoch: ``history.dropna(subset=["val/acc"])`` gives one row per epoch.
    """
    if hasattr(run, "scan_history"):
        return _history_from_wandb(run)
    if isinstance(run, (Mapping, pd.Series)):
        run_dir = run.get("run_dir")
        if isinstance(run_dir, str) and run_dir and (Path(run_dir) / "metrics.csv").is_file():
            return _history_from_csv(Path(run_dir) / "metrics.csv")
        path = run.get("wandb_path")
        if isinstance(path, str) and path:
            wandb_run = _WANDB_RUNS.get(path)
            if wandb_run is None:
                wandb_run = _wandb_api(api).run(path)
            return _history_from_wandb(wandb_run)
        raise ValueError(
            f"run {run.get('run')!r} has neither a run folder with metrics.csv nor a W&B path"
        )
    path = Path(run)
    return _history_from_csv(path if path.suffix == ".csv" else path / "metrics.csv")


def _summarise(history: pd.DataFrame, modes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``best/<metric>``, ``final/<metric>``, ``epochs`` and ``steps`` of a history."""
    modes = dict(modes or {})
    row: dict[str, Any] = {}
    for column in history.columns:
        if column == "epoch":
            continue
        values = pd.to_numeric(history[column], errors="coerce").dropna()
        if values.empty:
            continue
        row[f"final/{column}"] = float(values.iloc[-1])
        mode = modes.get(column, metric_mode(column))
        if mode == "min":
            row[f"best/{column}"] = float(values.min())
        elif mode == "max":
            row[f"best/{column}"] = float(values.max())
    if len(history):
        epochs = pd.to_numeric(history["epoch"], errors="coerce").dropna()
        row["epochs"] = int(epochs.max()) + 1 if not epochs.empty else None
        row["steps"] = int(history.index.max())
    return row


# -- local runs --------------------------------------------------------------------------------


def _run_dir(run: Union[PathLike, Mapping[str, Any]]) -> Path:
    if isinstance(run, (Mapping, pd.Series)):
        return Path(run["run_dir"])
    path = Path(run)
    return path.parent if path.is_file() else path


def find_runs(root: PathLike) -> list[Path]:
    """Run folders at or below ``root`` (:func:`~dck_lightning.run_folder.is_run_folder`).

    Folders inside a run (``wandb/``, ``checkpoints/``) and W&B run folders are not searched.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"no runs folder {root} (train with `dck fit --run.root {root}` first)"
        )
    if is_run_folder(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        path = Path(dirpath)
        if is_run_folder(path):
            found.append(path)
            dirnames[:] = []  # a run folder holds no further runs
            continue
        # A W&B folder outside a run folder holds run-*/files/config.yaml: not runs either.
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith((".", "__pycache__", "latest-run")) and not _WANDB_RUN_DIR.match(d)
        )
    return sorted(found)


def _natural_key(path: Path) -> tuple:
    """``version_10`` after ``version_9``."""
    parts = []
    for part in path.parts:
        head, _, tail = part.rpartition("_")
        parts.append((head, int(tail), "") if tail.isdigit() else (part, -1, part))
    return tuple(parts)


def find_checkpoint(run_or_root: PathLike, which: str = "best") -> Path:
    """A checkpoint of a run folder, or of the newest run below a folder of runs.

    Args:
        run_or_root: a run folder, or a folder holding runs (the run whose checkpoint was
            written last is taken), or a ``.ckpt`` file (returned as is).
        which: ``"best"`` (the ``best-*.ckpt``; the last checkpoint when there is none) or
            ``"last"`` (``last.ckpt`` or a newer ``hpc_ckpt_N.ckpt``), see
            :class:`~dck_lightning.run_folder.RunFolder`.
    """
    path = Path(run_or_root)
    if path.suffix == ".ckpt":
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {path}")
        return path
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    run = newest_run(map(RunFolder, find_runs(path)), which)
    if run is None:
        raise FileNotFoundError(f"no checkpoint in {path} (or in the runs below it)")
    return run.checkpoint(which)


def _task_attributes(class_path: str | None) -> tuple[str | None, dict[str, str]]:
    """The task's ``monitor`` and ``{monitor: mode}`` from its class path (best effort)."""
    if not class_path or "." not in class_path:
        return None, {}
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except Exception:  # the class may live in code that is not installed here
        return None, {}
    monitor, mode = getattr(cls, "monitor", None), getattr(cls, "mode", None)
    return monitor, ({monitor: mode} if monitor and mode in ("min", "max") else {})


def _local_row(run_dir: Path, modes: Mapping[str, str] | None) -> dict[str, Any]:
    folder = RunFolder(run_dir)
    command, status = folder.outcome()
    config = folder.config_of("fit") if command == "fit" else folder.config()
    flat = flatten_config(config)
    monitor, task_modes = _task_attributes(flat.get("model.class_path"))
    best, last = folder.best, folder.last
    row: dict[str, Any] = {
        "run": f"{run_dir.parent.name}/{run_dir.name}",
        "source": "local",
        "command": command,
        "status": status,
        "run_dir": str(run_dir.resolve()),
        "wandb_id": folder.wandb_run_id(),
        "monitor": monitor,
        "best_checkpoint": str(best) if best else None,
        "last_checkpoint": str(last) if last else None,
    }
    row.update(flat)
    row.update(_summarise(load_history(run_dir), {**task_modes, **(modes or {})}))
    return row


# -- W&B ---------------------------------------------------------------------------------------


def _wandb_api(api: Any) -> Any:
    if api is not None:
        return api
    import wandb

    return wandb.Api()


def _artifact_name(artifact: Any) -> str:
    for attribute in ("qualified_name", "name"):
        value = getattr(artifact, attribute, None)
        if value:
            return str(value)
    return str(artifact)


def _wandb_checkpoints(run: Any) -> dict[str, str | None]:
    """Model artifacts logged by the run (``log_model``): the ``best`` and ``latest`` aliases."""
    found: dict[str, str | None] = {"best": None, "last": None}
    try:
        artifacts = list(run.logged_artifacts())
    except Exception:  # no artifacts, no permission, an old server: not worth failing for
        return found
    for artifact in artifacts:
        if getattr(artifact, "type", "model") != "model":
            continue
        aliases = set(getattr(artifact, "aliases", []) or [])
        if "best" in aliases:
            found["best"] = _artifact_name(artifact)
        if "latest" in aliases or found["last"] is None:
            found["last"] = _artifact_name(artifact)
    if found["best"] is None:
        found["best"] = found["last"]
    return found


#: Top-level keys of the config the CLI writes (``config.yaml``).
_CLI_KEYS = {
    "seed_everything", "trainer", "model", "data", "run", "ckpt_path", "weights_only", "config",
    "optimizer", "lr_scheduler",
}  # fmt: skip


def _cli_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A W&B run's config in the shape of the CLI's ``config.yaml``.

    Besides the resolved CLI config (``trainer``, ``model``, ``data``…, saved by
    :class:`~dck_lightning.callbacks.SaveRunConfig`) the W&B config holds W&B's own keys
    (``_wandb``) and the hyperparameters Lightning logs at the top level: the task's and the
    DataModule's init arguments (``backbone``, ``num_classes``, ``image_size``…), which
    repeat ``model.init_args.*`` / ``data.init_args.*``. They are dropped. When the task's
    ``model`` hyperparameter (a string, e.g. ``"dcb_small"``) has replaced the CLI's ``model``
    section, the section is rebuilt from the task's hyperparameters (``model.init_args.*``;
    ``model.class_path`` is then unknown). Configs not written by the CLI are kept as they are.
    """
    config = {k: v for k, v in config.items() if not str(k).startswith("_")}
    if not isinstance(config.get("trainer"), Mapping):
        return config
    linked = {"num_classes", "in_channels"}  # linked from the DataModule by the CLI
    data = config.get("data")
    data_args = (
        set(data["init_args"])
        if isinstance(data, Mapping) and isinstance(data.get("init_args"), Mapping)
        else set()
    )
    model = config.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("init_args"), Mapping):
        repeated = set(model["init_args"]) | data_args | linked
        return {k: v for k, v in config.items() if k in _CLI_KEYS or k not in repeated}
    task_args = {
        k: v for k, v in config.items() if k not in _CLI_KEYS and k not in data_args | linked
    }
    if model is not None:
        task_args["model"] = model
    out = {k: v for k, v in config.items() if k in _CLI_KEYS and k != "model"}
    out["model"] = {"init_args": task_args}
    return out


def _wandb_row(run: Any, modes: Mapping[str, str] | None) -> dict[str, Any]:
    flat = flatten_config(_cli_config(dict(run.config)))
    monitor, task_modes = _task_attributes(flat.get("model.class_path"))
    path = "/".join(run.path) if isinstance(run.path, (list, tuple)) else str(run.path)
    _WANDB_RUNS[path] = run
    # The run folder it was trained in, when that folder is on this machine too.
    run_dir = None
    root, name = flat.get("run.root"), run.name or ""
    if isinstance(root, str) and name and (Path(root) / name / "metrics.csv").is_file():
        run_dir = str((Path(root) / name).resolve())
    checkpoints = _wandb_checkpoints(run)
    history = _history_from_wandb(run)
    row: dict[str, Any] = {
        "run": name or run.id,
        "source": "wandb",
        "command": "fit" if any(str(c).startswith("train/") for c in history.columns) else None,
        "status": _WANDB_STATES.get(str(getattr(run, "state", "")), None),
        "run_dir": run_dir,
        "wandb_id": run.id,
        "wandb_path": path,
        "monitor": monitor,
        "best_checkpoint": checkpoints["best"],
        "last_checkpoint": checkpoints["last"],
    }
    row.update(flat)
    row.update(_summarise(history, {**task_modes, **(modes or {})}))
    return row


# -- the table ---------------------------------------------------------------------------------


def _order_columns(frame: pd.DataFrame) -> pd.DataFrame:
    meta = [c for c in (*RUN_COLUMNS, "wandb_path") if c in frame.columns]
    metrics = sorted(c for c in frame.columns if c.startswith(("best/", "final/")))
    config = sorted(c for c in frame.columns if c not in meta and c not in metrics)
    return frame[meta + metrics + config]


def _included(include: Union[str, Iterable[str]]) -> Optional[tuple[set[str], set[str]]]:
    """``(commands, statuses)`` an ``include`` argument asks for (an empty set: any), or
    ``None`` for ``"all"``."""
    words = {include} if isinstance(include, str) else set(include)
    if "all" in words:
        return None
    unknown = words - set(_COMMANDS) - set(RUN_STATUSES)
    if unknown:
        raise ValueError(
            f"include: unknown {sorted(unknown)}; give 'all' or commands {_COMMANDS} and "
            f"statuses {RUN_STATUSES}"
        )
    return words & set(_COMMANDS), words & set(RUN_STATUSES)


def _row_included(row: Mapping[str, Any], wanted: Optional[tuple[set[str], set[str]]]) -> bool:
    if wanted is None:
        return True
    commands, statuses = wanted
    status = row.get("status")
    return (not commands or row.get("command") in commands) and (
        not statuses or status is None or status in statuses
    )


def select_runs(
    runs: pd.DataFrame, include: Union[str, Iterable[str]] = DEFAULT_INCLUDE
) -> pd.DataFrame:
    """The rows of ``runs`` whose ``command`` and ``status`` ``include`` asks for (see the
    module docstring); a row of unknown status passes the status test."""
    wanted = _included(include)
    if wanted is None or runs.empty:
        return runs
    commands, statuses = wanted
    keep = pd.Series(True, index=runs.index)
    if commands and "command" in runs:
        keep &= runs["command"].isin(commands)
    if statuses and "status" in runs:
        keep &= runs["status"].isin(statuses) | runs["status"].isna()
    return runs[keep]


def load_runs(
    root_or_paths: Union[PathLike, Iterable[PathLike], None] = None,
    *,
    wandb_project: str | None = None,
    api: Any = None,
    filters: Mapping[str, Any] | None = None,
    modes: Mapping[str, str] | None = None,
    include: Union[str, Iterable[str]] = DEFAULT_INCLUDE,
) -> pd.DataFrame:
    """One row per run: flattened config, best and final metrics, checkpoints, W&B id.

    Args:
        root_or_paths: a folder of runs (searched recursively, e.g. ``"runs"``), one run
            folder, or a list of either.
        wandb_project: ``"entity/project"``: also read the project's runs from W&B
            (``wandb.Api().runs``); needs network and credentials.
        api: the W&B API object to use (default ``wandb.Api()``); tests pass a fake.
        filters: W&B run filters (MongoDB-style, e.g. ``{"state": "finished"}``).
        modes: ``{metric: "min" | "max"}`` overriding :func:`metric_mode` for ``best/``.
        include: which runs (see the module docstring): default :data:`DEFAULT_INCLUDE`, the
            fits that did not fail; ``"all"``: every run folder.

    Returns:
        A :class:`~pandas.DataFrame` with the columns described in the module docstring,
        ordered: run columns, metrics, config. Local runs are sorted by folder.
    """
    _included(include)  # a bad value fails before anything is read
    if root_or_paths is None and wandb_project is None:
        raise ValueError(
            "give a runs folder (or run folders) and/or wandb_project='entity/project'"
        )
    rows: list[dict[str, Any]] = []
    if root_or_paths is not None:
        paths = (
            [root_or_paths]
            if isinstance(root_or_paths, (str, os.PathLike))
            else list(root_or_paths)
        )
        run_dirs: list[Path] = []
        for path in paths:
            run_dirs.extend(d for d in find_runs(path) if d not in run_dirs)
        rows.extend(_local_row(d, modes) for d in sorted(run_dirs, key=_natural_key))
    if wandb_project is not None:
        wandb_api = _wandb_api(api)
        runs = wandb_api.runs(wandb_project, filters=dict(filters) if filters else None)
        rows.extend(_wandb_row(run, modes) for run in runs)
    rows = [row for row in rows if _row_included(row, _included(include))]
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame(columns=list(RUN_COLUMNS))
    return _order_columns(frame).reset_index(drop=True)


def varying_columns(
    runs: pd.DataFrame, prefix: str = "", include: Union[str, Iterable[str]] = DEFAULT_INCLUDE
) -> list[str]:
    """Config columns (not run, metric or path columns) whose value differs between runs.

    The ablation switches of a table, e.g. ``["model.init_args.backbone.init_args.dck",
    "seed_everything"]``. Only the runs ``include`` asks for are compared (default: the fits
    that did not fail, as :func:`load_runs`; a table loaded with ``include="all"`` still
    compares only those). The ``run.*`` section (where and how a run logs), ``config`` and
    ``ckpt_path`` are left out: they never change the model.
    """
    runs = select_runs(runs, include)
    skip = set(RUN_COLUMNS) | {"wandb_path", "config", "ckpt_path"}
    out = []
    for column in runs.columns:
        if (
            column in skip
            or column.startswith(("best/", "final/", "run."))
            or not column.startswith(prefix)
        ):
            continue
        values = runs[column].map(lambda v: "<missing>" if _is_missing(v) else v)
        try:
            distinct = values.nunique(dropna=False)
        except TypeError:  # unhashable leftovers
            distinct = values.astype(str).nunique()
        if distinct > 1:
            out.append(column)
    return out


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def summary_table(
    runs: pd.DataFrame, metrics: Union[str, Iterable[str], None] = None
) -> pd.DataFrame:
    """The columns worth reading: run, the switches that vary, best/final metrics, checkpoint.

    Args:
        runs: from :func:`load_runs`.
        metrics: metric names (``"val/acc"``); default: each run's ``monitor``.
    """
    if metrics is None:
        metrics = [m for m in runs.get("monitor", pd.Series(dtype=object)).dropna().unique()]
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    wanted = ["run", *varying_columns(runs)]
    for metric in metrics:
        wanted += [f"best/{metric}", f"final/{metric}"]
    wanted += ["epochs", "best_checkpoint"]
    return runs[[c for c in dict.fromkeys(wanted) if c in runs.columns]]

"""``dck sweep``: a grid of configs × seeds as ordinary run folders, and one table.

::

    dck sweep -c configs/mnist_seed.yaml --grid model.init_args.backbone.init_args.adaptive=[true,false] \\
        --seeds 5 --jobs 2 -- --trainer.max_epochs 2
    dck sweep configs/sweeps/cifar10_dcb_parts.yaml       # the same, written as a sweep file

Every combination of the ``--grid`` values (and of the sweep file's named ``variants``) is run
once per seed as ``dck fit`` then ``dck test`` (of its best checkpoint) in one run folder::

    runs/<sweep>/<combination>/seed_<s>/     config.yaml, metrics.csv, checkpoints/, wandb/,
                                             sweep_run.json (state, exit codes, wall times),
                                             sweep_fit.log, sweep_test.log

with W&B ``group`` = the sweep and ``tags`` = the switch values. ``--jobs J`` runs J at a
time, each a subprocess with one torch thread. A re-run skips finished runs and restarts the
others (``dck fit`` resumes a run folder from its own ``last.ckpt``); a run whose command has
changed since it finished is refused, never overwritten. At the end ``sweep.csv``,
``sweep.md`` and ``sweep.png`` say per combination: the test metric's mean ± std and 95 %
interval over the seeds (Student's t), parameters, GFLOPs per image, training images/s and
wall time; failed runs are listed as failed.

``--dry-run`` prints the plan, ``--slurm`` writes a job-array script instead of running,
``--wandb`` a W&B sweep config, ``--summary`` only writes the table from what is there.
The run folders are read back through :func:`dck_lightning.analysis.load_runs`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

__all__ = [
    "PlannedRun",
    "SweepSpec",
    "main",
    "plan_runs",
    "run_sweep",
    "seed_statistics",
    "summarise",
]

#: The file each run folder keeps for the sweep.
STATUS_FILE = "sweep_run.json"
FINISHED, FAILED, PENDING, INTERRUPTED = "finished", "failed", "pending", "interrupted"
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class _SwitchLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only ``true``/``false``. PyYAML (YAML 1.1) also reads
    ``on``/``off``/``yes``/``no`` as booleans, so ``dck=[adaptive,off]`` gave the DCK switch
    ``false``; here they stay strings, and ``dck fit`` reads them as the key's type does
    (``"off"`` for a string switch, ``false`` for a ``bool``)."""


_SwitchLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SwitchLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """``text`` as YAML, ``on``/``off``/``yes``/``no`` kept as strings (:class:`_SwitchLoader`)."""
    return yaml.load(text, Loader=_SwitchLoader)  # noqa: S506 - a SafeLoader subclass


# -- the sweep ---------------------------------------------------------------------------------


@dataclass
class SweepSpec:
    """What to run.

    Args:
        name: the sweep's folder under ``root`` and its W&B group.
        configs: ``-c`` files of every run, in order.
        grid: dotted config key → values; every combination is run.
        variants: name → ``{dotted key: value}``: named settings crossed with the grid (for
            ablations that are not a grid, e.g. "all on", "GCM off", "plain ResNet").
        seeds: ``seed_everything`` of each repetition.
        overrides: dotted key → value given to every run.
        args: further command-line arguments given to every run.
        metric: the reported test metric (default: the task's monitor on the test set).
        root: folder that holds the sweep folder.
    """

    name: str
    configs: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [1])
    overrides: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    metric: Optional[str] = None
    root: str = "runs"

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "configs": list(self.configs),
            "grid": dict(self.grid),
            "variants": dict(self.variants),
            "seeds": list(self.seeds),
            "overrides": dict(self.overrides),
            "args": list(self.args),
            "metric": self.metric,
            "root": self.root,
        }

    @classmethod
    def from_file(cls, path: Path) -> SweepSpec:
        """Read a sweep file (the keys of :meth:`to_dict`; ``seeds`` may be a count)."""
        data = load_yaml(Path(path).read_text()) or {}
        if not isinstance(data, Mapping):
            raise SweepError(f"{path}: a sweep file is a mapping of name, configs, grid, ...")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SweepError(
                f"{path}: unknown key(s) {unknown}; a sweep file takes {sorted(known)}"
            )
        data = dict(data)
        data.setdefault("name", Path(path).stem)
        data["seeds"] = _seed_list(data.get("seeds", 1))
        for key in ("configs", "args"):
            if isinstance(data.get(key), str):
                data[key] = [data[key]]
        return cls(**data)


class SweepError(ValueError):
    """A sweep that cannot run as asked (bad spec, or a run folder made with other settings)."""


def _seed_list(seeds: Any) -> list[int]:
    if isinstance(seeds, int):
        if seeds < 1:
            raise SweepError(f"seeds must be at least 1, got {seeds}")
        return list(range(1, seeds + 1))
    return [int(s) for s in seeds]


def _cli_value(value: Any) -> str:
    """A value as the CLI parses it (YAML/JSON)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _slug(value: Any) -> str:
    """A value as it reads in a folder name and a W&B tag: ``[3, 4]`` → ``3-4``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "-".join(_slug(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return "-".join(f"{k}_{_slug(v)}" for k, v in value.items())
    text = str(value)
    if isinstance(value, str) and _IMPORT_PATH.fullmatch(value):  # a class path: its name
        text = value.rsplit(".", 1)[-1]
    return "".join(c if c.isalnum() or c in "._-+" else "_" for c in text)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that tells it apart: ``...backbone.init_args.dck`` → ``dck``."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for length in range(1, len(parts) + 1):
            suffix = ".".join(parts[-length:])
            if sum(k == suffix or k.endswith("." + suffix) for k in keys) == 1:
                names[key] = suffix.replace(".init_args", "")
                break
    return names


@dataclass
class PlannedRun:
    """One combination × seed."""

    index: int
    combination: str
    switches: dict[str, Any]
    seed: int
    run_dir: Path
    tags: list[str]

    def command(self, spec: SweepSpec, subcommand: str) -> list[str]:
        """``python -m dck_lightning.cli <subcommand> ...`` of this run."""
        args = [sys.executable, "-m", "dck_lightning.cli", subcommand]
        for config in spec.configs:
            args += ["-c", str(config)]
        for key, value in spec.overrides.items():
            args += [f"--{key}", _cli_value(value)]
        args += list(spec.args)
        for key, value in self.switches.items():  # last: the switches win
            args += [f"--{key}", _cli_value(value)]
        args += ["--seed_everything", str(self.seed)]
        args += ["--run.root", str(self.run_dir.parent.parent), "--run.name", self.combination]
        args += ["--run.version", self.run_dir.name]
        if subcommand == "fit":
            args += ["--trainer.callbacks+", "dck_lightning.callbacks.EpochThroughput"]
        else:  # the checkpoint chosen on validation, or the last one if nothing was validated
            best = any((self.run_dir / "checkpoints").glob("best-*.ckpt"))
            args += ["--ckpt_path", "best" if best else "last"]
        return args

    def fingerprint(self, spec: SweepSpec) -> str:
        """What makes this run this run (its fit command)."""
        return hashlib.sha256(json.dumps(self.command(spec, "fit")[1:]).encode()).hexdigest()[:16]


def plan_runs(spec: SweepSpec) -> list[PlannedRun]:
    """Every variant × grid combination × seed, in a stable order: seed-major (every
    combination of the first seed, then of the second, ...), so runs of different
    combinations alternate and share whatever else the machine is doing."""
    variants = spec.variants or {"": {}}
    grid_keys = list(spec.grid)
    names = short_names(grid_keys)
    for key, values in spec.grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise SweepError(f"grid values of {key} must be a non-empty list, got {values!r}")
    combinations = []
    for (variant, settings), values in itertools.product(
        variants.items(), itertools.product(*spec.grid.values())
    ):
        switches = {**dict(settings), **dict(zip(grid_keys, values))}
        parts = [variant] if variant else []
        parts += [f"{names[k]}={_slug(v)}" for k, v in zip(grid_keys, values)]
        combinations.append((",".join(parts) or "default", switches, parts or ["default"]))
    runs = []
    for seed in spec.seeds:  # seed-major: a change of machine load hits every combination alike
        for combination, switches, tags in combinations:
            run_dir = spec.folder / combination / f"seed_{seed}"
            runs.append(PlannedRun(len(runs), combination, switches, seed, run_dir, tags))
    if len({r.run_dir for r in runs}) != len(runs):
        raise SweepError("two combinations map to the same folder: give distinct variant names")
    return runs


# -- running -----------------------------------------------------------------------------------


def read_status(run: PlannedRun) -> dict[str, Any]:
    path = run.run_dir / STATUS_FILE
    if not path.is_file():
        return {"state": PENDING}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {"state": PENDING}


def _write_status(run: PlannedRun, status: Mapping[str, Any]) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run.run_dir / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(status, indent=1, sort_keys=True) + "\n")
    tmp.replace(run.run_dir / STATUS_FILE)


def code_version() -> str:
    """The commit of the ``dck_lightning`` code the runs use (``+dirty`` with uncommitted
    changes to the package), or ``"unknown"`` outside a git checkout."""
    package = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def child_environment(spec: SweepSpec, run: PlannedRun) -> dict[str, str]:
    """One torch thread per run; the W&B group and tags of the run."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["WANDB_RUN_GROUP"] = spec.name
    env["WANDB_TAGS"] = ",".join([*run.tags, f"seed={run.seed}"])[:1000]
    env.pop("DCK_RUN_DIR", None)
    return env


class _Job:
    """A run's fit, then its test, as subprocesses."""

    def __init__(
        self, spec: SweepSpec, run: PlannedRun, previous: Mapping[str, Any], code: str = "unknown"
    ) -> None:
        self.spec, self.run = spec, run
        if previous.get("state") == FAILED and previous.get("fingerprint") != run.fingerprint(spec):
            # Retried with other settings: the folder must show this attempt's, not a mix.
            from .run_folder import RunFolder

            RunFolder(run.run_dir).archive_attempt()
        codes = [c for c in previous.get("code", []) if c != code]
        self.status: dict[str, Any] = {
            "state": "running",
            "fingerprint": run.fingerprint(spec),
            "attempts": int(previous.get("attempts", 0)) + 1,
            "fit_seconds": float(previous.get("fit_seconds", 0.0)),
            "test_seconds": 0.0,
            "code": [*codes, code],  # every code version this run has trained with
            "load_sum": float(previous.get("load_sum", 0.0)),
            "load_samples": int(previous.get("load_samples", 0)),
        }
        self.process: Optional[subprocess.Popen] = None
        self.stage = ""
        self.started = 0.0
        self._start("fit")

    def _start(self, stage: str) -> None:
        self.stage = stage
        command = self.run.command(self.spec, stage)
        self.status[f"{stage}_command"] = shlex.join(command)
        self.status["stage"] = stage
        _write_status(self.run, self.status)
        log = open(self.run.run_dir / f"sweep_{stage}.log", "a")  # noqa: SIM115 - closed in poll
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        self._log = log
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_environment(self.spec, self.run),
            start_new_session=True,  # a terminal's Ctrl-C reaches the sweep, which stops them
        )

    def sample_load(self, load: float) -> None:
        """Add one reading of the machine's 1-minute load average while the run runs."""
        self.status["load_sum"] += load
        self.status["load_samples"] += 1

    def poll(self) -> bool:
        """Advance; ``True`` once the run is done (finished or failed)."""
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return False
        self._log.close()
        self.status[f"{self.stage}_seconds"] += time.perf_counter() - self.started
        self.status[f"{self.stage}_returncode"] = code
        if code == 0 and self.stage == "fit":
            self._start("test")
            return False
        self.status["state"] = FINISHED if code == 0 else FAILED
        _write_status(self.run, self.status)
        return True

    def terminate(self) -> None:
        """Send the child SIGTERM (``dck`` then writes ``last.ckpt`` and exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, deadline: Optional[float] = None) -> None:
        """Stop it (SIGTERM, then wait for it until ``deadline``, a :func:`time.monotonic`
        time — default :data:`STOP_TIMEOUT` from now — and SIGKILL after); the run is
        ``interrupted``."""
        self.terminate()
        if self.process is not None:
            wait = (
                time.monotonic() + STOP_TIMEOUT if deadline is None else deadline
            ) - time.monotonic()
            try:
                self.process.wait(timeout=max(wait, 0.1))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self.status["state"] = INTERRUPTED
        _write_status(self.run, self.status)


def pending_runs(spec: SweepSpec, runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The runs still to do; refuses a finished run whose command has changed since."""
    todo = []
    for run in runs:
        status = read_status(run)
        if status.get("state") == FINISHED:
            if status.get("fingerprint") != run.fingerprint(spec):
                raise SweepError(
                    f"{run.run_dir} finished with other settings than this sweep now gives it "
                    f"(configs, overrides or arguments changed): its results are kept; give the "
                    f"sweep another --name, or move {spec.folder} away"
                )
            continue
        todo.append(run)
    return todo


#: Seconds between two readings of the load average of the machine (kept per run).
LOAD_INTERVAL = 10.0
#: Seconds a stopped sweep waits for its runs to save ``last.ckpt`` and exit before SIGKILL.
STOP_TIMEOUT = 120.0


class SweepInterrupted(KeyboardInterrupt):
    """The sweep got SIGTERM or SIGINT (``signum``); its runs were stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame: Any) -> None:
    raise SweepInterrupted(signum)


def _stop_jobs(jobs: Sequence[_Job]) -> None:
    """SIGTERM to every running child at once, then wait for each (see :meth:`_Job.stop`);
    further signals are ignored meanwhile, so the children are never orphaned."""
    handlers = _set_handlers(signal.SIG_IGN)
    try:
        for job in jobs:
            job.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for job in jobs:
            job.stop(deadline)
    finally:
        _restore_handlers(handlers)


def _set_handlers(handler: Any) -> dict[int, Any]:
    """Set ``handler`` for SIGTERM and SIGINT (main thread only); returns the previous ones."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back inside the block (delivered at its end)."""
    signals = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _restore_handlers(handlers: Mapping[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def run_sweep(spec: SweepSpec, runs: Sequence[PlannedRun], jobs: int = 1) -> None:
    """Run ``runs`` (``jobs`` at a time); progress lines on stdout. Each run's status keeps
    the code version it ran (:func:`code_version`) and the machine's mean 1-minute load
    average while it ran (read every :data:`LOAD_INTERVAL` seconds).

    SIGTERM or SIGINT (Ctrl-C) to the sweep stops its running children first — SIGTERM to
    each, so ``dck fit`` saves ``last.ckpt``; the sweep waits for them (SIGKILL after
    :data:`STOP_TIMEOUT` s) and marks them ``interrupted`` — then raises
    :class:`SweepInterrupted`. The children run in sessions of their own, so a terminal's
    Ctrl-C reaches only the sweep, which passes it on this way."""
    queue = list(runs)
    active: list[_Job] = []
    done = 0
    code = code_version()
    next_load = time.monotonic()
    handlers = _set_handlers(_interrupt)
    try:
        while queue or active:
            while queue and len(active) < jobs:
                run = queue.pop(0)
                print(f"[{done + len(active) + 1}/{len(runs)}] {run.run_dir}", flush=True)
                with _signals_blocked():  # a child started is a child in `active`
                    active.append(_Job(spec, run, read_status(run), code))
            time.sleep(0.2)
            if time.monotonic() >= next_load:
                load = os.getloadavg()[0]
                for job in active:
                    job.sample_load(load)
                next_load = time.monotonic() + LOAD_INTERVAL
            for job in [j for j in active if j.poll()]:
                active.remove(job)
                done += 1
                state = job.status["state"]
                where = job.run.run_dir / f"sweep_{job.stage}.log"
                extra = (
                    ""
                    if state == FINISHED
                    else f" ({job.stage} exit {job.status[f'{job.stage}_returncode']}, see {where})"
                )
                print(f"  {state}: {job.run.run_dir}{extra}", flush=True)
    except KeyboardInterrupt:
        _stop_jobs(active)
        raise
    finally:
        _restore_handlers(handlers)


# -- the table ---------------------------------------------------------------------------------


def seed_statistics(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """``n``, ``mean``, ``std`` (sample, ddof 1) and the ``confidence`` interval of the mean,
    ``mean ± t_{(1+c)/2, n-1} · std / √n`` (Student's t; NaN below two values)."""
    from scipy import stats

    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(clean)
    mean = sum(clean) / n if n else math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1)) if n > 1 else math.nan
    half = (
        float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n) if n > 1 else math.nan
    )
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def _metric_name(spec: SweepSpec, table: pd.DataFrame) -> str:
    if spec.metric:
        return spec.metric
    monitors = table.get("monitor", pd.Series(dtype=object)).dropna()
    if monitors.empty:
        return "test/acc"
    return "test/" + str(monitors.iloc[0]).split("/", 1)[-1]


def _median_or_nan(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.median()) if len(values) else math.nan


def _median_images_per_sec(run_dir: Path) -> Optional[float]:
    """The median of a run's per-epoch training images/s (less at the mercy of one epoch
    that shared the machine with something else than the last epoch's value)."""
    from .analysis import load_history

    if not (run_dir / "metrics.csv").is_file():
        return None
    history = load_history(run_dir)
    if "train/images_per_sec" not in history.columns:
        return None
    values = pd.to_numeric(history["train/images_per_sec"], errors="coerce").dropna()
    return float(values.median()) if len(values) else None


def summarise(
    spec: SweepSpec, runs: Sequence[PlannedRun]
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """``(per-combination table, per-run table, metric)`` from the run folders (read with
    :func:`~dck_lightning.analysis.load_runs`) and the runs' sweep states."""
    from .analysis import load_runs

    loaded = load_runs(spec.folder, include="all") if spec.folder.is_dir() else pd.DataFrame()
    by_dir = (
        {Path(d).resolve(): row for d, (_, row) in zip(loaded["run_dir"], loaded.iterrows())}
        if len(loaded)
        else {}
    )
    metric = _metric_name(spec, loaded)
    rows = []
    for run in runs:
        status = read_status(run)
        row = by_dir.get(run.run_dir.resolve(), {})
        get = row.get
        state = status.get("state", PENDING)
        value = get(f"final/{metric}") if state == FINISHED else None
        rows.append({
            "combination": run.combination, "seed": run.seed, "state": state,
            metric: value, "parameters": get("final/model/parameters"),
            "gflops": get("final/model/gflops"),
            "train_images_per_sec": _median_images_per_sec(run.run_dir),
            "wall_seconds": status.get("fit_seconds", 0.0) + status.get("test_seconds", 0.0)
            if state in (FINISHED, FAILED) else None,
            "load_average": status["load_sum"] / status["load_samples"]
            if status.get("load_samples") else None,
            "code": " ".join(status.get("code", [])) or None,
            "failed_stage": status.get("stage") if state == FAILED else None,
            "returncode": status.get(f"{status.get('stage')}_returncode") if state == FAILED else None,
            "run_dir": str(run.run_dir),
        })  # fmt: skip
    per_run = pd.DataFrame(rows)
    summary = []
    for combination, group in per_run.groupby("combination", sort=False):
        finished = group[group["state"] == FINISHED]
        stats = seed_statistics(pd.to_numeric(finished[metric], errors="coerce").tolist())
        failed = group[group["state"] == FAILED]
        summary.append({
            "combination": combination,
            "runs": len(group), "finished": len(finished), "failed": len(failed),
            f"{metric} mean": stats["mean"], f"{metric} std": stats["std"],
            "ci95 low": stats["ci_low"], "ci95 high": stats["ci_high"],
            "parameters": _median_or_nan(group["parameters"]),
            "GFLOPs": _median_or_nan(group["gflops"]),
            "train images/s": _median_or_nan(finished["train_images_per_sec"]),
            "wall s per run": _median_or_nan(finished["wall_seconds"]),
            "load avg": _median_or_nan(group["load_average"]),
            "failed seeds": " ".join(str(s) for s in failed["seed"]) or "",
            "code": " ".join(sorted({c for v in group["code"].dropna() for c in v.split()})),
        })  # fmt: skip
    return pd.DataFrame(summary), per_run, metric


def _format(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column == "parameters":
        return f"{value / 1e6:.3f} M"
    if isinstance(value, float):
        short = ("train images/s", "wall s per run", "load avg")
        return f"{value:.1f}" if column in short else f"{value:.4f}"
    return str(value)


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    lines = [header, rule]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_format(row[c], c) for c in table.columns) + " |")
    return "\n".join(lines)


def write_report(spec: SweepSpec, runs: Sequence[PlannedRun], jobs: int) -> Path:
    """``sweep.csv``, ``sweep.md`` (and ``sweep.png``) in the sweep folder; returns ``sweep.md``."""
    import matplotlib.pyplot as plt

    from .analysis import plot_sweep

    table, per_run, metric = summarise(spec, runs)
    folder = spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "sweep.csv", index=False)
    per_run.to_csv(folder / "sweep_runs.csv", index=False)
    plot = ""
    finished = per_run[per_run["state"] == FINISHED]
    if pd.to_numeric(finished[metric], errors="coerce").notna().any():
        figure = plot_sweep(table, per_run, metric)
        figure.savefig(folder / "sweep.png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        plot = (
            "\n![the metric per combination (one dot per seed, mean and 95 % interval) and "
            "against training images/s](sweep.png)\n"
        )
    display = table.copy()
    display.insert(0, "combination", display.pop("combination"))
    codes = sorted({c for v in per_run["code"].dropna() for c in v.split()})
    if len(codes) <= 1:  # one code version: said once above the table
        display = display.drop(columns="code")
    code_line = (
        f"Code: `{codes[0]}`." if len(codes) == 1
        else "Code: **runs made with different code versions** (see the code column)."
        if codes else "Code: unknown."
    )  # fmt: skip
    lines = [
        f"# Sweep `{spec.name}`",
        "",
        f"{len(runs)} runs: {len(spec.seeds)} seeds ({', '.join(map(str, spec.seeds))}) × "
        f"{len(table)} combinations; configs {', '.join(f'`{c}`' for c in spec.configs) or '(embedded default)'}"
        + (f"; arguments `{shlex.join(spec.args)}`" if spec.args else "")
        + (f"; fixed `{json.dumps(spec.overrides)}`" if spec.overrides else "")
        + f"; {jobs} at a time, one torch thread each.",
        "",
        f"`{metric}` of `dck test` on each run's best checkpoint: mean ± std over the seeds "
        "that finished and the 95 % interval of the mean (Student's t). Parameters and GFLOPs "
        "per image of the model, training images/s (the median over the run's epochs), wall "
        "time per run (fit + test; runs share the machine when more than one runs at a time) "
        f"and the machine's 1-minute load average while it ran ({os.cpu_count()} CPUs here) "
        "are medians over the seeds.",
        "",
        code_line,
        "",
        markdown_table(display),
        plot,
    ]
    failed = per_run[per_run["state"].isin([FAILED, INTERRUPTED, PENDING])]
    if len(failed):
        lines += ["## Runs without a result", ""]
        for _, row in failed.iterrows():
            detail = (
                f"{row['failed_stage']} exited with {row['returncode']}, "
                f"see `{row['run_dir']}/sweep_{row['failed_stage']}.log`"
                if row["state"] == FAILED
                else row["state"]
            )
            lines.append(f"- `{row['combination']}` seed {row['seed']}: {detail}")
    (folder / "sweep.md").write_text("\n".join(lines) + "\n")
    return folder / "sweep.md"


# -- SLURM and W&B -----------------------------------------------------------------------------


def write_slurm_script(
    spec: SweepSpec, spec_file: Path, runs: Sequence[PlannedRun], jobs: int
) -> Path:
    """A job array, one task per run, at most ``jobs`` at a time; each task is ``dck sweep
    <spec> --only <index>``. Afterwards ``dck sweep <spec> --summary`` writes the table."""
    folder = spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "sweep.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --job-name={spec.name}\n"
        f"#SBATCH --array=0-{len(runs) - 1}%{jobs}\n"
        "#SBATCH --ntasks=1\n"
        "#SBATCH --cpus-per-task=1\n"
        f"#SBATCH --output={folder.resolve()}/slurm-%A_%a.out\n"
        "# One run (dck fit + dck test) per array task; a requeued or re-submitted task skips a\n"
        "# finished run and resumes an unfinished one from its last.ckpt.\n"
        f"cd {shlex.quote(str(Path.cwd()))}\n"
        "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1\n"
        f"exec {shlex.quote(sys.executable)} -m dck_lightning.sweep "
        f'{shlex.quote(str(spec_file))} --only "$SLURM_ARRAY_TASK_ID"\n'
        f"# then: dck sweep {shlex.quote(str(spec_file))} --summary\n"
    )
    script.chmod(0o755)
    return script


def write_wandb_sweep(spec: SweepSpec) -> Path:
    """A W&B sweep config (``wandb sweep <file>``; ``wandb agent`` runs ``dck fit`` per point)."""
    if spec.variants:
        raise SweepError(
            "--wandb writes grids only; run a sweep with variants here or with --slurm"
        )
    parameters = {key: {"values": list(values)} for key, values in spec.grid.items()}
    parameters["seed_everything"] = {"values": list(spec.seeds)}
    fixed = [f"--{k}={_cli_value(v)}" for k, v in spec.overrides.items()]
    config = {
        "name": spec.name,
        "method": "grid",
        "metric": {"name": (spec.metric or "val/acc").replace("test/", "val/"), "goal": "maximize"},
        "parameters": parameters,
        "command": ["dck", "fit", *itertools.chain.from_iterable(("-c", c) for c in spec.configs),
                    *fixed, *spec.args, "--run.root", str(spec.folder), "${args}"],
    }  # fmt: skip
    spec.folder.mkdir(parents=True, exist_ok=True)
    path = spec.folder / "wandb_sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- command line ------------------------------------------------------------------------------


def _parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--grid takes KEY=[v1,v2,...], got {item!r}")
        parsed = load_yaml(values)
        grid[key.lstrip("-")] = parsed if isinstance(parsed, list) else [parsed]
    return grid


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dck sweep",
        allow_abbrev=False,  # --seed is not --seeds
        description="Run a grid of configs × seeds as dck fit + dck test run folders, and "
        "write one table (sweep.csv, sweep.md) of the test metric over the seeds.",
        epilog="Arguments after -- go to every dck fit/test, e.g. -- --trainer.max_epochs 10",
    )
    p.add_argument("spec", nargs="?", help="a sweep file (YAML); command-line options add to it")
    p.add_argument("-c", "--config", action="append", default=[], help="config of every run")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=[v1,v2,...]",
        help="values of a config key, as YAML (on/off/yes/no stay words; dck fit reads them as "
        "the key's type does)",
    )
    p.add_argument("--seeds", type=int, help="seeds 1..N (default: 1, or the sweep file's)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, one torch thread each")
    p.add_argument("--name", help="sweep name (default: the sweep file's, or the config's)")
    p.add_argument("--root", help="folder of the sweep folder (default: runs)")
    p.add_argument("--metric", help="reported test metric (default: the task's, e.g. test/acc)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands")
    p.add_argument("--slurm", action="store_true", help="write a SLURM job array, run nothing")
    p.add_argument("--wandb", action="store_true", help="write a W&B sweep config, run nothing")
    p.add_argument("--summary", action="store_true", help="only write the table")
    p.add_argument("--only", type=int, help=argparse.SUPPRESS)  # one run (a SLURM array task)
    return p


def build_spec(options: argparse.Namespace, extra: Sequence[str]) -> SweepSpec:
    spec = SweepSpec.from_file(Path(options.spec)) if options.spec else None
    name = options.name or (spec.name if spec else None)
    if name is None:
        name = Path(options.config[0]).stem + "_sweep" if options.config else "default_sweep"
    if spec is None:
        spec = SweepSpec(name=name)
    spec.name = name
    spec.configs = [*spec.configs, *options.config]
    spec.grid = {**spec.grid, **_parse_grid(options.grid)}
    if options.seeds is not None:
        spec.seeds = _seed_list(options.seeds)
    spec.args = [*spec.args, *extra]
    spec.metric = options.metric or spec.metric
    spec.root = options.root or spec.root
    for config in spec.configs:
        if not Path(config).is_file():
            raise SweepError(f"config file {config} not found")
    if options.jobs < 1:
        raise SweepError(f"--jobs must be at least 1, got {options.jobs}")
    return spec


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``dck sweep``; returns the exit status (0: every run finished, 1: some failed, 2: bad
    input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    options = parser().parse_args(argv)
    try:
        spec = build_spec(options, extra)
        runs = plan_runs(spec)
        spec.folder.mkdir(parents=True, exist_ok=True)
        spec_file = spec.folder / "sweep.yaml"
        recorded = yaml.safe_dump(spec.to_dict(), sort_keys=False)
        if options.spec is None or Path(options.spec).resolve() != spec_file.resolve():
            spec_file.write_text(recorded)
        if options.wandb:
            print(
                f"W&B sweep config: {write_wandb_sweep(spec)} (wandb sweep <file>; wandb agent <id>)"
            )
            return 0
        if options.slurm:
            script = write_slurm_script(spec, spec_file, runs, options.jobs)
            print(f"SLURM job array of {len(runs)} runs: sbatch {script}")
            return 0
        if options.only is not None:
            if not 0 <= options.only < len(runs):
                raise SweepError(f"--only {options.only}: the sweep has runs 0..{len(runs) - 1}")
            runs = [runs[options.only]]
        todo = [] if options.summary else pending_runs(spec, runs)
        if options.dry_run:
            for run in runs:
                state = "pending" if run in todo else read_status(run).get("state", PENDING)
                print(f"{run.run_dir} [{state}]\n  dck {shlex.join(run.command(spec, 'fit')[3:])}")
            print(f"{len(todo)} of {len(runs)} runs to do in {spec.folder}")
            return 0
        if todo:
            run_sweep(spec, todo, options.jobs)
        if options.only is not None:
            return 0 if read_status(runs[0]).get("state") == FINISHED else 1
        report = write_report(spec, runs, options.jobs)
    except SweepError as error:
        print(f"dck sweep: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print("dck sweep: interrupted; run the same command again to continue", file=sys.stderr)
        return 128 + getattr(error, "signum", signal.SIGINT)
    print(report.read_text())
    print(f"Table: {spec.folder / 'sweep.csv'}, {report}")
    states = [read_status(run).get("state") for run in runs]
    return 0 if all(state == FINISHED for state in states) else 1


if __name__ == "__main__":
    sys.exit(main())

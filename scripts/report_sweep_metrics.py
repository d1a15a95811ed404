"""Several test metrics of a ``dck sweep``, mean ± std over the seeds, per combination.

``dck sweep`` writes one metric per table (``sweep.md``); the claims need several per run —
AP per object size, per class, IoU per size. This reads the sweep's run folders
(``runs/<sweep>/<combination>/seed_<s>``, through :func:`dck_lightning.analysis.load_runs`)
and writes one Markdown table: a row per combination, a column per metric (``mean ± std``
over the seeds, :func:`dck_lightning.sweep.seed_statistics`), then the cost the sweep logged
(parameters, GFLOPs per image, training images/s). With ``--baseline`` a second table gives,
per combination, the difference to the baseline combination *of the same seed*, mean ± std
over the seeds (a paired difference: both arms of a seed see the same data), for the metrics
the baseline has.

    python scripts/report_sweep_metrics.py runs/claim2_shapes_detection \\
        --metrics test/map_50 test/map_small test/map_medium test/map_large "test/ap/*" \\
        --baseline plain --write docs/RESULTS.md --section claim2_detection

A metric may be a shell pattern (``test/ap/*``): every logged metric it matches, in order.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys
from pathlib import Path

import pandas as pd
from bench_utils import publish

from dck_lightning.analysis import load_runs
from dck_lightning.sweep import FINISHED, STATUS_FILE, seed_statistics

COST = {
    "final/model/parameters": ("parameters", "{:,.0f}"),
    "final/model/gflops": ("GFLOPs / image", "{:.3f}"),
    "final/train/images_per_sec": ("train img/s", "{:.1f}"),
}


def finished(run_dir: Path) -> bool:
    """Whether the sweep says the run finished (fit and test); a run folder it did not make
    counts when it has a test metric."""
    status = run_dir / STATUS_FILE
    return not status.is_file() or json.loads(status.read_text()).get("state") == FINISHED


def load(sweep: Path) -> pd.DataFrame:
    """The finished runs of ``sweep``, with their ``combination`` and ``seed`` folder names."""
    runs = load_runs(sweep, include="all")  # the sweep's own status file says which finished
    if not runs.empty:
        runs = runs[runs["run_dir"].map(lambda d: finished(Path(d)))].copy()
    if runs.empty:
        raise SystemExit(f"{sweep}: no finished run folders")
    paths = runs["run_dir"].map(Path)
    runs["combination"] = paths.map(lambda p: p.parent.name)
    runs["seed"] = paths.map(lambda p: p.name)
    return runs


def expand(runs: pd.DataFrame, metrics: list[str]) -> list[str]:
    columns = [c.removeprefix("final/") for c in runs.columns if c.startswith("final/")]
    out: list[str] = []
    for pattern in metrics:
        matched = [c for c in columns if fnmatch.fnmatchcase(c, pattern)] or [pattern]
        out += [m for m in matched if m not in out]
    return out


def cell(values: pd.Series, digits: int) -> str:
    stats = seed_statistics(pd.to_numeric(values, errors="coerce").tolist())
    if stats["n"] == 0:
        return "—"
    if stats["n"] == 1:
        return f"{stats['mean']:.{digits}f} (1)"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def metrics_table(runs: pd.DataFrame, metrics: list[str], digits: int) -> list[str]:
    costs = [c for c in COST if c in runs.columns]
    header = ["combination", "seeds", *metrics, *(COST[c][0] for c in costs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for combination, group in runs.groupby("combination", sort=False):
        cells = [combination, str(len(group))]
        cells += [cell(group.get(f"final/{m}", pd.Series(dtype=float)), digits) for m in metrics]
        for column in costs:
            value = pd.to_numeric(group[column], errors="coerce").median()
            cells.append("—" if pd.isna(value) else COST[column][1].format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def difference_table(
    runs: pd.DataFrame, metrics: list[str], baseline: str, digits: int
) -> list[str]:
    base = runs[runs["combination"] == baseline].set_index("seed")
    if base.empty:
        raise SystemExit(f"--baseline {baseline!r} is not a combination of the sweep")
    # the metrics the baseline has (a plain baseline logs no DCK extents)
    metrics = [
        m for m in metrics if pd.to_numeric(base.get(f"final/{m}"), errors="coerce").notna().any()
    ]
    header = ["combination − " + baseline, "paired seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for combination, group in runs.groupby("combination", sort=False):
        if combination == baseline:
            continue
        group = group.set_index("seed")
        seeds = group.index.intersection(base.index)
        cells = [combination, str(len(seeds))]
        for metric in metrics:
            column = f"final/{metric}"
            if column not in runs.columns:
                cells.append("—")
                continue
            diff = pd.to_numeric(group.loc[seeds, column], errors="coerce") - pd.to_numeric(
                base.loc[seeds, column], errors="coerce"
            )
            cells.append(cell(diff, digits))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, help="the sweep folder (runs/<sweep>)")
    parser.add_argument("--metrics", nargs="+", required=True)
    parser.add_argument("--baseline", help="combination the differences are taken to")
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--write", type=Path, help="put the tables into this Markdown file")
    parser.add_argument("--section", default="sweep_metrics", help="marker name in --write")
    args = parser.parse_args(argv)
    runs = load(args.sweep)
    metrics = expand(runs, args.metrics)
    lines = [
        f"Sweep `{args.sweep}`: final test metrics, mean ± std over the seeds.",
        "",
        *metrics_table(runs, metrics, args.digits),
    ]
    if args.baseline:
        lines += [
            "",
            f"Difference to `{args.baseline}`, paired by seed (mean ± std over the seeds):",
            "",
            *difference_table(runs, metrics, args.baseline, args.digits),
        ]
    arguments = argv if argv is not None else sys.argv[1:]
    lines += ["", "Command: `python scripts/report_sweep_metrics.py " + shlex.join(arguments) + "`"]
    publish("\n".join(lines), args.write, args.section)


if __name__ == "__main__":
    main()

"""Shared by the benchmark scripts: interleaved timing rounds and BENCHMARKS.md sections."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

CLOCKS = {
    # Elapsed time: what a user waits for.
    "wall": time.perf_counter,
    # CPU time of the calling thread: with one torch thread (every op runs in the caller,
    # autograd's CPU backward too) the work done, not the time spent descheduled on a
    # machine shared with other jobs. Meaningless with several threads.
    "cpu": time.thread_time,
}


def add_clock_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this thread's CPU time (1 thread only; robust to "
        "other jobs on a shared machine)",
    )


def write_section(path: Path, body: str, markers: tuple[str, str]) -> None:
    """Replace the text between ``markers`` in ``path`` with ``body`` (append the section if
    absent), keeping every other section as it is."""
    start, end = markers
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{body}\n{end}"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def publish(body: str, path: Path | None, section: str) -> None:
    """Print ``body``; with ``path``, also put it into that Markdown file between the markers
    ``<!-- section:start -->`` and ``<!-- section:end -->`` (:func:`write_section`)."""
    print(body)
    if path is not None:
        write_section(path, body, (f"<!-- {section}:start -->", f"<!-- {section}:end -->"))


def interleaved_times(
    steps: dict[str, Callable[[], float]],
    repeats: int,
    warmup: int,
    budget: float = float("inf"),
    min_repeats: int = 3,
) -> dict[str, dict[int, float]]:
    """Seconds of every step in every round, ``{name: {round: seconds}}``.

    ``steps`` maps a name to a callable that runs one step and returns its seconds. Each
    round runs every step once, in an order rotated by one each round, so that a change of
    machine load hits them all alike; the first ``warmup`` rounds are not kept. A step that
    takes more than ``budget`` seconds keeps ``max(min_repeats, budget · repeats / seconds)``
    rounds and a single warm-up.
    """
    names = list(steps)
    times: dict[str, dict[int, float]] = {name: {} for name in names}
    wanted = dict.fromkeys(names, repeats)
    for round_index in range(warmup + repeats):
        warming_up = round_index < warmup
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if len(times[name]) >= wanted[name] or (warming_up and wanted[name] < repeats):
                continue
            seconds = steps[name]()
            if seconds > budget:
                wanted[name] = min(wanted[name], max(min_repeats, int(budget * repeats / seconds)))
            if not warming_up:
                times[name][round_index] = seconds
    return times


def paired_ratio(times: dict[int, float], baseline: dict[int, float]) -> float:
    """Median over rounds of ``time / baseline time of the same round``."""
    typical = statistics.median(baseline.values())
    return statistics.median(seconds / baseline.get(r, typical) for r, seconds in times.items())

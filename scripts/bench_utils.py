"""Shared by the benchmark scripts: update one marked section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path


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

"""Argument checks shared by the layers: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_divisible(name: str, value: int, by_name: str, by: int) -> None:
    if value % by != 0:
        raise ValueError(f"{name} ({value}) must be divisible by {by_name} ({by})")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")

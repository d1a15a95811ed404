"""Callbacks: run summary, config saving (they are not modules; modules are not callbacks)."""

from .config_saving import SaveRunConfig, redact_secrets
from .run_summary import RunSummary
from .throughput import EpochThroughput

__all__ = ["EpochThroughput", "RunSummary", "SaveRunConfig", "redact_secrets"]

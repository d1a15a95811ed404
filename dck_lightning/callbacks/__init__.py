"""Callbacks: run summary, config saving (they are not modules; modules are not callbacks)."""

from .config_saving import SaveRunConfig, redact_secrets
from .run_summary import RunSummary

__all__ = ["RunSummary", "SaveRunConfig", "redact_secrets"]

"""Callbacks: run summary, config saving (they are not modules; modules are not callbacks)."""

from .config_saving import SaveRunConfig, redact_secrets
from .kernel_visualization import KernelVisualizationCallback
from .prediction_writer import PredictionWriter
from .progress import TerminalAwareProgressBar
from .run_summary import RunSummary
from .throughput import EpochThroughput

__all__ = [
    "EpochThroughput",
    "PredictionWriter",
    "RunSummary",
    "SaveRunConfig",
    "TerminalAwareProgressBar",
    "redact_secrets",
]

# -- scale-out and fault tolerance (issue 6) --
from .guards import NonFiniteLossError, NonFiniteLossGuard  # noqa: E402
from .preemption import PreemptionCheckpoint  # noqa: E402
from .resume import ResumeState  # noqa: E402

__all__ += [
    "KernelVisualizationCallback",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "PreemptionCheckpoint",
    "ResumeState",
]

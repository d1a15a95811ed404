"""LightningModules, one per task, over a small shared base."""

from .base import BaseTask
from .classification import ClassificationTask

__all__ = ["BaseTask", "ClassificationTask"]

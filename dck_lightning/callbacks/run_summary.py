"""Say at the end of a run what it reached and where its checkpoint and logs are."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_only


class RunSummary(Callback):
    """Prints one final line per stage: the monitored metric, the best checkpoint, the run folder.

    Args:
        run_dir (str, optional): the run folder (default: ``trainer.log_dir``).
        defer (bool): keep the lines in :attr:`pending` until :meth:`flush` instead of printing
            them at the stage's end. ``dck`` flushes after the W&B run is finished (W&B prints
            its summary then), so that the result is the command's last output.
    """

    def __init__(self, run_dir: Optional[str] = None, defer: bool = False) -> None:
        self.run_dir = run_dir
        self.defer = defer
        self.pending: list[str] = []

    def _say(self, text: str) -> None:
        if self.defer:
            self.pending.append(text)
        else:
            print(text, flush=True)

    def flush(self) -> None:
        """Print the deferred lines (see ``defer``)."""
        for text in self.pending:
            print(text, flush=True)
        self.pending.clear()

    def _folder(self, trainer: pl.Trainer) -> str:
        # Not trainer.log_dir: it is a collective call under DDP, and this runs on rank 0 only.
        folder = self.run_dir or next(
            (lg.log_dir for lg in trainer.loggers if getattr(lg, "log_dir", None)), None
        )
        return str(Path(folder or trainer.default_root_dir).resolve())

    @staticmethod
    def _last_checkpoint(trainer: pl.Trainer) -> str:
        """``last_model_path`` of a ``save_last`` callback, or the file of a ``filename="last"`` one."""
        for callback in trainer.checkpoint_callbacks:
            last = getattr(callback, "last_model_path", "")
            if (
                not last
                and getattr(callback, "monitor", "") is None
                and Path(getattr(callback, "best_model_path", "") or "x").stem == "last"
            ):
                last = callback.best_model_path
            if last:
                return last
        return ""

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", "val/loss")
        value = trainer.callback_metrics.get(monitor)
        line = (
            f"Finished fit: {monitor} = {float(value):.4f}" if value is not None else "Finished fit"
        )
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.best_model_path:
            best = checkpoint.best_model_score
            line += f" (best {float(best):.4f})" if best is not None else ""
            line += f"\n  best checkpoint: {checkpoint.best_model_path}"
        last = self._last_checkpoint(trainer)
        if last:
            line += f"\n  last checkpoint: {last}"
        line += f"\n  logs and config: {self._folder(trainer)}"
        self._say(line)

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("test/") and "/" not in k[5:]
        }
        summary = ", ".join(f"{k} = {v:.4f}" for k, v in sorted(metrics.items()))
        self._say(f"Finished test: {summary}\n  logs: {self._folder(trainer)}")

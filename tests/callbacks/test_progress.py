"""TerminalAwareProgressBar: Lightning's tqdm bar, a few refreshes per epoch in a log file."""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dck_lightning.callbacks.progress import TerminalAwareProgressBar


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean(), prog_bar=True)

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=1)


def refreshes(text: str, label: str) -> list[int]:
    """The batch counts ``label: … 17/40`` of every refresh the bar wrote."""
    return [int(n) for n in re.findall(rf"{label}[^\r\n]*?\|\s*(\d+)/\d+", text)]


def fit(tmp_path, bar: TerminalAwareProgressBar) -> pl.Trainer:
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Tiny(), loader(40), loader(5))
    return trainer


def test_not_a_terminal_refreshes_about_updates_per_epoch_times(tmp_path, capsys):
    fit(tmp_path, TerminalAwareProgressBar(updates_per_epoch=4, interactive=False))
    out = capsys.readouterr().out
    for epoch in (0, 1):
        counts = sorted(set(refreshes(out, f"Epoch {epoch}")))
        assert counts[-1] == 40  # the last batch is shown
        assert set(counts) <= {0, 10, 20, 30, 40}, counts  # every ceil(40 / 4) batches


def test_a_terminal_refreshes_every_batch(tmp_path, capsys):
    fit(tmp_path, TerminalAwareProgressBar(interactive=True))
    counts = set(refreshes(capsys.readouterr().out, "Epoch 0"))
    assert set(range(1, 41)) <= counts


def test_evaluation_and_prediction_bars_refresh_rarely_too(tmp_path, capsys):
    bar = TerminalAwareProgressBar(updates_per_epoch=2, interactive=False)
    trainer = pl.Trainer(default_root_dir=tmp_path, callbacks=[bar], logger=False)
    trainer.validate(Tiny(), loader(30))
    trainer.predict(Tiny(), loader(30))
    out = capsys.readouterr().out
    assert set(refreshes(out, "Validation DataLoader 0")) <= {0, 15, 30}
    assert set(refreshes(out, "Predicting DataLoader 0")) <= {0, 15, 30}
    assert 30 in refreshes(out, "Predicting DataLoader 0")


def test_bad_updates_per_epoch():
    with pytest.raises(ValueError, match="updates_per_epoch"):
        TerminalAwareProgressBar(updates_per_epoch=0)

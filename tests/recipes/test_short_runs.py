"""Short runs (smoke tests, sweeps at tiny budgets) never crash on their schedule, and an
integer batch limit stays a number of batches."""

from __future__ import annotations

import warnings

import pytest
import yaml

from dck_lightning.cli import main


def test_five_batches_of_the_default_train_with_a_warning_about_the_short_warm_up(tmp_path):
    """OneCycleLR with pct_start 0.2 over 5 steps warms up for one step: a warning, not the
    ValueError that stopped every smoke-budget sweep."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = main([
            "fit", "--run.root", str(tmp_path), "--run.wandb", "disabled",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        ])  # fmt: skip
    assert cli.trainer.global_step == 5
    assert any("warm" in str(w.message) and "OneCycleLR" in str(w.message) for w in caught)


@pytest.mark.parametrize("given, expected", [("1", 1), ("5", 5), ("0.25", 0.25), ("1.0", 1.0)])
def test_an_integer_batch_limit_stays_an_integer(given, expected, capsys):
    """``--trainer.limit_train_batches 1`` is one batch (Lightning's ``Union[float, int]``
    made it ``1.0``, a whole epoch); a float is still a share."""
    with pytest.raises(SystemExit):
        main(["fit", "--trainer.limit_train_batches", given, "--trainer.limit_val_batches",
              given, "--print_config"])  # fmt: skip
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    for key in ("limit_train_batches", "limit_val_batches"):
        assert trainer[key] == expected and type(trainer[key]) is type(expected), trainer[key]

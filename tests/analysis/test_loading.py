"""load_runs / load_history on real run folders made by the CLI, and on a fake W&B API."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dck_lightning.analysis import (
    find_checkpoint,
    find_runs,
    flatten_config,
    load_config,
    load_history,
    load_runs,
    loading,
    metric_mode,
    summary_table,
    varying_columns,
)

DCK = "model.init_args.backbone.init_args.dck"


def csv_column(run_dir: Path, name: str) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return [float(row[name]) for row in csv.DictReader(file) if row.get(name)]


@pytest.fixture(scope="module")
def runs(runs_root):
    return load_runs(runs_root)


def test_one_row_per_run_with_config_metrics_and_paths(
    runs, runs_root, ablation_runs, wandb_run_dir
):
    assert list(runs["run"]) == [f"ablation/version_{i}" for i in range(4)] + ["wandb/version_0"]
    assert list(runs["run_dir"]) == [str(p.resolve()) for p in [*ablation_runs, wandb_run_dir]]
    assert list(runs[DCK][:4]) == ["adaptive", "adaptive", "static", "static"]
    assert list(runs["seed_everything"][:4]) == [1, 2, 1, 2]
    assert runs["model.class_path"].eq("dck_lightning.tasks.ClassificationTask").all()
    widths = runs["model.init_args.backbone.init_args.widths"][0]
    assert widths == (8, 16, 24, 32)  # lists become tuples
    assert runs["monitor"].eq("val/acc").all() and runs["epochs"].eq(2).all()
    for _, row in runs.iterrows():
        run_dir = Path(row["run_dir"])
        accuracy, loss = csv_column(run_dir, "val/acc"), csv_column(run_dir, "val/loss")
        assert row["best/val/acc"] == pytest.approx(max(accuracy))  # max for accuracy
        assert row["final/val/acc"] == pytest.approx(accuracy[-1])
        assert row["best/val/loss"] == pytest.approx(min(loss))  # min for losses
        assert row["final/val/loss"] == pytest.approx(loss[-1])
        assert (
            Path(row["best_checkpoint"]).name.startswith("best-")
            and Path(row["best_checkpoint"]).is_file()
        )
        assert row["last_checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    # Learning rates and kernel extents have a final value only.
    assert "final/lr-AdamW/weights" in runs and "best/lr-AdamW/weights" not in runs
    kernels = [c for c in runs.columns if c.startswith("final/kernels/")]
    assert kernels and not any(c.startswith("best/kernels/") for c in runs.columns)
    assert runs[kernels[0]].notna().tolist() == [
        True,
        False,
        False,
        False,
        True,
    ]  # callback runs only


def test_wandb_id_is_that_of_the_offline_run(runs, wandb_run_dir):
    row = runs.set_index("run").loc["wandb/version_0"]
    offline = next((wandb_run_dir / "wandb").glob("offline-run-*"))
    assert (
        offline.name.endswith(row["wandb_id"])
        and row["wandb_id"] == (wandb_run_dir / "wandb_run_id.txt").read_text().strip()
    )
    assert runs["wandb_id"][:4].isna().all()  # --run.wandb disabled


def test_paths_a_single_run_and_a_list(runs_root, ablation_runs):
    assert list(load_runs(ablation_runs[2])["run"]) == ["ablation/version_2"]
    assert list(load_runs([ablation_runs[3], ablation_runs[0], ablation_runs[0]])["run"]) == [
        "ablation/version_0", "ablation/version_3"
    ]  # fmt: skip
    assert len(find_runs(runs_root)) == 5
    with pytest.raises(FileNotFoundError, match="no runs folder"):
        load_runs(runs_root / "missing")
    with pytest.raises(ValueError):
        load_runs()


def test_varying_columns_and_summary_table(runs):
    switches = varying_columns(runs)
    assert DCK in switches and "seed_everything" in switches
    assert not any(
        c.startswith(("best/", "final/", "run.")) or c in ("run", "run_dir") for c in switches
    )
    table = summary_table(runs, "val/acc")
    assert (
        list(table.columns[:1]) == ["run"] and "best/val/acc" in table and "final/val/acc" in table
    )
    assert summary_table(runs).columns.tolist() == table.columns.tolist()  # default: the monitor


def test_history_one_row_per_step_with_epochs(ablation_runs):
    history = load_history(ablation_runs[0])
    assert (
        history.index.name == "step"
        and history.index.is_unique
        and history.index.is_monotonic_increasing
    )
    assert history.columns[0] == "epoch" and history["epoch"].notna().all()
    per_epoch = history.dropna(subset=["val/acc"])
    assert list(per_epoch["epoch"]) == [0, 1]
    # Validation and training epoch-end values of a step are merged into one row.
    assert per_epoch["train/loss_epoch"].notna().all()
    assert list(per_epoch["val/acc"]) == pytest.approx(csv_column(ablation_runs[0], "val/acc"))
    # The lr monitor's rows (one per step: the default's one-cycle steps per batch) get their epoch.
    lr = history.dropna(subset=["lr-AdamW/weights"])
    assert list(lr["epoch"]) == [0, 0, 1, 1]
    pd.testing.assert_frame_equal(load_history(ablation_runs[0] / "metrics.csv"), history)
    pd.testing.assert_frame_equal(load_history({"run_dir": str(ablation_runs[0])}), history)


def test_resumed_run_newest_values_win_and_later_configs_override(tmp_path):
    run = tmp_path / "exp" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(
        "epoch,step,train/loss_step,val/acc,val/loss\n"
        "0,4,0.9,,\n0,4,,0.5,1.0\n1,9,,0.7,0.8\n"
        "1,9,,0.6,0.85\n2,14,,0.65,0.9\n"  # resumed from the epoch-0 checkpoint: step 9 again
    )
    (run / "config.yaml").write_text(
        yaml.safe_dump({"trainer": {"max_epochs": 2, "precision": 32}})
    )
    (run / "config_1.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 3}}))
    history = load_history(run)
    assert list(history.index) == [4, 9, 14]
    assert history.loc[9, "val/acc"] == 0.6 and history.loc[4, "train/loss_step"] == 0.9
    assert load_config(run) == {"trainer": {"max_epochs": 3, "precision": 32}}
    row = load_runs(run).iloc[0]
    assert (
        row["best/val/acc"] == 0.65
        and row["final/val/acc"] == 0.65
        and row["best/val/loss"] == 0.85
    )
    assert row["trainer.max_epochs"] == 3 and row["epochs"] == 3 and row["steps"] == 14
    assert pd.isna(row["best_checkpoint"]) and pd.isna(row["monitor"])


def test_find_checkpoint(runs_root, ablation_runs):
    assert find_checkpoint(ablation_runs[1]).name.startswith("best-")
    assert find_checkpoint(ablation_runs[1], "last").name == "last.ckpt"
    newest = find_checkpoint(runs_root)
    assert newest.parent.parent.name == "version_0" and newest.parent.parent.parent.name == "wandb"
    with pytest.raises(FileNotFoundError):
        find_checkpoint(runs_root / "ablation" / "version_0" / "checkpoints" / "nope.ckpt")


@pytest.mark.parametrize(
    "name,mode",
    [("val/acc", "max"), ("val/map_50", "max"), ("val/miou", "max"), ("test/iou/cat", "max"),
     ("val/loss", "min"), ("train/loss_epoch", "min"), ("train/epoch_seconds", "min"),
     ("lr-AdamW/weights", None), ("kernels/stages.2.0.dck.conv/sigma_y", None), ("epoch", None)],
)  # fmt: skip
def test_metric_mode(name, mode):
    assert metric_mode(name) == mode


def test_flatten_config():
    flat = flatten_config({"a": {"b": 1, "c": [1, 2], "d": {}, "e": [{"x": 1}]}, "f": None})
    assert flat == {"a.b": 1, "a.c": (1, 2), "a.d": {}, "a.e": '[{"x": 1}]', "f": None}


# -- W&B ---------------------------------------------------------------------------------------


class FakeArtifact:
    def __init__(self, name: str, aliases: list[str]) -> None:
        self.type, self.aliases, self.qualified_name = "model", aliases, name


class FakeRun:
    """What ``wandb.Api().runs()`` yields, built from a local run folder."""

    def __init__(self, run_dir: Path, entity_project: str, hparams_last: bool = True) -> None:
        self.id = (run_dir / "wandb_run_id.txt").read_text().strip()
        self.name = f"{run_dir.parent.name}/{run_dir.name}"
        self.path = [*entity_project.split("/"), self.id]
        # The run's config: the resolved CLI config (SaveRunConfig), the hyperparameters
        # Lightning logs at the top level afterwards (hparams_last=False: the other way round)
        # and W&B's keys.
        cli = yaml.safe_load((run_dir / "config.yaml").read_text())
        hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text())
        self.config = {**cli, **hparams} if hparams_last else {**hparams, **cli}
        self.config["_wandb"] = {"cli_version": "0"}
        self.rows = []
        with open(run_dir / "metrics.csv", newline="") as file:
            for index, row in enumerate(csv.DictReader(file)):
                record = {k: float(v) for k, v in row.items() if v and k not in ("step", "epoch")}
                record.update(
                    {"_step": index, "_runtime": 1.0, "trainer/global_step": int(row["step"])}
                )
                if row["epoch"]:
                    record["epoch"] = int(row["epoch"])
                self.rows.append(record)
        last_step = self.rows[-1]["trainer/global_step"]  # a media row (the callback's images)
        self.rows.append({"_step": len(self.rows), "trainer/global_step": last_step,
                          "kernels/offsets": {"_type": "images/separated"}})  # fmt: skip

    def scan_history(self):
        return iter(self.rows)

    def logged_artifacts(self):
        return [FakeArtifact(f"{'/'.join(self.path[:2])}/model-{self.id}:v0", ["v0"]),
                FakeArtifact(f"{'/'.join(self.path[:2])}/model-{self.id}:v1", ["best", "latest", "v1"])]  # fmt: skip


class FakeApi:
    def __init__(self, runs: list[FakeRun]) -> None:
        self._runs = runs
        self.calls: list[tuple] = []

    def runs(self, path, filters=None):
        self.calls.append((path, filters))
        return list(self._runs)

    def run(self, path):
        self.calls.append((path,))
        return next(r for r in self._runs if "/".join(r.path) == path)


@pytest.mark.parametrize("hparams_last", [False, True], ids=["cli-config-last", "hparams-last"])
def test_wandb_runs_give_the_same_columns(runs, wandb_run_dir, hparams_last):
    api = FakeApi([FakeRun(wandb_run_dir, "me/dck", hparams_last)])
    table = load_runs(wandb_project="me/dck", api=api, filters={"state": "finished"})
    assert api.calls == [("me/dck", {"state": "finished"})]
    row = table.iloc[0]
    local = runs.set_index("run").loc["wandb/version_0"]
    assert row["source"] == "wandb" and row["run"] == "wandb/version_0"
    assert (
        row["wandb_id"] == local["wandb_id"] and row["wandb_path"] == f"me/dck/{local['wandb_id']}"
    )
    assert row["run_dir"] == local["run_dir"]  # the run folder is on this machine too
    assert row["best_checkpoint"] == f"me/dck/model-{row['wandb_id']}:v1"
    assert row["last_checkpoint"] == f"me/dck/model-{row['wandb_id']}:v1"
    metric_columns = [
        c for c in runs.columns if c.startswith(("best/", "final/")) and not math.isnan(local[c])
    ]
    config_columns = [
        c
        for c in runs.columns
        if c.startswith(("model.", "data.", "trainer.max_epochs", "seed")) and not pd.isna(local[c])
    ]
    # No task hyperparameter is called "model" (the backbone is "backbone"), so Lightning's
    # hyperparameters no longer replace the CLI's model section, whichever is logged last.
    assert row["model.class_path"] == "dck_lightning.tasks.ClassificationTask"
    assert "model.init_args.backbone.init_args.widths" in config_columns
    for column in [
        *metric_columns,
        *config_columns,
        "monitor",
        "epochs",
        "steps",
    ]:
        assert (
            row[column] == pytest.approx(local[column])
            if isinstance(local[column], float)
            else row[column] == local[column]
        ), column
    assert set(table.columns) - set(runs.columns) == {"wandb_path"}  # no hparams, W&B keys, media

    # Histories: from the run object seen by load_runs, or fetched again through the API.
    history = load_history(row.drop("run_dir"))
    expected = load_history(wandb_run_dir)
    pd.testing.assert_frame_equal(history[expected.columns], expected, check_dtype=False)
    loading._WANDB_RUNS.clear()
    pd.testing.assert_frame_equal(load_history(row.drop("run_dir"), api=api), history)
    assert api.calls[-1] == (row["wandb_path"],)


def test_local_and_wandb_runs_in_one_table(runs_root, wandb_run_dir):
    table = load_runs(
        runs_root, wandb_project="me/dck", api=FakeApi([FakeRun(wandb_run_dir, "me/dck")])
    )
    assert list(table["source"]) == ["local"] * 5 + ["wandb"]

"""``dck sweep``: the plan, the table maths, the report, resuming, SLURM/W&B files, and one
end-to-end sweep of tiny runs (a run that fails is listed as failed, and retried)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from dck_lightning.cli import main as dck
from dck_lightning.sweep import (
    STATUS_FILE,
    SweepError,
    SweepSpec,
    code_version,
    main,
    plan_runs,
    seed_statistics,
    short_names,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
DCK = "model.init_args.backbone.init_args.dck"
TINY = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    "--data.init_args.image_size", "16", "--data.init_args.num_train", "32",
    "--data.init_args.num_val", "16", "--data.init_args.num_test", "16",
    "--model.init_args.backbone.init_args",
    '{"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}',
]  # fmt: skip


# -- the table maths -----------------------------------------------------------------------------


def test_seed_statistics_mean_std_and_student_t_interval():
    got = seed_statistics([0.8, 0.9, 1.0])
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.9) and got["std"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2}
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.9 - half, 0.9 + half))
    low, high = stats.t.interval(0.95, 2, loc=0.9, scale=stats.sem([0.8, 0.9, 1.0]))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high))
    five = seed_statistics([0.71, 0.74, 0.69, 0.73, 0.70], confidence=0.9)
    assert five["ci_high"] - five["mean"] == pytest.approx(
        stats.t.ppf(0.95, 4) * stats.tstd([0.71, 0.74, 0.69, 0.73, 0.70]) / math.sqrt(5)
    )


def test_seed_statistics_of_one_or_no_value_and_nan_dropped():
    one = seed_statistics([0.5, float("nan"), None])
    assert one["n"] == 1 and one["mean"] == 0.5
    assert math.isnan(one["std"]) and math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    assert seed_statistics([])["n"] == 0 and math.isnan(seed_statistics([])["mean"])


# -- the plan --------------------------------------------------------------------------------------


def test_plan_is_every_variant_grid_combination_and_seed(tmp_path):
    spec = SweepSpec(
        name="s",
        root=str(tmp_path),
        grid={DCK: ["adaptive", "static"], "model.init_args.backbone.init_args.gcm": [True, False]},
        variants={"wide": {"model.init_args.backbone.init_args.widths": [8, 16, 24, 48]}, "base": {}},
        seeds=[1, 2],
    )  # fmt: skip
    runs = plan_runs(spec)
    assert len(runs) == 2 * 2 * 2 * 2
    assert runs[0].combination == "wide,dck=adaptive,gcm=true" and runs[0].seed == 1
    assert runs[0].run_dir == tmp_path / "s" / "wide,dck=adaptive,gcm=true" / "seed_1"
    assert runs[-1].combination == "base,dck=static,gcm=false" and runs[-1].seed == 2
    # seed-major: all eight combinations of seed 1, then of seed 2 (load changes hit all alike)
    assert [r.seed for r in runs] == [1] * 8 + [2] * 8
    assert [r.combination for r in runs[:8]] == [r.combination for r in runs[8:]]
    assert len({r.combination for r in runs[:8]}) == 8
    assert [r.index for r in runs] == list(range(16))
    assert runs[0].tags == ["wide", "dck=adaptive", "gcm=true"]
    assert short_names(["a.init_args.dck", "b.init_args.dck", "c.gcm"]) == {
        "a.init_args.dck": "a.dck", "b.init_args.dck": "b.dck", "c.gcm": "gcm"}  # fmt: skip
    with pytest.raises(SweepError, match="non-empty list"):
        plan_runs(SweepSpec(name="s", grid={DCK: []}))


def test_commands_put_the_switches_last_and_test_the_best_checkpoint(tmp_path):
    spec = SweepSpec(name="s", root=str(tmp_path), configs=["a.yaml"], grid={DCK: ["static"]},
                     overrides={"trainer.max_epochs": 3}, args=[f"--{DCK}", "adaptive"])  # fmt: skip
    run = plan_runs(spec)[0]
    fit = run.command(spec, "fit")
    assert fit[1:6] == ["-m", "dck_lightning.cli", "fit", "-c", "a.yaml"]
    assert fit.index("adaptive") < fit.index("static")  # the grid value wins
    assert fit[fit.index("--seed_everything") + 1] == "1"
    assert fit[fit.index("--run.version") + 1] == "seed_1"
    assert "dck_lightning.callbacks.EpochThroughput" in fit
    assert run.command(spec, "test")[-2:] == ["--ckpt_path", "last"]
    (run.run_dir / "checkpoints").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "best-epoch=0-step=1.ckpt").touch()
    assert run.command(spec, "test")[-2:] == ["--ckpt_path", "best"]


@pytest.mark.parametrize("sweep_file", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_shipped_sweep_files_give_commands_the_cli_accepts(sweep_file, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = SweepSpec.from_file(sweep_file)
    runs = plan_runs(spec)
    assert len(runs) == len(spec.seeds) * max(1, len(spec.variants))
    for run in runs[: max(1, len(spec.variants))]:  # one per combination (seed-major plan)
        with pytest.raises(SystemExit) as exit_info:
            dck([*run.command(spec, "fit")[3:], "--print_config"])
        assert exit_info.value.code in (0, None), run.combination
        config = yaml.safe_load(capsys.readouterr().out)
        for key, value in run.switches.items():
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value or (value == "off" and node in ("off", False)), (key, node)


DEFORM = "model.init_args.backbone.init_args.deform"


def test_grid_words_off_on_yes_no_reach_the_cli_as_written(tmp_path, capsys):
    """PyYAML reads ``off``/``on``/``yes``/``no`` as booleans: ``dck=[adaptive,off]`` gave the
    DCK switch ``false`` and both runs of that arm failed. The words reach ``dck fit`` as
    written, and it reads them as each key's type does."""
    args = ["--root", str(tmp_path), "--name", "s", "--grid", f"{DCK}=[adaptive,off]",
            "--grid", f"{DEFORM}=[yes,no]", "--dry-run"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"--{DCK} off " in out and f"--{DEFORM} no " in out and f"--{DEFORM} yes " in out
    assert "dck=off,deform=no/seed_1" in out and "false" not in out
    spec = SweepSpec.from_file(tmp_path / "s" / "sweep.yaml")  # as recorded, read back
    assert spec.grid == {DCK: ["adaptive", "off"], DEFORM: ["yes", "no"]}
    run = next(r for r in plan_runs(spec) if r.combination == "dck=off,deform=no")
    with pytest.raises(SystemExit) as exit_info:
        dck([*run.command(spec, "fit")[3:], "--print_config"])
    assert exit_info.value.code in (0, None)
    backbone = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["backbone"]
    assert backbone["init_args"]["dck"] == "off" and backbone["init_args"]["deform"] is False


def test_a_sweep_file_keeps_off_as_a_string(tmp_path):
    path = tmp_path / "arms.yaml"
    path.write_text(f"variants:\n  plain: {{{DCK}: off}}\ngrid:\n  {DEFORM}: [true, false]\n")
    spec = SweepSpec.from_file(path)
    assert spec.variants == {"plain": {DCK: "off"}} and spec.grid == {DEFORM: [True, False]}


# -- state, report, SLURM and W&B files ------------------------------------------------------------


def fake_run(
    run,
    spec,
    state: str,
    value: float | None = None,
    fingerprint: str | None = None,
    code: str = "abc123",
):
    """A run folder as dck fit + dck test + the sweep leave it (config, metrics, status)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": {"class_path": "dck_lightning.tasks.ClassificationTask"},
              "run": {"name": run.combination}, "seed_everything": run.seed}  # fmt: skip
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = ["epoch,step,model/parameters,model/gflops,train/images_per_sec,val/acc,test/acc",
            ",0,1000.0,0.5,,,", "0,3,,,250.0,0.5,", "1,6,,,100.0,0.6,", "2,9,,,260.0,0.7,"]  # fmt: skip
    if value is not None:
        rows.append(f",3,,,,,{value}")
    (run.run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    status = {"state": state, "fingerprint": fingerprint or run.fingerprint(spec), "stage": "test",
              "fit_seconds": 10.0, "test_seconds": 2.0, "test_returncode": 0 if state == "finished" else 1,
              "code": [code], "load_sum": 3.0 * (run.seed + 1), "load_samples": 3}  # fmt: skip
    (run.run_dir / STATUS_FILE).write_text(json.dumps(status))


def test_report_lists_every_combination_and_failed_runs(tmp_path):
    spec = SweepSpec(
        name="s", root=str(tmp_path), grid={DCK: ["adaptive", "static"]}, seeds=[1, 2, 3]
    )
    runs = plan_runs(spec)
    values = {("dck=adaptive", 1): 0.8, ("dck=adaptive", 2): 0.9, ("dck=adaptive", 3): 1.0,
              ("dck=static", 1): 0.6, ("dck=static", 2): 0.7}  # fmt: skip
    for run in runs:
        if (run.combination, run.seed) in values:
            fake_run(run, spec, "finished", values[run.combination, run.seed])
        else:
            fake_run(run, spec, "failed")
    table, per_run, metric = summarise(spec, runs)
    assert metric == "test/acc"
    row = table.set_index("combination").loc["dck=static"]
    assert (row["runs"], row["finished"], row["failed"], row["failed seeds"]) == (3, 2, 1, "3")
    assert row["test/acc mean"] == pytest.approx(0.65)
    # images/s: the median over a run's epochs (250, 100, 260), not its last epoch
    assert row["parameters"] == 1000 and row["GFLOPs"] == 0.5 and row["train images/s"] == 250
    assert row["wall s per run"] == 12.0
    assert row["load avg"] == 3.0  # the runs' mean loads: 2, 3, 4 (seeds 1-3); median
    assert row["code"] == "abc123"
    adaptive = table.set_index("combination").loc["dck=adaptive"]
    assert adaptive["ci95 high"] == pytest.approx(seed_statistics([0.8, 0.9, 1.0])["ci_high"])
    assert per_run["state"].tolist().count("failed") == 1

    assert main(["--root", str(tmp_path), "--name", "s", "--grid", f"{DCK}=[adaptive,static]",
                 "--seeds", "3", "--summary"]) == 1  # fmt: skip
    written = pd.read_csv(tmp_path / "s" / "sweep.csv")
    assert written["combination"].tolist() == ["dck=adaptive", "dck=static"]
    markdown = (tmp_path / "s" / "sweep.md").read_text()
    assert "| dck=static | 3 | 2 | 1 | 0.6500 |" in markdown
    assert "Code: `abc123`." in markdown and "| code |" not in markdown
    fake_run(runs[0], spec, "finished", 0.8, code="def456")  # one run of other code
    assert main(["--root", str(tmp_path), "--name", "s", "--grid", f"{DCK}=[adaptive,static]",
                 "--seeds", "3", "--summary"]) == 1  # fmt: skip
    markdown = (tmp_path / "s" / "sweep.md").read_text()
    assert "different code versions" in markdown and "abc123 def456 |" in markdown
    assert "`dck=static` seed 3: test exited with 1" in markdown
    assert (tmp_path / "s" / "sweep.png").is_file()


def test_a_rerun_skips_finished_runs_and_refuses_changed_ones(tmp_path, capsys):
    spec = SweepSpec(name="s", root=str(tmp_path), grid={DCK: ["adaptive", "static"]})
    runs = plan_runs(spec)
    fake_run(runs[0], spec, "finished", 0.5)
    args = ["--root", str(tmp_path), "--name", "s", "--grid", f"{DCK}=[adaptive,static]"]
    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dck=adaptive/seed_1 [finished]" in out and "1 of 2 runs to do" in out
    fake_run(runs[0], spec, "finished", 0.5, fingerprint="an older command")
    assert main([*args, "--dry-run"]) == 2
    assert "finished with other settings" in capsys.readouterr().err


def test_slurm_array_and_wandb_sweep_files(tmp_path):
    args = ["--root", str(tmp_path), "--name", "s", "--grid", f"{DCK}=[adaptive,static]",
            "--seeds", "2", "--jobs", "3", "--", "--trainer.max_epochs", "4"]  # fmt: skip
    assert main([*args[:-3], "--slurm", *args[-3:]]) == 0
    script = (tmp_path / "s" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-3%3" in script and "OMP_NUM_THREADS=1" in script
    assert f"-m dck_lightning.sweep {tmp_path / 's' / 'sweep.yaml'} --only" in script
    recorded = SweepSpec.from_file(tmp_path / "s" / "sweep.yaml")
    assert recorded.args == ["--trainer.max_epochs", "4"] and recorded.seeds == [1, 2]
    assert not list((tmp_path / "s").glob("dck=*"))  # nothing ran
    assert main([*args[:-3], "--wandb", *args[-3:]]) == 0
    config = yaml.safe_load((tmp_path / "s" / "wandb_sweep.yaml").read_text())
    assert config["method"] == "grid" and config["parameters"][DCK] == {
        "values": ["adaptive", "static"]
    }
    assert config["parameters"]["seed_everything"] == {"values": [1, 2]}
    assert config["command"][:2] == ["dck", "fit"] and config["command"][-1] == "${args}"


def test_bad_sweep_input_is_one_line(tmp_path, capsys):
    assert main(["-c", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("name: x\ngrids: {}\n")
    assert main([str(tmp_path / "bad.yaml")]) == 2
    assert "unknown key(s) ['grids']" in capsys.readouterr().err


# -- end to end ------------------------------------------------------------------------------------


def test_end_to_end_fit_test_report_and_retry(tmp_path, monkeypatch):
    """Two combinations × one seed, two at a time: one trains and tests, one fails (a dropout
    of 5 is refused); the table has both, the re-run skips the first and retries the second."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["--root", str(tmp_path), "--name", "e2e", "--grid", "model.init_args.dropout=[0.0,5.0]",
            "--jobs", "2", "--", *TINY]  # fmt: skip
    assert main(args) == 1
    folder = tmp_path / "e2e"
    good, bad = folder / "dropout=0.0" / "seed_1", folder / "dropout=5.0" / "seed_1"
    status = json.loads((good / STATUS_FILE).read_text())
    assert (
        status["state"] == "finished" and status["fit_returncode"] == status["test_returncode"] == 0
    )
    assert status["code"] == [code_version()] and status["load_samples"] >= 1  # read at start
    assert {"config.yaml", "config_1.yaml", "metrics.csv", "sweep_fit.log", "sweep_test.log"} <= {
        p.name for p in good.iterdir()}  # fmt: skip
    assert "dck: error: invalid config: dropout probability" in (bad / "sweep_fit.log").read_text()
    table = pd.read_csv(folder / "sweep.csv").set_index("combination")
    assert table.loc["dropout=0.0", "finished"] == 1 and table.loc["dropout=5.0", "failed"] == 1
    assert 0 <= table.loc["dropout=0.0", "test/acc mean"] <= 1
    assert (
        table.loc["dropout=0.0", "parameters"] > 0
        and table.loc["dropout=0.0", "train images/s"] > 0
    )
    # W&B: the sweep is the group, the switch values and the seed are the tags (offline run).
    record = next((good / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    assert b"e2e" in record and b"dropout=0.0" in record and b"seed=1" in record

    fit_log = (good / "sweep_fit.log").stat().st_mtime
    time.sleep(0.01)
    assert main(args) == 1
    assert (good / "sweep_fit.log").stat().st_mtime == fit_log  # finished: not run again
    assert json.loads((bad / STATUS_FILE).read_text())["attempts"] == 2  # failed: retried
    assert os.environ.get("DCK_RUN_DIR") is None


def test_code_version_is_the_checkout_commit():
    version = code_version()
    if version == "unknown":
        pytest.skip("not a git checkout")
    commit = version.removesuffix("+dirty")
    assert len(commit) == 12 and int(commit, 16) >= 0

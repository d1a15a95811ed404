"""The `dck` CLI in-process: configs parse, fit → checkpoint → validate/test/predict, W&B offline,
run folders never overwritten, clear errors for bad input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import wandb
import yaml

from dck_lightning.cli import DEFAULT_DATA, DEFAULT_MODEL, main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml"))
SNIPPETS = sorted(p for d in ("trainer", "logger") for p in (REPO / "configs" / d).glob("*.yaml"))

TINY_MODEL = '{"widths": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "dck_kernel_size": 3}'


def tiny_args(root: Path, *extra: str) -> list[str]:
    return [
        "--run.root",
        str(root),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--model.init_args.backbone.init_args",
        TINY_MODEL,
        "--data.init_args.image_size",
        "16",
        "--data.init_args.num_train",
        "32",
        "--data.init_args.num_val",
        "16",
        "--data.init_args.num_test",
        "16",
        "--data.init_args.batch_size",
        "8",
        *extra,
    ]


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_parses(config, capsys):
    resolved = print_config(capsys, "-c", str(config))
    assert resolved["model"]["class_path"].startswith("dck_lightning.tasks")
    assert resolved["data"]["class_path"].startswith("dck_lightning.data")


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"{p.parent.name}/{p.name}" for p in SNIPPETS])
def test_snippets_combine_with_a_config(snippet, capsys):
    resolved = print_config(
        capsys, "-c", str(REPO / "configs" / "mnist_seed.yaml"), "-c", str(snippet)
    )
    section = yaml.safe_load(snippet.read_text())
    for key, values in section.items():
        for name, value in values.items():
            assert resolved[key][name] == value


def test_default_config_file_is_the_embedded_default(capsys):
    embedded = print_config(capsys)
    from_file = print_config(capsys, "-c", str(REPO / "configs" / "default.yaml"))
    embedded.pop("config", None), from_file.pop("config", None)
    assert embedded == from_file


def test_fit_then_validate_test_predict_from_the_checkpoint(tmp_path, capsys):
    cli = main(["fit", *tiny_args(tmp_path, "--run.name", "shapes")])
    run_dir = tmp_path / "shapes" / "version_0"
    assert Path(cli.trainer.log_dir) == run_dir
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    out = capsys.readouterr().out
    assert "Finished fit: val/acc" in out and str(last) in out

    # W&B offline: the run folder holds the metrics and the resolved config.
    wandb.finish()
    wandb.teardown()  # stop the W&B service: everything it buffered is on disk now
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    record_file = next(offline[0].glob("run-*.wandb"))
    deadline = time.monotonic() + 30
    while b"val/acc" not in record_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    records = record_file.read_bytes()
    assert b"val/acc" in records and b"train/loss_epoch" in records
    assert b"dcb_small" in records and b"SyntheticShapesDataModule" in records
    saved = yaml.safe_load((offline[0] / "files" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["backbone"]["class_path"] == "dck_lightning.models.dcb_small"

    for command in ("validate", "test", "predict"):
        main(
            [
                command,
                *tiny_args(tmp_path, "--run.name", "shapes", "--run.wandb", "disabled"),
                "--ckpt_path",
                str(last),
            ]
        )
    assert "Finished test: test/acc" in capsys.readouterr().out
    # Each command got its own run folder; the training run is untouched.
    assert sorted(p.name for p in (tmp_path / "shapes").iterdir()) == [
        f"version_{i}" for i in range(4)
    ]


def test_run_folders_are_never_reused(tmp_path):
    for _ in range(2):
        main(
            [
                "fit",
                *tiny_args(tmp_path, "--run.wandb", "disabled", "--trainer.limit_val_batches", "0"),
            ]
        )
    runs = sorted((tmp_path / "default").iterdir())
    assert [p.name for p in runs] == ["version_0", "version_1"]
    assert all((p / "checkpoints" / "last.ckpt").is_file() for p in runs)


def test_resume_into_the_same_run_keeps_the_first_config(tmp_path):
    constant_lr = ("--run.wandb", "disabled", "--model.init_args.lr_scheduler", "null")
    main(["fit", *tiny_args(tmp_path, *constant_lr)])
    run_dir = tmp_path / "default" / "version_0"
    first_config = (run_dir / "config.yaml").read_text()
    first_rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    main(
        [
            "fit",
            *tiny_args(tmp_path, *constant_lr, "--trainer.max_epochs", "2"),
            "--ckpt_path",
            str(run_dir / "checkpoints" / "last.ckpt"),
        ]
    )
    assert (run_dir / "config.yaml").read_text() == first_config
    assert (run_dir / "config_1.yaml").is_file()
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) > len(first_rows)  # the first part's metrics are kept, the second's appended
    assert not (tmp_path / "default" / "version_1").exists()


def test_resuming_with_another_schedule_length_names_both_lengths(tmp_path):
    """The default's one-cycle schedule ran 2 steps; resumed for 2 epochs it would need 4."""
    main(["fit", *tiny_args(tmp_path, "--run.wandb", "disabled")])
    last = tmp_path / "default" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"OneCycleLR runs total_steps=2 .* needs 4"):
        main(["fit", *tiny_args(tmp_path, "--run.wandb", "disabled", "--trainer.max_epochs", "2"),
              "--ckpt_path", str(last)])  # fmt: skip
    assert last.is_file()  # the checkpoint is left as it was


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model.init_args.no_such_key", "1"], "no_such_key"),
        (["--model.init_args.label_smoothing", "lots"], "label_smoothing"),
        (["--model", "dck_lightning.tasks.NoSuchTask"], "NoSuchTask"),
        (["-c", "configs/does_not_exist.yaml"], "does_not_exist.yaml"),
        (["--trainer.max_epochs", "many"], "max_epochs"),
    ],
)
def test_bad_input_gives_the_cli_message_not_a_traceback(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_exits_zero_after_a_successful_fit(tmp_path, monkeypatch):
    """``dck`` runs ``sys.exit(entry_point())``: a successful fit must end with status 0."""
    from dck_lightning.cli import entry_point

    monkeypatch.setattr("sys.argv", ["dck", "fit", *tiny_args(tmp_path, "--run.wandb", "disabled")])
    with pytest.raises(SystemExit) as exit_info:
        import sys

        sys.exit(entry_point())
    assert exit_info.value.code is None
    assert (tmp_path / "default" / "version_0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    ("requested", "env", "expected"),
    [
        ("disabled", "offline", "disabled"),  # an explicit --run.wandb is used as given
        ("offline", "online", "offline"),
        ("auto", "disabled", "disabled"),  # auto follows WANDB_MODE when it is set
        ("auto", "dryrun", "offline"),
        ("auto", None, "offline"),  # no credentials here: offline
    ],
)
def test_wandb_mode_precedence(requested, env, expected, monkeypatch):
    from dck_lightning import runs

    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    monkeypatch.setattr(runs, "has_wandb_credentials", lambda: False)
    assert runs.resolve_wandb_mode(requested) == expected


def test_wandb_run_config_keeps_the_cli_sections(tmp_path):
    """Lightning's hyperparameter logging must not replace the CLI's ``model`` section."""
    from pytorch_lightning.loggers import WandbLogger

    cli = main(
        ["fit", *tiny_args(tmp_path, "--run.wandb", "offline", "--trainer.limit_val_batches", "0")]
    )
    logger = next(log for log in cli.trainer.loggers if isinstance(log, WandbLogger))
    config = dict(logger.experiment.config)  # the (finished) run's final config
    assert (
        config["model"]["init_args"]["backbone"]["class_path"] == "dck_lightning.models.dcb_small"
    )
    assert config["data"]["class_path"].endswith("SyntheticShapesDataModule")
    assert config["trainer"]["max_epochs"] == 1
    assert config["model"]["init_args"]["backbone"]["init_args"]["dck"] == "adaptive"  # a default


# -- the typed backbone ----------------------------------------------------------------------


def test_print_config_shows_every_backbone_argument_with_its_default(capsys):
    backbone = print_config(capsys)["model"]["init_args"]["backbone"]
    assert backbone["class_path"] == "dck_lightning.models.dcb_small"
    assert backbone["init_args"] == {
        "widths": [32, 64, 96, 128], "depths": [1, 1, 1, 1], "dcb_stages": [3, 4],
        "stem": "small", "stem_stride": 2, "dck": "adaptive", "deform": True, "gcm": True,
        "dck_kernel_size": 5, "center_constraint": [2.0, 2.0], "dck_init_extent": None,
        "stem_width": None, "backend": None,
        "downsample": "avg",  # the embedded default's; the preset's is "conv"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.init_args.backbone", "resnet18"], {"widths": [64, 128, 256, 512], "dcb_stages": [], "stem": "resnet"}),
        (["--model.init_args.backbone.init_args.widths", "[8, 16, 24, 32]", "--model.init_args.backbone", "resnet18"],
         {"widths": [8, 16, 24, 32], "depths": [2, 2, 2, 2], "dcb_stages": []}),
        (["--model.init_args.backbone.dck", "static"], {"dck": "static", "widths": [32, 64, 96, 128]}),
        (["--model.init_args.backbone", "dcb_resnet34", "--model.init_args.backbone.init_args.gcm", "false"],
         {"depths": [3, 4, 6, 3], "dcb_stages": [3, 4], "gcm": False}),
    ],
)  # fmt: skip
def test_a_preset_is_one_word_and_brings_its_own_values(capsys, args, expected):
    """Another preset's values replace the defaults of the one before; values given carry over."""
    init_args = print_config(capsys, *args)["model"]["init_args"]["backbone"]["init_args"]
    assert {key: init_args[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.init_args.backbone.init_args.dkc", "static"], "dkc"),
        (["--model.init_args.backbone.init_args.dck", "dynamic"], "dynamic"),
        (["--model.init_args.backbone", "vgg16"], "vgg16"),
        (["--model.init_args.model_kwargs", "{dck: static}"], "model_kwargs"),
    ],
)
def test_a_wrong_backbone_key_or_value_stops_before_anything_runs(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--run.root", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing ran: no run folder


def test_config_and_load_runs_carry_backbone_defaults(tmp_path):
    from dck_lightning.analysis import load_runs

    main(["fit", *tiny_args(tmp_path, "--run.wandb", "disabled")])
    saved = yaml.safe_load((tmp_path / "default" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["backbone"]["init_args"]["gcm"] is True
    runs = load_runs(tmp_path)
    assert runs["model.init_args.backbone.init_args.dck"].tolist() == ["adaptive"]
    assert runs["model.init_args.backbone.init_args.deform"].tolist() == [True]


def test_default_root_dir_holds_the_run_folders(tmp_path):
    """Lightning's ``--trainer.default_root_dir`` is where the run folder goes (over run.root)."""
    cli = main(
        [
            "fit",
            *tiny_args(tmp_path / "runs", "--run.wandb", "disabled"),
            "--trainer.default_root_dir",
            str(tmp_path / "elsewhere"),
        ]
    )
    run_dir = tmp_path / "elsewhere" / "default" / "version_0"
    assert Path(cli.run_dir) == run_dir and cli.trainer.default_root_dir == str(run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "runs").exists()


def test_learning_rate_is_logged_at_the_schedulers_pace(tmp_path):
    """A per-step schedule's learning rate is in metrics.csv at every step, a per-epoch one's
    once per epoch."""
    import csv

    for interval, expected in (("step", 4), ("epoch", 2)):
        cli = main(
            [
                "fit",
                *tiny_args(tmp_path, "--run.wandb", "disabled", "--run.name", interval),
                "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1",
                "--model.init_args.lr_scheduler", "CosineAnnealingLR",
                "--model.init_args.lr_scheduler_interval", interval,
            ]
        )  # fmt: skip
        with open(Path(cli.run_dir) / "metrics.csv", newline="") as file:
            rows = [row for row in csv.DictReader(file) if row.get("lr-AdamW/weights")]
        assert len(rows) == expected, interval


def test_the_embedded_default_does_not_leak_into_a_config(capsys):
    """jsonargparse merges a config's init_args into the defaults': the demo's one-cycle
    schedule, head and ResNet-D shortcuts must not reach a config that leaves them out."""
    seed = print_config(capsys, "-c", str(REPO / "configs" / "mnist_seed.yaml"))
    assert seed["model"]["init_args"]["lr_scheduler"] is None
    assert seed["model"]["init_args"]["feature"] != DEFAULT_MODEL["init_args"]["feature"]
    detection = print_config(capsys, "-c", str(REPO / "configs" / "shapes_detection.yaml"))
    assert detection["model"]["init_args"]["backbone"]["init_args"]["downsample"] == "conv"
    trainer_only = print_config(capsys, "-c", str(REPO / "configs" / "trainer" / "ddp.yaml"))
    assert trainer_only["model"] == print_config(capsys)["model"]  # a trainer file keeps both
    data_only = print_config(capsys, "--data", "dck_lightning.data.MNISTDataModule")
    assert data_only["model"]["init_args"]["lr_scheduler"]["class_path"].endswith("OneCycleLR")
    assert data_only["data"]["init_args"]["batch_size"] != DEFAULT_DATA["init_args"]["batch_size"]


def test_the_result_lines_come_last_after_the_wandb_run_is_finished(tmp_path, capsys, monkeypatch):
    """W&B prints its run summary when the run is finished; ``Finished fit: …`` (metric,
    checkpoints, run folder) comes after it, as the command's last lines."""
    import dck_lightning.cli as cli_module

    finish = cli_module._finish_wandb_run

    def finish_and_say(*args):
        print("W&B run summary")
        finish(*args)

    monkeypatch.setattr(cli_module, "_finish_wandb_run", finish_and_say)
    main(["fit", *tiny_args(tmp_path, "--run.wandb", "disabled")])
    out = capsys.readouterr().out.strip().splitlines()
    result = next(i for i, line in enumerate(out) if line.startswith("Finished fit: val/acc"))
    assert out.index("W&B run summary") < result
    assert out[result + 1].startswith("  best checkpoint: ")
    assert out[-1] == f"  logs and config: {(tmp_path / 'default' / 'version_0').resolve()}"


def test_validate_and_test_take_a_run_folder_as_ckpt_path(tmp_path, capsys, caplog):
    """``--ckpt_path <run folder>`` is that run's best checkpoint (a log line says which)."""
    import logging

    main(["fit", *tiny_args(tmp_path, "--run.wandb", "disabled")])
    run_dir = tmp_path / "default" / "version_0"
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    for command in ("validate", "test"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            args = tiny_args(tmp_path, "--run.wandb", "disabled")
            main([command, *args, "--ckpt_path", str(run_dir)])
        assert f"--ckpt_path {run_dir}: the run's best checkpoint, {best}" in caplog.text
    assert "Finished test: test/acc" in capsys.readouterr().out


def test_a_run_folder_without_checkpoints_as_ckpt_path_is_one_error_line(tmp_path, capsys):
    run_dir = tmp_path / "default" / "version_0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("{}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--run.root", str(tmp_path / "runs"), "--ckpt_path", str(run_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"dck: error: --ckpt_path {run_dir}: a folder without checkpoints" in err
    assert not (tmp_path / "runs").exists()  # stopped before anything was made


def test_readme_config_table_gives_the_default_configs_epochs():
    epochs = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["trainer"][
        "max_epochs"
    ]
    readme = (REPO / "README.md").read_text().splitlines()
    row = next(line for line in readme if line.startswith("| `configs/default.yaml` |"))
    assert row.rstrip(" |").endswith(f", {epochs} epochs"), row

"""What ``dck`` says about a bad command line: a few lines naming the key, what is wrong and the
nearest valid keys or choices; no abbreviations; the commands and ``--version`` in ``dck``."""

from __future__ import annotations

import runpy
import sys

import pytest

from dck_lightning import __version__
from dck_lightning.cli import main
from dck_lightning.cli_errors import find_problem

DCK = "model.init_args.backbone.init_args.dck"


def error_lines(capsys, *args: str) -> list[str]:
    """stderr of ``dck <args>``, which must stop with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("dck: error:"))
    return lines[first:]  # after any warning Python printed


@pytest.mark.parametrize(
    ("args", "first", "hint"),
    [
        # an abbreviation is an error (it used to train with max_epochs)
        (
            ["--trainer.max_epoch", "1"],
            "unknown key --trainer.max_epoch (on the command line)",
            "did you mean: --trainer.max_epochs",
        ),
        (
            ["--model.init_args.backbon.init_args.dck", "adaptive"],
            "unknown key --model.init_args.backbon.init_args.dck",
            f"did you mean: --{DCK}",
        ),
        (
            ["--model.init_args.backbone.init_args.widht", "3"],
            "unknown key --model.init_args.backbone.init_args.widht",
            "did you mean: --model.init_args.backbone.init_args.widths",
        ),
        (
            [f"--{DCK}", "adaptve"],
            f"--{DCK}: 'adaptve' is not one of adaptive, static, off",
            "did you mean: adaptive",
        ),
        (
            ["--trainer.max_epochs", "many"],
            "--trainer.max_epochs: expected int, got 'many'",
            "see: dck fit --help",
        ),
        (
            ["--data.init_args.batch_size", "lots"],
            "--data.init_args.batch_size: expected int, got 'lots'",
            "see: dck fit --help",
        ),
        (
            ["--model.init_args.backbone", "dcb_smal"],
            "--model.init_args.backbone: invalid value 'dcb_smal'",
            "did you mean: dcb_small",
        ),
        (
            ["--model.init_args.optimizer.init_args.lrr", "0.1"],
            "unknown key --model.init_args.optimizer.init_args.lrr",
            "did you mean: --model.init_args.optimizer.init_args.lr",
        ),
    ],
)
def test_a_bad_key_or_value_is_a_few_lines_with_the_nearest_valid_one(capsys, args, first, hint):
    lines = error_lines(capsys, "fit", *args)
    assert len(lines) <= 5, lines
    assert lines[0].startswith(f"dck: error: {first}"), lines
    assert any(line.strip().startswith(hint) for line in lines), lines
    assert lines[-1].startswith("  see: dck fit --help")
    assert not any("NestedArg" in line or "Union" in line for line in lines)


def test_a_misspelt_key_in_a_config_file_names_the_file(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text("trainer:\n  max_epoch: 1\n")
    lines = error_lines(capsys, "fit", "-c", str(config))
    assert lines[0] == f"dck: error: unknown key --trainer.max_epoch (in {config})"
    assert lines[1].startswith("  did you mean: --trainer.max_epochs")


def test_a_key_inside_a_class_points_to_that_class_help(capsys):
    lines = error_lines(capsys, "fit", "--model.init_args.lr_schedulr_interval", "step")
    assert lines[-1] == "  see: dck fit --help or dck fit --model.help ClassificationTask"


def test_an_unknown_command_names_the_commands(capsys):
    lines = error_lines(capsys, "fitt")
    assert lines[0] == (
        "dck: error: no command 'fitt'; dck runs fit, validate, test, predict, sweep, export"
    )
    assert lines[1:] == ["  did you mean: dck fit", "  see: dck --help"]


def test_find_problem_follows_the_given_class_through_nested_unions():
    message = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'dck_lightning.tasks.base.BaseTask'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'dck_lightning.tasks.ClassificationTask':
        Parser key "backbone":
          Does not validate against any of the Union subtypes
          Errors:
            - Type <class 'X'> expects a function or a callable class: Parser key "dck":
                Expected a typing.Literal['adaptive', 'static', 'off']. Got value: adaptve. Got value: Namespace(class_path='dck_lightning.models.dcb_small', init_args=Namespace(dck='adaptve'))
            - Type <class 'Y'> expects a function or a callable class: Expected 'dck_lightning.models.dcb_small' to be a subclass of <class 'SeedNet'>.
          Given value: NestedArg(key='dck', val='adaptve')
    - Expected a <class 'NoneType'>
  Given value: NestedArg(key='backbone.init_args.dck', val='adaptve')"""  # noqa: E501
    problem = find_problem(message)
    assert (problem.key, problem.kind, problem.given) == (DCK, "choice", "adaptve")
    assert problem.choices == ["adaptive", "static", "off"]


def test_help_lists_sweep_and_export_and_version_prints_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "sweep", "export"):
        assert f"\n    {command} " in out, command
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"dck_lightning {__version__}"


def test_python_m_dck_lightning_is_dck(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dck", "--version"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("dck_lightning", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"dck_lightning {__version__}"


def test_main_runs_sweep_and_export_too(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--root", str(tmp_path), "--grid", f"{DCK}=[static]", "--dry-run"])
    assert exit_info.value.code == 0
    assert "1 of 1 runs to do" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "onnx"])
    assert exit_info.value.code == 2
    assert "missing.ckpt" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "abbreviated"),
    [
        (["sweep", "--grid", f"{DCK}=[static]", "--seed", "2", "--dry-run"], "--seed"),
        (["export", "--ckpt_path", "x.ckpt", "--format", "onnx", "--image", "32"], "--image"),
    ],
)
def test_sweep_and_export_take_no_abbreviations_either(tmp_path, capsys, args, abbreviated):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *(["--root", str(tmp_path)] if args[0] == "sweep" else [])])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {abbreviated}" in capsys.readouterr().err

"""scripts/report_sweep_metrics.py: several test metrics of a sweep, mean ± std, paired differences."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from dck_lightning.sweep import STATUS_FILE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def report():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import report_sweep_metrics

        yield report_sweep_metrics
    finally:
        sys.path.remove(str(REPO / "scripts"))


def fake_run(root: Path, combination: str, seed: int, metrics: dict, state: str = "finished"):
    run_dir = root / "sweep" / combination / f"seed_{seed}"
    run_dir.mkdir(parents=True)
    config = {"model": {"class_path": "dck_lightning.tasks.detection.DetectionTask"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    names = ["model/parameters", "model/gflops", *metrics]
    rows = ["epoch,step," + ",".join(names), ",0,1000,0.5" + "," * len(metrics)]
    rows.append(",9,,," + ",".join(str(v) for v in metrics.values()))
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    (run_dir / STATUS_FILE).write_text(json.dumps({"state": state}))


def test_means_per_combination_and_differences_paired_by_seed(report, tmp_path, capsys):
    values = {  # seed -> (dcb, plain) test/map_small; test/ap/star
        1: ((0.50, 0.40), (0.7, 0.6)),
        2: ((0.60, 0.40), (0.8, 0.8)),
        3: ((0.70, 0.70), (0.9, 0.7)),
    }
    for seed, ((dcb, plain), (dcb_star, plain_star)) in values.items():
        fake_run(tmp_path, "dcb", seed, {"test/map_small": dcb, "test/ap/star": dcb_star})
        fake_run(tmp_path, "plain", seed, {"test/map_small": plain, "test/ap/star": plain_star})
    fake_run(tmp_path, "plain", 4, {"test/map_small": 0.0, "test/ap/star": 0.0}, state="failed")
    out = tmp_path / "RESULTS.md"
    report.main(
        [str(tmp_path / "sweep"), "--metrics", "test/map_small", "test/ap/*", "--baseline",
         "plain", "--write", str(out), "--section", "claim2"]
    )  # fmt: skip
    text = out.read_text()
    # dcb: 0.6 ± 0.1 and 0.8 ± 0.1; plain (the failed seed 4 left out): 0.5 ± 0.173, 0.7 ± 0.1
    assert "| dcb | 3 | 0.600 ± 0.100 | 0.800 ± 0.100 | 1,000 | 0.500 |" in text
    assert "| plain | 3 | 0.500 ± 0.173 | 0.700 ± 0.100 | 1,000 | 0.500 |" in text
    # differences per seed: 0.1, 0.2, 0.0 -> 0.1 ± 0.1; 0.1, 0.0, 0.2 -> 0.1 ± 0.1
    assert "| dcb | 3 | 0.100 ± 0.100 | 0.100 ± 0.100 |" in text
    assert text.count("<!-- claim2:start -->") == 1
    assert "report_sweep_metrics.py" in capsys.readouterr().out


def test_an_unknown_baseline_or_an_empty_sweep_is_a_clear_error(report, tmp_path):
    fake_run(tmp_path, "dcb", 1, {"test/map": 0.5})
    with pytest.raises(SystemExit, match="'nope' is not a combination"):
        report.main([str(tmp_path / "sweep"), "--metrics", "test/map", "--baseline", "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no finished run folders"):
        report.main([str(tmp_path / "empty"), "--metrics", "test/map"])

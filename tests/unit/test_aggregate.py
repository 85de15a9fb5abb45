"""Study tables: mean and standard error over seeds (ddof=1), deltas to the random row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from geosem.aggregate import aggregate_study


def _fake_run(root: Path, init: str, seed: int, miou: float, pacc: float) -> Path:
    run_dir = root / f"seg-{init}-s{seed}"
    run_dir.mkdir(parents=True)
    run = {
        "run_id": run_dir.name,
        "seed": seed,
        "init": {"name": init},
        "model": {"encoder": "resnet18"},
        "task": {"mode": "all"},
        "data": {"train_size": 16},
    }
    (run_dir / "run.yaml").write_text(yaml.safe_dump(run))
    (run_dir / "metrics.json").write_text(json.dumps({"test_miou": miou, "test_pixel_accuracy": pacc}))
    pd.DataFrame({"step": [5, 10], "test_miou": [miou / 2, miou]}).to_csv(run_dir / "curves.csv", index=False)
    return run_dir


def test_table_statistics_and_layout(tmp_path: Path) -> None:
    values = {"random": [0.20, 0.30, 0.40], "depth_supervised": [0.50, 0.52, 0.60]}
    runs = [
        _fake_run(tmp_path / "runs", init, seed, miou, 0.5 + miou / 2)
        for init, mious in values.items()
        for seed, miou in enumerate(mious)
    ]
    out = tmp_path / "results"
    table = aggregate_study(
        "unit",
        runs,
        table_csv=out / "t.csv",
        table_md=out / "t.md",
        metrics_path=out / "m.json",
        curves_plot=out / "c.png",
    )
    row = table.set_index("init").loc["depth_supervised"]
    expected_se = pd.Series(values["depth_supervised"]).std(ddof=1) / math.sqrt(3)
    assert row["miou_mean"] == pytest.approx(0.54)
    assert row["miou_se"] == pytest.approx(expected_se)
    assert row["miou_delta"] == pytest.approx(0.54 - 0.30)
    assert row["n_seeds"] == 3 and row["seeds"] == "0 1 2"
    markdown = (out / "t.md").read_text()
    assert "| depth_supervised | 54.0 ± " in markdown and "(+24.0)" in markdown
    assert "| random | 30.0 ± 5.8 |" in markdown  # SE of 0.2, 0.3, 0.4 is 0.0577
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["unit"]["random"]["resnet18-all-n16"]["miou_mean"] == pytest.approx(0.3)
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unfinished_run_is_named(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "random", 0, 0.1, 0.2)
    (run / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        aggregate_study(
            "x",
            [run],
            table_csv=tmp_path / "a",
            table_md=tmp_path / "b",
            metrics_path=tmp_path / "c",
            curves_plot=tmp_path / "d.png",
        )

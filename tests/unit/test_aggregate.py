"""Study tables: mean and standard error over seeds (ddof=1), deltas to the random row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from geosem.aggregate import aggregate_study


def _fake_run(
    root: Path, init: str, seed: int, miou: float, pacc: float, variant: str = "64x192-v2", pre: str = ""
) -> Path:
    run_dir = root / f"seg-{init}-{variant}-{pre}-s{seed}"
    run_dir.mkdir(parents=True)
    run = {
        "run_id": run_dir.name,
        "seed": seed,
        "init": {"name": init, **({"variant": pre} if pre else {})},
        "model": {"encoder": "resnet18"},
        "task": {"mode": "all"},
        "data": {"train_size": 16, "variant": variant},
        "loop": {"lr": 0.0005},
    }
    (run_dir / "run.yaml").write_text(yaml.safe_dump(run))
    metrics = {"test_miou": miou, "test_pixel_accuracy": pacc, "train_samples": 16}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
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


def test_paper_labels_resolution_rows_and_unavailable_rows(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path / "runs", "random", seed, 0.2 + 0.01 * seed, 0.5, variant="96x320-v2")
        for seed in range(2)
    ]
    runs += [
        _fake_run(tmp_path / "runs", "depth_mono_rand", seed, 0.3 + 0.01 * seed, 0.6, "96x320-v2", pre)
        for seed in range(2)
        for pre in ("64x192-v2", "96x320-v2")
    ]
    out = tmp_path / "results"
    unavailable = [
        {"init": "imagenet", "encoder": "resnet18", "reason": "ImageNet weights of resnet18 missing"}
    ]
    table = aggregate_study(
        "fig5",
        runs,
        table_csv=out / "t.csv",
        table_md=out / "t.md",
        metrics_path=out / "m.json",
        curves_plot=out / "c.png",
        labels={"random": "None", "depth_mono_rand": "Depth-Rand"},
        unavailable=unavailable,
    )
    # Pre-trained at 64x192, fine-tuned at 96x320: its own row, compared with the same baseline.
    assert sorted(table["init"]) == ["depth_mono_rand", "depth_mono_rand@64x192", "random"]
    transferred = table.set_index("init").loc["depth_mono_rand@64x192"]
    assert transferred["resolution_pair"] == "64x192 -> 96x320"
    assert transferred["miou_delta"] == pytest.approx(0.1)
    markdown = (out / "t.md").read_text()
    assert "| None | 20.5 ± 0.5 |" in markdown
    assert "| Depth-Rand (pre-trained at 64x192) | 30.5 ± 0.5 (+10.0) |" in markdown
    assert "| imagenet | unavailable | unavailable | unavailable | 0 |" in markdown
    assert "- imagenet (resnet18): ImageNet weights of resnet18 missing" in markdown
    csv = pd.read_csv(out / "t.csv")
    assert csv.set_index("init").loc["imagenet", "unavailable"] == "ImageNet weights of resnet18 missing"

"""The pre-training table over pre-training seeds (mean ± SE, n), its per-step table and curves figure,
from fabricated finished pre-trainings: real run.yaml, metrics.json and curves.csv files."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from geosem.aggregate.pretrain import write_pretrain_table
from geosem.aggregate.pretrain_steps import shown_steps
from geosem.snapshot import write_snapshot

from tests.helpers import cli_env, markdown_tables

STEPS = [100, 200, 300]
# Per seed: abs_rel and delta1 at each step of STEPS; the last step is the final score (metrics.json).
ABS_REL = {0: [0.60, 0.50, 0.41], 1: [0.58, 0.47, 0.44], 2: [0.65, 0.52, 0.50]}
DELTA1 = {0: [0.20, 0.30, 0.42], 1: [0.22, 0.33, 0.40], 2: [0.18, 0.29, 0.45]}
MASKED_L1 = [0.40, 0.30, 0.25]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pretrain_run(root: Path, init: str, task: str, seed: int, curves: dict[str, list[float]]) -> Path:
    """A finished pre-training of ``init`` (task ``task``) with ``seed``; its final scores are the
    curves' last values, as the trainer writes them."""
    run_dir = root / f"{init}-resnet18-synth_driving-64x192-v3-s{seed}"
    snapshot = {
        "run_id": run_dir.name,
        "kind": "pretrain",
        "seed": seed,
        "task": {"name": task, "init": init, "encoder_init": "random"},
        "model": {"encoder": "resnet18"},
        "data": {"dataset": "synth_driving", "variant": "64x192-v3", "height": 64, "width": 192},
        "loop": {"steps": STEPS[-1]},
        "evaluation": {},
        "compute": {},
    }
    write_snapshot(snapshot, run_dir / "run.yaml")
    metrics = {"steps": STEPS[-1], **{name: values[-1] for name, values in curves.items()}}
    if "depth_abs_rel" in curves:
        metrics |= {"depth_median_scaled": False, "depth_eval_crop": "garg"}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    frame = pd.DataFrame({"step": STEPS, "train_loss": [1.0, 0.8, 0.7], "lr": 1e-4, **curves})
    frame.to_csv(run_dir / "curves.csv", index=False)
    return run_dir


def _study_runs(root: Path) -> list[Path]:
    """depth_supervised with 3 pre-training seeds, mae_seed with one."""
    runs = [
        _pretrain_run(
            root,
            "depth_supervised",
            "depth_supervised",
            seed,
            {"depth_abs_rel": ABS_REL[seed], "depth_delta1": DELTA1[seed]},
        )
        for seed in ABS_REL
    ]
    return [*runs, _pretrain_run(root, "mae_seed", "mae", 0, {"test_masked_l1": MASKED_L1})]


def _mean_se(values: list[float]) -> str:
    """The table's cell, computed here with the standard library: mean ± stdev (n - 1) / sqrt(n)."""
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):.3f} ± {se:.3f}"


def _write(root: Path, runs: list[Path]) -> tuple[pd.DataFrame, list[list[list[str]]]]:
    table = write_pretrain_table("unit", runs, root / "t.csv", root / "t.md", plot_path=root / "c.png")
    return table, markdown_tables((root / "t.md").read_text())


def test_an_init_is_one_row_over_its_pretraining_seeds(tmp_path: Path) -> None:
    _, (summary, _) = _write(tmp_path, _study_runs(tmp_path / "runs"))
    header = summary[0]
    rows = {row[0]: dict(zip(header, row, strict=True)) for row in summary[2:]}
    assert list(rows) == ["depth_supervised", "mae_seed"]
    depth = rows["depth_supervised"]
    assert depth["n"] == "3" and depth["encoder"] == "resnet18" and depth["data"] == "synth_driving 64x192-v3"
    assert depth["abs_rel"] == _mean_se([ABS_REL[s][-1] for s in ABS_REL])
    assert depth["delta1"] == _mean_se([DELTA1[s][-1] for s in DELTA1])
    assert depth["crop"] == "garg" and depth["median scaled"] == "no"
    # One seed: its value, without a ±.
    assert rows["mae_seed"]["n"] == "1" and rows["mae_seed"]["other score"] == "masked_l1 0.250"
    # The csv keeps every run, long form with its seed.
    csv = pd.read_csv(tmp_path / "t.csv")
    assert len(csv) == 4 and csv.loc[csv["init"] == "depth_supervised", "seed"].tolist() == [0, 1, 2]
    assert csv.loc[csv["seed"] == 1, "abs_rel"].iloc[0] == pytest.approx(ABS_REL[1][-1])


def test_the_step_table_holds_each_inits_score_at_each_step(tmp_path: Path) -> None:
    _, (_, steps) = _write(tmp_path, _study_runs(tmp_path / "runs"))
    assert steps[0] == ["init", "encoder", "data", "n", "score", "step 100", "step 200", "step 300"]
    depth, mae = steps[2], steps[3]
    assert depth[:5] == ["depth_supervised", "resnet18", "synth_driving 64x192-v3", "3", "abs_rel / delta1"]
    for k, cell in enumerate(depth[5:]):
        abs_rel = statistics.mean(ABS_REL[s][k] for s in ABS_REL)
        delta1 = statistics.mean(DELTA1[s][k] for s in DELTA1)
        assert cell == f"{abs_rel:.3f} / {delta1:.3f}"
    assert mae == [
        "mae_seed",
        "resnet18",
        "synth_driving 64x192-v3",
        "1",
        "masked_l1",
        "0.400",
        "0.300",
        "0.250",
    ]


def test_the_curves_figure_is_a_png(tmp_path: Path) -> None:
    _write(tmp_path, _study_runs(tmp_path / "runs"))
    png = tmp_path / "c.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = plt.imread(png).shape  # decodes: a whole image, not just a header
    assert width > height > 100  # two depth panels and the MAE panel side by side


def test_a_run_without_curves_is_named(tmp_path: Path) -> None:
    runs = _study_runs(tmp_path / "runs")
    (runs[1] / "curves.csv").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{runs[1].name}/curves\.csv is missing"):
        _write(tmp_path, runs)
    assert not (tmp_path / "t.md").exists()  # nothing half written


def test_two_runs_of_one_init_and_seed_are_refused(tmp_path: Path) -> None:
    """Averaging them would hide what tells them apart (here: another folder, the same snapshot keys)."""
    first = _pretrain_run(tmp_path / "a", "mae_seed", "mae", 0, {"test_masked_l1": MASKED_L1})
    second = _pretrain_run(tmp_path / "b", "mae_seed", "mae", 0, {"test_masked_l1": MASKED_L1})
    with pytest.raises(ValueError, match="same init and seed"):
        _write(tmp_path, [first, second])


def test_a_long_run_shows_at_most_eight_steps_first_and_last_among_them() -> None:
    steps = list(range(100, 2100, 100))
    shown = shown_steps(steps)
    assert len(shown) == 8 and shown[0] == 100 and shown[-1] == 2000 and shown == sorted(set(shown))
    assert shown_steps(STEPS) == STEPS


def test_a_study_without_pretrainings_writes_empty_tables(tmp_path: Path) -> None:
    """A study of random and ImageNet rows only: the rule still runs, with nothing to show."""
    _write(tmp_path, [])
    assert "No pre-training has a scored evaluation step." in (tmp_path / "t.md").read_text()
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow  # a geosem process
def test_the_command_line_writes_table_and_figure(tmp_path: Path) -> None:
    """As rule aggregate_pretrain runs it."""
    runs = [str(run) for run in _study_runs(tmp_path / "runs")]
    out = tmp_path / "out"
    command = ["geosem", "aggregate-pretrain", "--study", "unit", "--runs", *runs]
    command += ["--csv", str(out / "t.csv"), "--md", str(out / "t.md"), "--plot", str(out / "c.png")]
    result = subprocess.run(command, capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0, result.stderr
    assert "against pre-training step" in result.stdout
    assert (out / "c.png").read_bytes()[:8] == PNG_SIGNATURE

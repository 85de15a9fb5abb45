"""Study tables: mean and standard error over seeds (ddof=1), deltas to the random row, the papers'
two-level markdown layout with the tests beneath, narrow DVC metrics, and rendering from the csv alone."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from geosem.aggregate import aggregate_study, render_study
from geosem.aggregate.pretrain import collect_pretrain_runs
from geosem.snapshot import write_snapshot

from tests.helpers import REPO, fake_finetune_run, markdown_tables


def _aggregate(study: str, runs: list[Path], out: Path, **kwargs: Any) -> pd.DataFrame:
    return aggregate_study(
        study,
        runs,
        table_csv=out / "t.csv",
        table_md=out / "t.md",
        metrics_dir=out / "metrics" / study,
        curves_plot=out / "c.png",
        **kwargs,
    )


def _metrics(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(folder).as_posix(): json.loads(path.read_text()) for path in folder.rglob("*.json")
    }


SIMPLE = {"random": [0.20, 0.30, 0.40], "depth_supervised": [0.50, 0.52, 0.60]}


def _simple_runs(root: Path) -> list[Path]:
    return [
        fake_finetune_run(root, init, seed, miou, 0.5 + miou / 2)
        for init, mious in SIMPLE.items()
        for seed, miou in enumerate(mious)
    ]


def test_table_statistics(tmp_path: Path) -> None:
    table = _aggregate("unit", _simple_runs(tmp_path / "runs"), tmp_path / "results")
    row = table.set_index("init").loc["depth_supervised"]
    expected_se = pd.Series(SIMPLE["depth_supervised"]).std(ddof=1) / math.sqrt(3)
    assert row["miou_mean"] == pytest.approx(0.54)
    assert row["miou_se"] == pytest.approx(expected_se)
    assert row["miou_delta"] == pytest.approx(0.54 - 0.30)
    assert row["n_seeds"] == 3 and row["seeds"] == "0 1 2"
    assert (tmp_path / "results" / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_has_a_two_level_header_and_the_tests_beneath(tmp_path: Path) -> None:
    _aggregate("unit", _simple_runs(tmp_path / "runs"), tmp_path / "results")
    markdown = (tmp_path / "results" / "t.md").read_text()
    scores, tests = markdown_tables(markdown)
    # Level 1: the setting, spanning its mIoU and P.Acc columns; level 2: the first body row.
    assert scores[0] == ["Pre-training", "r18-all-n16", ""]
    assert set("".join(scores[1])) == {"-"}  # the delimiter row
    assert scores[2] == ["", "mIoU", "P.Acc"]
    assert scores[3] == ["random", "30.0 ± 5.8", "65.0 ± 2.9"]  # SE of 0.2, 0.3, 0.4 is 0.0577
    assert scores[4][0] == "depth_supervised" and scores[4][1].startswith("54.0 ± ")
    assert scores[4][1].endswith("(+24.0)")
    # The tests: same rows, one column per setting, seed counts of both sides.
    assert tests[0] == ["Pre-training", "r18-all-n16", "seeds", "pre-trainings"]
    assert tests[2] == ["random", "baseline (3)", "0 1 2", "–"]  # no pre-training
    assert tests[3][0] == "depth_supervised" and " (3 vs 3); paired " in tests[3][1]
    assert tests[3][1].endswith(" (3)") and tests[3][3] == "1"  # 3 matched seeds, one shared pre-training
    assert markdown.index("Welch") > markdown.index("| random ")  # explained beneath the scores
    assert "ddof=1" in markdown and "r18 = resnet18" in markdown
    # Columns are padded to one width, so the table also reads as plain text.
    assert len({len(line) for line in markdown.splitlines() if line.startswith("|")}) == 2


def test_metrics_are_one_small_file_per_setting_and_init(tmp_path: Path) -> None:
    _aggregate("unit", _simple_runs(tmp_path / "runs"), tmp_path / "results")
    folder = tmp_path / "results" / "metrics" / "unit"
    metrics = _metrics(folder)
    assert set(metrics) == {"r18-all-n16/random.json", "r18-all-n16/depth_supervised.json"}
    assert metrics["r18-all-n16/random.json"] == {"miou": 30.0, "miou_se": 5.77, "pacc": 65.0, "n": 3}
    depth = metrics["r18-all-n16/depth_supervised.json"]
    assert set(depth) == {"miou", "miou_se", "pacc", "p_welch", "p_paired", "n"}
    assert depth["miou"] == 54.0 and 0 < depth["p_welch"] < 1
    # A rerun without a setting leaves no stale file, and the old one-file layout is removed.
    (tmp_path / "results" / "metrics" / "unit.json").write_text("{}")
    runs = [
        fake_finetune_run(tmp_path / "runs2", "random", seed, 0.1 * seed, 0.5, mode="frozen")
        for seed in range(2)
    ]
    _aggregate("unit", runs, tmp_path / "results")
    assert set(_metrics(folder)) == {"r18-frozen-n16/random.json"}
    assert not (tmp_path / "results" / "metrics" / "unit.json").exists()


def test_an_unfinished_run_is_named(tmp_path: Path) -> None:
    run = fake_finetune_run(tmp_path, "random", 0, 0.1, 0.2)
    (run / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"metrics\.json"):
        _aggregate("x", [run], tmp_path / "out")


def test_a_pretrained_init_must_record_its_resolution(tmp_path: Path) -> None:
    run = fake_finetune_run(tmp_path, "depth_mono_rand", 0, 0.1, 0.2, pre="64x192-v3")
    snapshot = yaml.safe_load((run / "run.yaml").read_text())
    del snapshot["init"]["height"]
    (run / "run.yaml").write_text(yaml.safe_dump(snapshot))
    with pytest.raises(ValueError, match="height and width"):
        _aggregate("x", [run], tmp_path / "out")


def _resolution_study(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    runs = [
        fake_finetune_run(tmp_path / "runs", "random", seed, 0.2 + 0.01 * seed, 0.5, variant="96x320-v3")
        for seed in range(2)
    ]
    runs += [
        fake_finetune_run(
            tmp_path / "runs", "depth_mono_rand", seed, 0.3 + 0.01 * seed, 0.6, "96x320-v3", pre
        )
        for seed in range(2)
        for pre in ("64x192-v3", "96x320-v3")
    ]
    unavailable = [
        {"init": "imagenet", "encoder": "resnet18", "reason": "ImageNet weights of resnet18 missing"}
    ]
    labels = {"random": "None", "depth_mono_rand": "Depth-Rand"}
    out = tmp_path / "results"
    return _aggregate("fig5", runs, out, labels=labels, unavailable=unavailable), out


def test_paper_labels_resolution_rows_and_unavailable_rows(tmp_path: Path) -> None:
    table, out = _resolution_study(tmp_path)
    # Pre-trained at 64x192, fine-tuned at 96x320: its own row, compared with the same baseline.
    assert sorted(table["init"]) == ["depth_mono_rand", "depth_mono_rand@64x192", "random"]
    transferred = table.set_index("init").loc["depth_mono_rand@64x192"]
    assert transferred["resolution_pair"] == "64x192 -> 96x320"
    assert transferred["miou_delta"] == pytest.approx(0.1)
    scores, tests = markdown_tables((out / "t.md").read_text())
    rows = {row[0]: row[1:] for row in scores[2:]}
    assert rows["None"] == ["20.5 ± 0.5", "50.0 ± 0.0"]
    assert rows["Depth-Rand (pre-trained at 64x192)"][0] == "30.5 ± 0.5 (+10.0)"
    assert rows["imagenet"] == ["unavailable", "unavailable"]
    assert tests[-1] == ["imagenet", "unavailable", "–", "–"]
    assert "- imagenet (resnet18): ImageNet weights of resnet18 missing" in (out / "t.md").read_text()
    assert set(_metrics(out / "metrics" / "fig5")) == {
        "r18-all-n16/random.json",
        "r18-all-n16/depth_mono_rand.json",
        "r18-all-n16/depth_mono_rand@64x192.json",
    }
    csv = pd.read_csv(out / "t.csv")
    assert csv.set_index("init").loc["imagenet", "unavailable"] == "ImageNet weights of resnet18 missing"
    assert (
        csv["train_size"].dropna().map(float.is_integer).all() and "16.0" not in (out / "t.csv").read_text()
    )


def test_the_csv_alone_renders_the_same_markdown_and_metrics(tmp_path: Path) -> None:
    _, out = _resolution_study(tmp_path)
    again = tmp_path / "again"
    render_study("fig5", out / "t.csv", table_md=again / "t.md", metrics_dir=again / "metrics")
    assert (again / "t.md").read_text() == (out / "t.md").read_text()
    assert _metrics(again / "metrics") == _metrics(out / "metrics" / "fig5")
    # A csv written before the unavailable column existed (the committed results) renders too.
    old = pd.read_csv(out / "t.csv", keep_default_na=False, na_values=[""])  # keep the row name "None"
    old = old[old["unavailable"].isna()].drop(columns="unavailable")
    old.to_csv(tmp_path / "old.csv", index=False, float_format="%.6f")
    render_study("fig5", tmp_path / "old.csv", table_md=again / "old.md", metrics_dir=again / "old")
    assert "imagenet" not in (again / "old.md").read_text()
    assert _metrics(again / "old") == _metrics(out / "metrics" / "fig5")


def _run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow  # git and dvc processes
def test_dvc_metrics_show_fits_in_120_columns(tmp_path: Path) -> None:
    """A real ``dvc metrics show`` of a 2 encoders x 3 modes study, as the repository's dvc.yaml declares."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    shutil.copy2(REPO / "dvc.yaml", repo / "dvc.yaml")
    runs = [
        fake_finetune_run(tmp_path / "runs", init, seed, base + 0.01 * seed, 0.6, encoder=encoder, mode=mode)
        for init, base in (("random", 0.2), ("depth_supervised", 0.3), ("depth_mono_rand", 0.25))
        for encoder in ("resnet18", "resnet50")
        for mode in ("all", "frozen", "deeplabv3")
        for seed in range(3)
    ]
    _aggregate("a_table1", runs, repo / "results")
    shown = _run([sys.executable, "-m", "dvc", "metrics", "show"], repo)
    lines = shown.splitlines()
    assert len(lines) == 1 + 3 * 2 * 3, shown  # a header and one row per (setting, init)
    assert lines[0].split() == ["Path", "miou", "miou_se", "n", "p_welch", "pacc"]
    assert "results/metrics/a_table1/r50-dlv3-n16/depth_supervised.json" in shown
    assert max(map(len, lines)) <= 120, shown


def test_pretrain_table_names_inits_by_the_snapshot(tmp_path: Path) -> None:
    run_dir = tmp_path / "depth_mono_rand-resnet18-synth_driving-64x96-v3-s0"
    data = {"variant": "64x96-v3", "height": 64, "width": 96}
    snapshot = {
        "run_id": run_dir.name,
        "kind": "pretrain",
        "seed": 0,
        "task": {"name": "depth_mono", "init": "depth_mono_rand", "encoder_init": "random"},
        "model": {"encoder": "resnet18"},
        "data": data,
        "loop": {},
        "evaluation": {},
        "compute": {},
    }
    write_snapshot(snapshot, run_dir / "run.yaml")
    (run_dir / "metrics.json").write_text(json.dumps({"steps": 3, "depth_abs_rel": 0.2}))
    assert collect_pretrain_runs([run_dir])["init"].tolist() == ["depth_mono_rand"]
    del snapshot["task"]["init"]  # no name to fall back on: the run id is not parsed
    write_snapshot(snapshot, run_dir / "run.yaml")
    with pytest.raises(ValueError, match="does not name its init"):
        collect_pretrain_runs([run_dir])


def test_aggregated_curves_keep_each_steps_learning_rate(tmp_path: Path) -> None:
    """The setting's base learning rate must not overwrite the schedule's per-step ``lr`` column."""
    from geosem.aggregate import collect_runs

    run = fake_finetune_run(tmp_path, "random", 0, 0.3, 0.5)
    schedule = pd.DataFrame({"step": [5, 10], "lr": [2.5e-4, 1.25e-4], "test_miou": [0.1, 0.3]})
    schedule.to_csv(run / "curves.csv", index=False)
    runs, curves = collect_runs([run])
    assert curves["lr"].tolist() == [2.5e-4, 1.25e-4]
    assert curves["base_lr"].tolist() == [0.0005, 0.0005] and runs["lr"].tolist() == [0.0005]


def test_a_row_says_how_many_pretrainings_its_seeds_come_from(tmp_path: Path) -> None:
    """pretrain_seeds: paired gives each fine-tuning seed its own pre-training: 3 runs behind the row."""
    runs = [fake_finetune_run(tmp_path / "runs", "random", seed, 0.2 + 0.05 * seed, 0.5) for seed in range(3)]
    runs += [
        fake_finetune_run(
            tmp_path / "runs", "depth_supervised", seed, 0.3 + 0.07 * seed, 0.5, pretrain_seed=seed
        )
        for seed in range(3)
    ]
    table = _aggregate("paired", runs, tmp_path / "out").set_index("init")
    assert (
        table.loc["depth_supervised", "n_pretrain_runs"] == 3 and table.loc["random", "n_pretrain_runs"] == 0
    )
    _, tests = markdown_tables((tmp_path / "out" / "t.md").read_text())
    assert [row[-1] for row in tests[2:]] == ["–", "3"]

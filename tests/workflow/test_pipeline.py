"""Real Snakemake runs of the whole pipeline on a tiny synthetic world.

One session-scoped run (about a minute on 2 cores) serves several tests: the outputs, the DVC metrics,
the empty second dry run, and the rerun of exactly what a config edit touches.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import cli_env, job_counts, make_workdir, snakemake

pytestmark = pytest.mark.workflow


# The umask a shared project directory is typically used with: outputs must come out 0644 under it.
SHARED_UMASK = 0o022


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    workdir = make_workdir(tmp_path_factory.mktemp("workflow"))
    previous = os.umask(SHARED_UMASK)  # inherited by Snakemake and its jobs
    try:
        plan = snakemake(workdir, "-n")
        run = snakemake(workdir)
    finally:
        os.umask(previous)
    return workdir, plan.stdout + plan.stderr + "\n" + run.stderr


def test_dry_run_prints_the_plan(finished_run: tuple[Path, str]) -> None:
    _, output = finished_run
    counts = job_counts(output)
    # World generation is parallel by sequence: one job per drive (2 training + 1 held out), per
    # calibration date, per batch of rooms; then one conversion per shard set (4: the study's + 3 extra).
    assert (
        counts["driving_drive"] == 3
        and counts["driving_calibration"] == 2
        and counts["driving_semantics"] == 1
    )
    assert counts["indoor_batch"] == 2 and counts["indoor_files"] == 1
    assert counts["ade_world"] == 1 and counts["sun_world"] == 1 and counts["shards"] == 4
    assert counts["pretrain"] == 1  # one depth pre-training shared by both depth-init seeds
    assert counts["finetune"] == 4 and counts["run_snapshot"] == 5 and counts["aggregate"] == 1
    # The study's figures (tests/config/studies/tiny.yaml) and one DVC tracking job for all data.
    assert counts["plot_sizes"] == 1 and counts["gradcam"] == 1 and counts["version_data"] == 1


def test_results_have_every_seed_per_row(finished_run: tuple[Path, str]) -> None:
    workdir, _ = finished_run
    table = pd.read_csv(workdir / "results" / "tables" / "tiny.csv")
    assert sorted(table["init"]) == ["depth_supervised", "random"]
    assert (table["n_seeds"] == 2).all() and (table["seeds"] == "0 1").all()
    assert table["miou_mean"].between(0, 1).all() and table["miou_se"].notna().all()
    markdown = (workdir / "results" / "tables" / "tiny.md").read_text()
    for init in ("random", "depth_supervised"):
        assert re.search(rf"\| {init} +\| \d+\.\d ± \d+\.\d", markdown), markdown
    # One small metrics file per (setting, init): `dvc metrics show` stays a narrow table.
    metrics = sorted(
        p.relative_to(workdir / "results" / "metrics")
        for p in (workdir / "results" / "metrics").rglob("*.json")
    )
    assert [str(p) for p in metrics] == [
        "tiny/r18-all-n4/depth_supervised.json",
        "tiny/r18-all-n4/random.json",
    ]
    assert (workdir / "results" / "plots" / "tiny_curves.png").stat().st_size > 1000
    snapshot = yaml.safe_load(
        (
            workdir
            / "runs/finetune/seg-depth_supervised-all-resnet18-synth_driving-64x96-v3-p4-n4-s1/run.yaml"
        ).read_text()
    )
    assert snapshot["init"]["run_id"] == "depth_supervised-resnet18-synth_driving-64x96-v3-p4-s0"
    # A finished run keeps no checkpoint, and training logs carry a progress bar.
    assert not list((workdir / "runs").rglob("checkpoint.pt"))
    pretrain_log = (
        workdir / "logs" / "pretrain" / "depth_supervised-resnet18-synth_driving-64x96-v3-p4-s0.log"
    ).read_text()
    assert "3/3 [" in pretrain_log


def test_verify_passes_on_the_pipeline_shards(finished_run: tuple[Path, str]) -> None:
    workdir, _ = finished_run
    sets = [
        "shards/synth_driving/64x96-v3-p4",
        "shards/synth_indoor/32x48-v1-p4",
        "shards/synth_ade/32x32-v1-p4",
        "shards/synth_sun/32x32-v1-p4",
    ]
    result = subprocess.run(
        [Path(sys.executable).parent / "geosem", "verify", *sets],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr
    # 2 training drives x 4 frames + 4 labelled frames + 2 held-out video frames and their 2 neighbours;
    # 2 rooms x 2 frames; 4 ADE and 4 SUN images.
    assert "synth_driving/64x96-v3-p4: 16 samples match" in result.stdout
    assert "synth_indoor/32x48-v1-p4: 4 samples match" in result.stdout
    manifest = json.loads(
        (workdir / "shards" / "synth_driving" / "64x96-v3-p4" / "manifest.json").read_text()
    )
    assert manifest["source_version"].startswith("geosem.sources.synthetic.driving:driving-v2+")
    assert (workdir / "raw" / "synth_driving" / "raw_data" / "2011_09_26" / "calib_cam_to_cam.txt").is_file()
    assert not (workdir / "raw" / "synth_indoor_batches").exists()  # temporary batches are gone


def test_dvc_metrics_show_lists_the_study_metrics(finished_run: tuple[Path, str]) -> None:
    workdir, _ = finished_run
    env = cli_env()
    dvc = [sys.executable, "-m", "dvc"]
    if not (workdir / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
        subprocess.run([*dvc, "init", "-q"], cwd=workdir, check=True, env=env)
    result = subprocess.run(
        [*dvc, "metrics", "show", "--json"], cwd=workdir, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    (workspace,) = shown.values()  # one revision: the workspace
    data = workspace["data"]
    shown_files = sorted(path for path in data if "results/metrics/tiny/" in path)
    assert len(shown_files) == 2, data
    for path in shown_files:
        assert data[path]["data"] == json.loads((workdir / path).read_text())
    table = subprocess.run(
        [*dvc, "metrics", "show"], cwd=workdir, capture_output=True, text=True, env=env, check=True
    ).stdout
    assert max(len(line) for line in table.splitlines()) <= 120, table


def test_second_dry_run_has_nothing_to_do(finished_run: tuple[Path, str]) -> None:
    workdir, _ = finished_run
    result = snakemake(workdir, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_finetune_edit_reruns_exactly_the_finetunes_and_aggregation(finished_run: tuple[Path, str]) -> None:
    workdir, _ = finished_run
    untouched = [
        workdir / "raw" / "synth_driving" / "geosem_world.json",
        workdir / "shards" / "synth_driving" / "64x96-v3-p4" / "manifest.json",
        workdir / "runs" / "pretrain" / "depth_supervised-resnet18-synth_driving-64x96-v3-p4-s0" / "model.pt",
    ]
    before = {path: path.stat().st_mtime_ns for path in untouched}
    config_path = workdir / "config" / "tiny.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["finetune"]["lr"] = 0.00031
    config_path.write_text(yaml.safe_dump(config))

    plan = snakemake(workdir, "-n")
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts == {
        "run_snapshot": 4,
        "finetune": 4,
        "aggregate": 1,
        "plot_sizes": 1,
        "gradcam": 1,
        "all": 1,
    }, plan.stdout
    snakemake(workdir)
    assert {path: path.stat().st_mtime_ns for path in untouched} == before
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(workdir, "-n"))


def test_a_bad_config_stops_before_any_job_and_names_the_key(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path)
    (workdir / "config" / "bad.yaml").write_text("finetune:\n  steps: many\n")
    result = snakemake(workdir, "-n", "--configfile", "config/tiny.yaml", "config/bad.yaml", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "On instance['finetune']['steps']" in output and "'many' is not of type 'integer'" in output, (
        output
    )
    assert not (workdir / "raw").exists()


def test_the_workflow_versions_its_data_and_a_pulled_clone_does_not_rebuild_it(
    finished_run: tuple[Path, str], tmp_path: Path
) -> None:
    """The run dvc-added every raw dataset and shard set; after commit + push, a fresh clone restores them
    with `dvc pull`, byte for byte, and Snakemake neither re-renders, re-converts nor re-adds them (the new
    timestamps DVC gives them do not count: ancient() inputs)."""
    workdir, _ = finished_run
    env = cli_env()
    dvc_files = sorted(str(p.relative_to(workdir)) for p in workdir.glob("*/**/*.dvc"))
    assert dvc_files == [
        "raw/synth_ade.dvc",
        "raw/synth_driving.dvc",
        "raw/synth_indoor.dvc",
        "raw/synth_sun.dvc",
        "shards/synth_ade/32x32-v1-p4.dvc",
        "shards/synth_driving/64x96-v3-p4.dvc",
        "shards/synth_indoor/32x48-v1-p4.dvc",
        "shards/synth_sun/32x32-v1-p4.dvc",
    ]
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny run"]):
        subprocess.run(command, cwd=workdir, check=True, env=env, capture_output=True)
    tracked = subprocess.run(["git", "ls-files"], cwd=workdir, capture_output=True, text=True).stdout.split()
    assert set(dvc_files) <= set(tracked)
    assert not [path for path in tracked if path.endswith(".h5")], "shards must reach git only as .dvc files"
    subprocess.run([sys.executable, "-m", "dvc", "push", "-q"], cwd=workdir, check=True, env=env)

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(workdir), str(clone)], check=True, env=env)
    assert not (clone / "shards" / "synth_driving" / "64x96-v3-p4").exists()
    pulled = subprocess.run(
        [sys.executable, "-m", "dvc", "pull"], cwd=clone, capture_output=True, text=True, env=env
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    shard_set = Path("shards/synth_driving/64x96-v3-p4")
    assert {p.name: p.read_bytes() for p in (clone / shard_set).iterdir()} == {
        p.name: p.read_bytes() for p in (workdir / shard_set).iterdir()
    }
    verify = subprocess.run(
        [Path(sys.executable).parent / "geosem", "verify", str(shard_set)],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
    )
    assert verify.returncode == 0, verify.stderr

    plan = snakemake(clone, "-n")
    counts = job_counts(plan.stdout + plan.stderr)
    data_jobs = {"driving_drive", "driving_calibration", "driving_semantics", "indoor_batch", "indoor_files"}
    data_jobs |= {"ade_world", "sun_world", "shards", "version_data"}
    assert not data_jobs & set(counts), counts
    assert counts["pretrain"] == 1 and counts["finetune"] == 4, counts  # runs are not versioned data


def _report(workdir: Path) -> Path:
    """``snakemake --report`` of the finished run (under the shared umask: the report is an output too)."""
    previous = os.umask(SHARED_UMASK)
    try:
        snakemake(workdir, "--report", "report.html")
    finally:
        os.umask(previous)
    return workdir / "report.html"


def test_the_report_holds_the_table_values_and_the_figures(finished_run: tuple[Path, str]) -> None:
    import base64

    workdir, _ = finished_run
    html = _report(workdir).read_text()
    # The table is embedded as a base64 data URI of the CSV itself; its mIoU means must be in it.
    encoded = re.findall(r"data:text/csv;charset=utf8;filename=tiny\.csv;base64,([A-Za-z0-9+/=]+)", html)
    assert encoded, "results/tables/tiny.csv is not in the report"
    embedded = base64.b64decode(encoded[0]).decode()
    table = pd.read_csv(workdir / "results" / "tables" / "tiny.csv")
    shown = pd.read_csv(io.StringIO(embedded))
    assert shown["miou_mean"].tolist() == table["miou_mean"].tolist() and len(table) == 2
    for figure in ("tiny_curves.png", "tiny_sizes.png", "tiny_gradcam.png"):
        assert figure in html, figure
    assert "Grad-CAM of a shallow encoder layer" in html  # a caption from workflow/report/


def test_every_output_is_readable_by_the_group_and_others(finished_run: tuple[Path, str]) -> None:
    """Under umask 022 every file the pipeline writes (worlds, shards, checkpoints' final models, metrics,
    curves, tables, figures, the report) is 0644 and every folder 0755, so colleagues sharing the
    project directory can read them; temporary-file writers create 0600 files unless told otherwise."""
    workdir, _ = finished_run
    _report(workdir)
    wrong: list[str] = []
    for top in ("raw", "shards", "runs", "results", "report.html"):
        root = workdir / top
        assert root.exists(), root
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_symlink():
                continue
            expected = 0o755 if path.is_dir() else 0o644
            mode = stat.S_IMODE(path.lstat().st_mode)
            # DVC makes its cache read-only; a workspace file linked to it may be 0444: still readable.
            if mode != expected and not (path.is_file() and mode == 0o444):
                wrong.append(f"{path.relative_to(workdir)}: {oct(mode)}")
    assert not wrong, f"{len(wrong)} outputs do not follow umask 022: {wrong[:10]}"

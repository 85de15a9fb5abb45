"""DVC round trips on real repositories: shard sets survive push, deletion and pull byte for byte, and
two commits of results compare with `dvc metrics diff` and `dvc plots diff`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from geosem.shards import verify_shards
from geosem.versioning import VersioningError, pull, push, track

from tests.helpers import REPO


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result.stdout


def _repo(root: Path) -> Path:
    repo = root / "project"
    repo.mkdir()
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "test@geosem"], repo)
    _run(["git", "config", "user.name", "test"], repo)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    return repo


@pytest.mark.slow  # git and dvc processes
def test_shards_round_trip_through_a_local_remote(tiny_shards: Path, tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    remote = tmp_path / "remote"
    _run([sys.executable, "-m", "dvc", "remote", "add", "-d", "storage", str(remote)], repo)
    shard_dir = repo / "shards" / "synth_driving" / tiny_shards.name
    shutil.copytree(tiny_shards, shard_dir)
    before = {p.name: p.read_bytes() for p in shard_dir.iterdir()}

    (dvc_file,) = track([shard_dir])
    assert dvc_file.is_file() and dvc_file.name == f"{tiny_shards.name}.dvc"
    push(repo)
    assert any(remote.rglob("*")), "nothing reached the remote"

    shutil.rmtree(shard_dir)
    shutil.rmtree(repo / ".dvc" / "cache")
    pull(repo)
    assert verify_shards(shard_dir) == 16
    assert {p.name: p.read_bytes() for p in shard_dir.iterdir()} == before


def test_tracking_outside_a_dvc_repository_names_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(VersioningError, match="dvc init"):
        track([folder])


@pytest.mark.slow  # git and dvc processes
def test_metrics_and_plots_diff_between_two_commits(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    shutil.copy2(REPO / "dvc.yaml", repo / "dvc.yaml")
    metrics = repo / "results" / "metrics" / "s.json"
    curves = repo / "results" / "curves" / "s.csv"
    plots = repo / "results" / "plots"
    metrics.parent.mkdir(parents=True)
    curves.parent.mkdir(parents=True)
    plots.mkdir(parents=True)
    for revision, miou in enumerate((0.30, 0.42)):
        metrics.write_text(json.dumps({"s": {"random": {"resnet18-all-n16": {"miou_mean": miou}}}}))
        curves.write_text(f"step,test_miou,init\n10,{miou / 2},random\n20,{miou},random\n")
        (plots / "s_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([revision]))
        _run(["git", "add", "-A"], repo)
        _run(["git", "commit", "-qm", f"results {revision}"], repo)

    diff = json.loads(
        _run([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], repo)
    )
    change = diff["results/metrics/s.json"]["s.random.resnet18-all-n16.miou_mean"]
    assert (change["old"], change["new"]) == (0.30, 0.42)

    plots_out = json.loads(
        _run([sys.executable, "-m", "dvc", "plots", "diff", "HEAD~1", "HEAD", "--json"], repo)
    )
    assert not plots_out.get("errors"), plots_out.get("errors")
    (curve,) = plots_out["data"]["results/curves/s.csv"]
    values = curve["content"]["data"]["values"]
    assert {(v["rev"], v["test_miou"]) for v in values if v["step"] == "20"} == {
        ("HEAD~1", "0.3"),
        ("HEAD", "0.42"),
    }

"""Both Snakemake profiles live under profiles/, and `snakemake --profile slurm` typed at the repository
root finds the SLURM one through the root's `slurm` link (a dry run: no cluster needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_env, job_counts, make_workdir

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def _checkout(tmp_path: Path) -> Path:
    workdir = make_workdir(tmp_path, dvc=False)
    shutil.copytree(REPO / "profiles", workdir / "profiles")
    (workdir / "slurm").symlink_to(os.readlink(REPO / "slurm"))
    return workdir


@pytest.mark.parametrize("profile", ["slurm", "profiles/local"])
def test_each_profile_plans_the_tiny_grid_from_the_root(tmp_path: Path, profile: str) -> None:
    assert (REPO / "slurm").is_symlink() and (REPO / "slurm" / "config.yaml").is_file()
    workdir = _checkout(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", profile, "-n", "--configfile", "config/tiny.yaml"],
        cwd=workdir,
        env=cli_env({"SBATCH_PARTITION": "gpu"}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"Using profile {profile} for setting default command line arguments." in output
    assert job_counts(output)["finetune"] == 4
    if profile == "slurm":
        # The training rules carry the shared resources definition (common.smk's TRAIN_RESOURCES).
        assert "slurm_extra=--signal=TERM@300" in output and "slurm_partition=gpu" in output, output

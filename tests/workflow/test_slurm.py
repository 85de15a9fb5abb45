"""The tiny grid through a real single-node SLURM cluster, as a user types it: `snakemake --profile slurm`.

`tools/slurm/up` installs (apt) and starts munge, slurmctld and slurmd with a partition `debug` and two
fake GPUs, once per session for this module and test_slurm_faults.py (tests/workflow/conftest.py); the
session's teardown stops exactly those daemons by PID (`tools/slurm/down`). Nothing is mocked: sbatch,
srun, squeue and scancel run, and the jobs run under slurmstepd. When SLURM cannot be installed or
started every test here fails with the reason (never skips).

What is checked, in one run of the grid (every extra run of it costs minutes on 2 cores): every output,
with the repository's profile and the test cluster's partition passed in through SBATCH_PARTITION; a
training job signalled mid-run (SIGTERM to its job step, the path of SLURM's time-limit warning) fails
once, is resubmitted with a longer time limit and resumes from its checkpoint; a job cancelled with
scancel is reported as failed (and, the profile having retries, run again); the results equal a local
run's bit for bit.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    SLURM_CONFIG,
    SlurmCluster,
    Snakemake,
    job_logs,
    running_jobs,
    slurm_env,
    slurm_workdir,
    snakemake,
)

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

PRETRAIN_ID = "depth_supervised-resnet18-synth_driving-64x96-v3-p4-s0"
FINETUNE_ID = "seg-random-all-resnet18-synth_driving-64x96-v3-p4-n4-s0"


@dataclass
class SlurmRun:
    workdir: Path
    returncode: int
    output: str
    signalled_job: str | None = None
    cancelled_job: str | None = None


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The same grid without SLURM (--cores 2, no profile), started in the background: it runs while the
    SLURM run mostly waits for its status checks."""
    workdir = slurm_workdir(tmp_path_factory.mktemp("local"))
    with (workdir.parent / "snakemake-local.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--cores", "2", *SLURM_CONFIG],
            cwd=workdir,
            env=slurm_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in Snakemake above
        )
        try:
            yield workdir, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=120)


@pytest.fixture(scope="module")
def slurm_grid(
    slurm_cluster: SlurmCluster,
    local_grid: tuple[Path, subprocess.Popen[bytes]],
    tmp_path_factory: pytest.TempPathFactory,
) -> SlurmRun:
    """The tiny grid through SLURM. Its pre-training job gets SIGTERM once, after its first checkpoint;
    one fine-tuning job is cancelled once while it runs."""
    workdir = slurm_workdir(tmp_path_factory.mktemp("slurm"))
    run = Snakemake(workdir, timeout=900)
    checkpoint = workdir / "runs" / "pretrain" / PRETRAIN_ID / "checkpoint.pt"
    signalled = cancelled = None
    while run.running():
        if signalled is None and checkpoint.exists():
            signalled = next(iter(running_jobs("pretrain", PRETRAIN_ID)), None)
            if signalled is not None:
                # Without --batch/--full scancel signals the job step, not the batch shell: the same
                # processes as the --signal=TERM@<s> the training rules give sbatch.
                subprocess.run(["scancel", "--signal=TERM", signalled], check=True, timeout=30)
        if cancelled is None:
            cancelled = next(iter(running_jobs("finetune", FINETUNE_ID)), None)
            if cancelled is not None:
                subprocess.run(["scancel", cancelled], check=True, timeout=30)
        time.sleep(0.2)  # the pre-training runs for seconds after its first checkpoint
    returncode = run.wait()
    return SlurmRun(workdir, returncode, run.output(), signalled, cancelled)


def test_the_grid_runs_through_slurm_and_writes_every_output(slurm_grid: SlurmRun) -> None:
    workdir, output = slurm_grid.workdir, slurm_grid.output
    assert slurm_grid.returncode == 0, output[-8000:]
    assert "Using profile slurm for setting default command line arguments." in output
    # Every planned output exists and is up to date.
    dry = snakemake(workdir, *SLURM_CONFIG, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    for name in (
        "tables/tiny.csv",
        "tables/tiny.md",
        "metrics/tiny/r18-all-n4/random.json",
        "curves/tiny.csv",
    ):
        assert (workdir / "results" / name).stat().st_size > 0, name
    assert (workdir / "results" / "plots" / "tiny_curves.png").stat().st_size > 1000
    # Each cluster job left its SLURM log in logs/slurm/; snapshots and aggregation ran on the login node.
    logs = workdir / "logs" / "slurm"
    assert len(list((logs / "rule_pretrain").glob("*/*.log"))) >= 1
    assert len(list((logs / "rule_finetune").glob("*/*.log"))) == 5  # 4 fine-tunes, one cancelled once
    assert not (logs / "rule_run_snapshot").exists() and not (logs / "rule_aggregate").exists()
    # The training rules asked SLURM for a GPU (the fake ones), CPUs per GPU and the stop signal.
    finetune_log = job_logs(workdir, "finetune", FINETUNE_ID)[-1].read_text()
    assert re.search(r"gpu=1\b", finetune_log) and "cpus_per_gpu=1" in finetune_log, finetune_log
    assert "slurm_extra=--signal=TERM@300" in finetune_log, finetune_log


def test_a_signalled_training_job_is_retried_and_resumes(slurm_grid: SlurmRun) -> None:
    workdir, output = slurm_grid.workdir, slurm_grid.output
    assert slurm_grid.signalled_job is not None, "the pre-training job was never seen running"
    attempts = job_logs(workdir, "pretrain", PRETRAIN_ID)
    assert [log.stem for log in attempts][:1] == [slurm_grid.signalled_job], attempts
    assert len(attempts) == 2, output[-8000:]  # failed once, resubmitted once
    first, second = (log.read_text() for log in attempts)
    # The signalled attempt failed (the trainer exited 75 after its checkpoint) ...
    assert "Error in rule pretrain" in first, first[-4000:]
    assert f"SLURM-job '{slurm_grid.signalled_job}' failed" in output
    assert "Trying to restart job" in output
    # ... and the second attempt got twice the time limit and resumed instead of starting over.
    assert "runtime=60" in first and "runtime=120" in second, second[-4000:]
    training_log = (workdir / "logs" / "pretrain" / f"{PRETRAIN_ID}.log").read_text()
    resumed = re.search(r"resuming \S+ from step (\d+)", training_log)
    assert resumed is not None and 0 < int(resumed.group(1)) < 20, training_log[-3000:]
    assert not list((workdir / "runs").rglob("checkpoint.pt"))


def test_slurm_results_equal_a_local_run(
    slurm_grid: SlurmRun, local_grid: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    assert slurm_grid.returncode == 0, slurm_grid.output[-8000:]
    local, process = local_grid
    returncode = process.wait(timeout=900)
    assert returncode == 0, (local.parent / "snakemake-local.log").read_text()[-8000:]
    slurm = slurm_grid.workdir

    def products(root: Path) -> set[Path]:
        return {p.relative_to(root) for folder in ("runs", "results") for p in (root / folder).rglob("*")}

    assert products(slurm) == products(local)
    compared = 0
    for relative in sorted(products(local)):
        if "dvclive" in relative.parts:
            continue  # its summary records the last step logged, which a signalled and resumed run differs in
        if relative.suffix in (".json", ".csv", ".md", ".yaml"):
            assert (slurm / relative).read_bytes() == (local / relative).read_bytes(), relative
            compared += 1
        elif relative.name == "model.pt":
            a = torch.load(slurm / relative, weights_only=True)["model"]
            b = torch.load(local / relative, weights_only=True)["model"]
            assert all(torch.equal(a[key], b[key]) for key in a), relative
    assert compared >= 15  # run.yaml, metrics.json, curves.csv of 5 runs and the study's tables
    metrics = json.loads((slurm / "runs" / "pretrain" / PRETRAIN_ID / "metrics.json").read_text())
    assert metrics["steps"] == 20


def test_a_cancelled_job_is_reported_as_failed_and_retried(slurm_grid: SlurmRun) -> None:
    workdir, output = slurm_grid.workdir, slurm_grid.output
    assert slurm_grid.cancelled_job is not None, "the fine-tuning job was never seen running"
    assert f"SLURM-job '{slurm_grid.cancelled_job}' failed, SLURM status is: 'CANCELLED'" in output, output[
        -8000:
    ]
    attempts = job_logs(workdir, "finetune", FINETUNE_ID)
    assert [log.stem for log in attempts][:1] == [slurm_grid.cancelled_job] and len(attempts) == 2, attempts
    assert "CANCELLED" in attempts[0].read_text()
    assert (workdir / "runs" / "finetune" / FINETUNE_ID / "metrics.json").exists()

"""The tiny grid through a real single-node SLURM cluster, as a user types it: `snakemake --profile slurm`.

`tools/slurm/up` installs (apt) and starts munge, slurmctld and slurmd with a partition `debug` and two
fake GPUs; the module's teardown stops exactly those daemons by PID (`tools/slurm/down`). Nothing is
mocked: sbatch, srun, squeue and scancel run, and the jobs run under slurmstepd. When SLURM cannot be
installed or started every test here fails with the reason (never skips).

What is checked, in one run of the grid (every extra run of it costs minutes on 2 cores): every output,
with the repository's profile and the test cluster's partition passed in through SBATCH_PARTITION; a
training job signalled mid-run (SIGTERM to its job step, the path of SLURM's time-limit warning) fails
once, is resubmitted with a longer time limit and resumes from its checkpoint; a job cancelled with
scancel is reported as failed (and, the profile having retries, run again); the results equal a local
run's bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, make_workdir, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

PARTITION = "debug"  # the partition tools/slurm/up creates
PRETRAIN_ID = "depth_supervised-resnet18-synth_driving-64x96-v2-p4-s0"
FINETUNE_ID = "seg-random-all-resnet18-synth_driving-64x96-v2-p4-n4-s0"
CONFIG = ("--configfile", "config/tiny.yaml", "config/slurm.yaml")
# Status checks every few seconds instead of the plugin's 40 s (which would add 40 s per wave of jobs).
TEST_SETTINGS = ("--slurm-init-seconds-before-status-checks", "2")


def slurm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SBATCH_PARTITION"] = PARTITION  # read by slurm/config.yaml
    return env


@dataclass
class SlurmRun:
    workdir: Path
    returncode: int
    output: str
    signalled_job: str | None = None
    cancelled_job: str | None = None


class Snakemake:
    """A `snakemake --profile slurm` run in the background, stopped with SIGINT if it overruns.

    SIGINT, not SIGTERM: on SIGINT Snakemake cancels its SLURM jobs and exits; on SIGTERM it waits for
    them to finish, and a run whose status polling broke would never end.
    """

    def __init__(self, workdir: Path, *args: str, timeout: float) -> None:
        self.workdir = workdir
        self.log_path = workdir.parent / f"snakemake-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--profile", "slurm", *CONFIG, *TEST_SETTINGS, *args],
            cwd=workdir,
            env=slurm_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # A shell without job control starts background commands with SIGINT ignored, and the
            # child would inherit that: give Snakemake the default so the SIGINT below reaches it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.deadline = time.monotonic() + timeout

    def running(self) -> bool:
        if self.process.poll() is not None:
            return False
        if time.monotonic() > self.deadline:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            raise AssertionError(f"snakemake overran its time limit; log:\n{self.output()[-6000:]}")
        return True

    def wait(self) -> int:
        while self.running():
            time.sleep(0.5)
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text()


def running_jobs(rule: str, wildcards: str = "") -> list[str]:
    """Ids of this rule's running jobs; the plugin's job comment is `rule_<rule>_wildcards_<values>`."""
    result = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    prefix = f"rule_{rule}_wildcards_{wildcards}"
    return [
        job_id
        for job_id, comment in (line.split(maxsplit=1) for line in result.stdout.splitlines())
        if comment.startswith(prefix)
    ]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running single-node cluster; its daemons are stopped by PID afterwards, even on failure."""
    env = {**os.environ, "GEOSEM_SLURM_STATE": str(tmp_path_factory.mktemp("slurm-state"))}
    try:
        up = subprocess.run(
            ["bash", str(REPO / "tools" / "slurm" / "up")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if up.returncode != 0:
            pytest.fail(f"could not start a SLURM cluster for the SLURM tests:\n{up.stdout}{up.stderr}")
        yield PARTITION
    finally:
        subprocess.run(["bash", str(REPO / "tools" / "slurm" / "down")], env=env, timeout=300)


def job_logs(workdir: Path, rule: str, wildcards: str) -> list[Path]:
    """This job's SLURM logs, one per submission, oldest first."""
    logs = (workdir / "logs" / "slurm" / f"rule_{rule}" / wildcards).glob("*.log")
    return sorted(logs, key=lambda log: int(log.stem))


def prepare(root: Path) -> Path:
    workdir = make_workdir(root)
    # Both profiles live under profiles/; `--profile slurm` at the root finds them through the `slurm` link,
    # exactly as in the repository.
    shutil.copytree(REPO / "profiles", workdir / "profiles")
    (workdir / "slurm").symlink_to(os.readlink(REPO / "slurm"))
    shutil.copy2(REPO / "tests" / "config" / "slurm.yaml", workdir / "config" / "slurm.yaml")
    return workdir


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The same grid without SLURM (--cores 2, no profile), started in the background: it runs while the
    SLURM run mostly waits for its status checks."""
    workdir = prepare(tmp_path_factory.mktemp("local"))
    with (workdir.parent / "snakemake-local.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--cores", "2", *CONFIG],
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
    slurm_cluster: str,
    local_grid: tuple[Path, subprocess.Popen[bytes]],
    tmp_path_factory: pytest.TempPathFactory,
) -> SlurmRun:
    """The tiny grid through SLURM. Its pre-training job gets SIGTERM once, after its first checkpoint;
    one fine-tuning job is cancelled once while it runs."""
    workdir = prepare(tmp_path_factory.mktemp("slurm"))
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
    dry = snakemake(workdir, *CONFIG, "-n")
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

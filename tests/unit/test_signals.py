"""A training job stopped by SIGTERM or SIGUSR1 saves a checkpoint, exits 75, and its rerun resumes.

This is what a SLURM time-limit warning or a preemption does to a job (the SLURM profile asks for
SIGTERM before the limit; Snakemake's retry reruns the job): the resumed job must end with the same
metrics, curves and weights as a job that was never interrupted. The jobs run as real `geosem`
processes and get real signals.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from geosem.train.jobs import run_job

from tests.helpers import run_snapshot, start_job, write_run

pytestmark = pytest.mark.slow  # real `geosem finetune` processes

EXIT_RESUMABLE = 75
STEPS = 8


def checkpoint_identity(path: Path) -> tuple[int, int] | None:
    """Inode and mtime: every checkpoint save renames a new file into place."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def wait_for_new_checkpoint(run_dir: Path, before: tuple[int, int] | None, alive: Callable[[], bool]) -> None:
    checkpoint = run_dir / "checkpoint.pt"
    deadline = time.monotonic() + 180
    while checkpoint_identity(checkpoint) in (None, before):
        if not alive():
            raise AssertionError("the job ended before it wrote a new checkpoint")
        if time.monotonic() > deadline:
            raise AssertionError("no new checkpoint within 180 s")
        time.sleep(0.05)


def checkpoint_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"])


def test_signalled_job_resumes_and_ends_like_an_uninterrupted_one(tiny_shards: Path, tmp_path: Path) -> None:
    # Checkpoints every 2 steps, evaluations (the slow part) rarer.
    snapshot = run_snapshot(tiny_shards, "finetune", "seg", STEPS, loop={"eval_every": 4})
    whole = write_run(tmp_path / "whole", snapshot)
    expected = run_job(whole, threads=1)  # the thread count of the jobs below: bit-identical floats
    assert expected is not None
    split = write_run(tmp_path / "split", snapshot)
    run_dir = split.parent

    # 1. A real job process gets SIGTERM (what SLURM sends before the time limit) after its first
    #    checkpoint: it saves the step it reached and exits 75.
    job = start_job("finetune", split)
    try:
        wait_for_new_checkpoint(run_dir, None, lambda: job.poll() is None)
        job.send_signal(signal.SIGTERM)
    finally:
        _, err = job.communicate(timeout=180)
    assert job.returncode == EXIT_RESUMABLE, err[-3000:]
    assert f"(signal {int(signal.SIGTERM)}); checkpoint saved" in err, err[-3000:]
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model.pt").exists()
    first_stop = checkpoint_step(run_dir)

    # 2. The resumed job gets SIGUSR1 (the other stop signal) after its next checkpoint. In this process,
    #    to spare the tests a third interpreter start-up; the handler is the same.
    before = checkpoint_identity(run_dir / "checkpoint.pt")
    resumed_job = threading.Thread(
        target=lambda: (
            wait_for_new_checkpoint(run_dir, before, lambda: True),
            os.kill(os.getpid(), signal.SIGUSR1),
        ),
        daemon=True,
    )
    resumed_job.start()
    assert run_job(split, threads=1) is None
    resumed_job.join(timeout=10)
    second_stop = checkpoint_step(run_dir)
    assert 0 < first_stop < second_stop < STEPS, (first_stop, second_stop)

    # 3. The retry runs to the end: same metrics, curves and weights as the uninterrupted run.
    final = start_job("finetune", split)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-3000:]
    assert f"resuming {run_dir} from step {second_stop}" in err
    assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(
        (whole.parent / "metrics.json").read_text()
    )
    assert (run_dir / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
    a = torch.load(whole.parent / "model.pt", weights_only=True)["model"]
    b = torch.load(run_dir / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (run_dir / "checkpoint.pt").exists()
    assert json.loads(out)["test_miou"] == expected["test_miou"]

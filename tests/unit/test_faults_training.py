"""Checkpoint faults, provoked for real on real training jobs: a kill in the middle of a checkpoint write,
a checkpoint truncated or bit-flipped on disk, and a disk that fills up while a checkpoint is written.

Each test checks what the user sees (the path at fault in the job's log) and that nothing is lost: the
previous checkpoint stays usable, the rerun resumes from the last good one and ends with the metrics of
an uninterrupted run, and no temporary file is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from geosem.train.checkpoint import PREVIOUS_CHECKPOINT_NAME, read_checkpoint
from geosem.train.loop import EXIT_RESUMABLE

from tests.helpers import cli_env, job_command, mounted_tmpfs, run_snapshot, start_job, write_run

pytestmark = pytest.mark.slow  # real `geosem finetune` processes

STEPS = 8
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def _snapshot(shards: Path, checkpoint_every: int = 1) -> dict[str, Any]:
    # A fine-tune of the whole model: the biggest checkpoint of the tiny runs (weights and Adam state),
    # so a write takes long enough to be caught in the middle.
    loop = {"eval_every": 4, "checkpoint_every": checkpoint_every}
    return run_snapshot(shards, "finetune", "seg-random-all-resnet18-64x96-s0", STEPS, seed=0, loop=loop)


def _run(run: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = job_command("finetune", run, "--procs", "1")
    return subprocess.run(command, check=check, env=cli_env(NO_GPU), capture_output=True, text=True)


def _resumed_from(stderr: str) -> int | None:
    match = re.search(r"resuming \S+ from step (\d+)", stderr)
    return int(match.group(1)) if match else None


def _assert_same_results(run: Path, reference: Path) -> None:
    metrics = json.loads((run.parent / "metrics.json").read_text())
    assert metrics == json.loads((reference.parent / "metrics.json").read_text())
    assert (run.parent / "curves.csv").read_text() == (reference.parent / "curves.csv").read_text()
    assert not list(run.parent.glob("checkpoint*")) and not list(run.parent.glob(".*.tmp"))


@pytest.fixture(scope="module")
def reference(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the fine-tune every test below interrupts."""
    run = write_run(tmp_path_factory.mktemp("whole"), _snapshot(tiny_shards))
    _run(run)
    return run


def test_a_kill_during_the_checkpoint_write_leaves_the_previous_checkpoint_usable(
    tiny_shards: Path, tmp_path: Path, reference: Path
) -> None:
    run = write_run(tmp_path, _snapshot(tiny_shards))
    run_dir = run.parent
    process = start_job("finetune", run, "--procs", "1", env=NO_GPU, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Wait for a write that replaces an earlier checkpoint, then kill while its temporary file exists.
    while process.poll() is None and time.monotonic() < deadline:
        if (run_dir / "checkpoint.pt").exists() and list(run_dir.glob(".checkpoint.pt.*.tmp")):
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before a checkpoint write was caught"
    leftovers = list(run_dir.glob(".checkpoint.pt.*.tmp"))
    # The kill may land just after the rename; then the newest checkpoint is the complete new one.
    usable = [read_checkpoint(p)["step"] for p in run_dir.glob("checkpoint*.pt")]
    assert usable, "no readable checkpoint after a kill during a checkpoint write"

    rerun = _run(run)
    assert _resumed_from(rerun.stderr) == max(usable)
    if leftovers:
        assert "a checkpoint write that did not complete" in rerun.stderr
    _assert_same_results(run, reference)


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_checkpoint_is_named_and_the_run_resumes_from_the_previous_one(
    tiny_shards: Path, tmp_path: Path, reference: Path, damage: str
) -> None:
    run = write_run(tmp_path, _snapshot(tiny_shards))
    _run_steps(run, 5)
    newest, previous = run.parent / "checkpoint.pt", run.parent / PREVIOUS_CHECKPOINT_NAME
    assert torch.load(newest, weights_only=False)["step"] == 5
    assert torch.load(previous, weights_only=False)["step"] == 4
    data = bytearray(newest.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:
        data[int(len(data) * 0.6)] ^= 0x10  # inside a tensor: torch.load itself does not notice
    newest.write_bytes(bytes(data))

    rerun = _run(run)
    assert f"{newest}: " in rerun.stderr and "trying the previous checkpoint" in rerun.stderr
    assert ("cannot be read" if damage == "truncated" else "does not match") in rerun.stderr
    assert _resumed_from(rerun.stderr) == 4
    _assert_same_results(run, reference)


def test_a_full_disk_during_checkpointing_is_named_and_the_previous_checkpoint_survives(
    tiny_shards: Path, tmp_path: Path, reference: Path
) -> None:
    snapshot = _snapshot(tiny_shards, checkpoint_every=2)
    probe = write_run(tmp_path / "probe", snapshot)
    _run_steps(probe, 2)
    size = (probe.parent / "checkpoint.pt").stat().st_size
    # Room for the run's small files and two checkpoints, not for the third one written beside them.
    with mounted_tmpfs(tmp_path / "small", size_bytes=int(size * 2.6)) as disk:
        run = write_run(disk, snapshot)
        failed = _run(run, check=False)
        assert failed.returncode != 0
        assert "no space left on the device" in failed.stderr, failed.stderr[-2000:]
        assert f"{run.parent / 'checkpoint.pt'}" in failed.stderr
        steps = sorted(read_checkpoint(p)["step"] for p in run.parent.glob("checkpoint*.pt"))
        assert steps == [2, 4], steps
        assert not list(run.parent.glob(".*.tmp")) and not (run.parent / "metrics.json").exists()
        moved = write_run(tmp_path / "bigger", snapshot)  # the user frees space: here, a bigger disk
        for name in ("checkpoint.pt", PREVIOUS_CHECKPOINT_NAME):
            (moved.parent / name).write_bytes((run.parent / name).read_bytes())
    rerun = _run(moved)
    assert _resumed_from(rerun.stderr) == 4
    _assert_same_results(moved, reference)


def _run_steps(run: Path, steps: int) -> None:
    """Train ``steps`` steps and stop resumably, as a job does at its time limit."""
    command = job_command("finetune", run, "--procs", "1", "--max-steps", str(steps))
    stopped = subprocess.run(command, env=cli_env(NO_GPU), capture_output=True, text=True)
    assert stopped.returncode == EXIT_RESUMABLE, stopped.stderr[-2000:]

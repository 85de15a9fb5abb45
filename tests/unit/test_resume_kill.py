"""Exact resume after a real kill: a training job is SIGKILLed once a checkpoint exists, rerun, and ends
with the metrics and weights of an uninterrupted run, repeating at most one checkpoint interval.

Two jobs: self-supervised depth from video (depth_mono: depth and pose networks, per-draw flips and the
identity-loss noise), and a DeepLabV3 fine-tune, whose ASPP dropout draws from torch's global generator,
so nothing else (the DataLoader's base seed, say) may draw from it in a resumed run but not in a whole one.
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

from tests.helpers import SEG_TASK, cli_env, job_command, pretrain_task, run_snapshot, start_job, write_run

pytestmark = pytest.mark.slow  # real `geosem pretrain` processes

STEPS = 12
CHECKPOINT_EVERY = 2
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


def _snapshot(shards: Path, kind: str) -> dict[str, Any]:
    loop = {"eval_every": 6, "checkpoint_every": CHECKPOINT_EVERY}
    if kind == "pretrain":
        task = pretrain_task("depth_mono_rand")
        return run_snapshot(
            shards, kind, "depth_mono_rand-resnet18-64x96-s0", STEPS, task=task, seed=0, loop=loop
        )
    task = {**SEG_TASK, "mode": "deeplabv3"}
    return run_snapshot(
        shards, kind, "seg-random-deeplabv3-resnet18-64x96-s0", STEPS, task=task, seed=0, loop=loop
    )


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(
    tiny_shards: Path, tmp_path: Path, kind: str
) -> None:
    snapshot = _snapshot(tiny_shards, kind)

    def _command(run: Path) -> list[str]:
        return job_command(kind, run, "--procs", "1")

    whole = write_run(tmp_path / "whole", snapshot)
    killed = write_run(tmp_path / "killed", snapshot)

    subprocess.run(_command(whole), check=True, env=cli_env(NO_GPU), capture_output=True, timeout=600)

    checkpoint = killed.parent / "checkpoint.pt"
    process = start_job(
        kind, killed, "--procs", "1", env=NO_GPU, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # no handler can run: the hard case (OOM killer, node loss)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed.parent / "metrics.json").exists()
    saved_step = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < saved_step < STEPS and saved_step % CHECKPOINT_EVERY == 0

    rerun = subprocess.run(
        _command(killed), check=True, env=cli_env(NO_GPU), capture_output=True, text=True, timeout=600
    )
    resumed_from = int(re.search(r"resuming \S+ from step (\d+)", rerun.stderr).group(1))
    # The rerun starts at the last checkpoint; the killed process had run fewer than CHECKPOINT_EVERY
    # steps beyond it (it writes one every CHECKPOINT_EVERY steps), so at most one interval is repeated.
    assert resumed_from == saved_step

    metrics_whole = json.loads((whole.parent / "metrics.json").read_text())
    metrics_killed = json.loads((killed.parent / "metrics.json").read_text())
    assert metrics_killed == metrics_whole
    if kind == "pretrain":
        assert metrics_whole["depth_images_scored"] > 0 and metrics_whole["depth_median_scaled"] is True
    assert (killed.parent / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
    a = torch.load(whole.parent / "model.pt", weights_only=True)["model"]
    b = torch.load(killed.parent / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not checkpoint.exists()

"""Exact resume after a real kill, for every trainer kind: a training job is SIGKILLed at a random step,
rerun, and ends with the metrics, curves and weights of an uninterrupted run.

The kinds: one pre-training per registered task module other than segmentation (depth from video, from
stereo and from both; supervised, lidar and cropped depth; flow; both masked-reconstruction variants;
MoCo v2 with its queue; DINO with its teacher and centre; supervised segmentation on the ADE-like set), and
a fine-tune in each mode (all, frozen, encoder_only, and DeepLabV3, whose ASPP dropout draws from
torch's global generator, so nothing else may draw from it in a resumed run but not in a whole one). A
test fails when a registered task has no case here, so a new task cannot skip the check.

The kill lands at a step drawn from a seeded generator (printed in the test id), usually between two
checkpoints, so the rerun repeats the steps since the last checkpoint and must repeat them exactly.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from geosem.studies.inits import dataset_keys, pretrain_task_section
from geosem.tasks import list_tasks
from geosem.tasks.segmentation import FINETUNE_MODES

from tests.helpers import (
    PRETRAIN_TASKS,
    SEG_TASK,
    cli_env,
    job_command,
    pretrain_task,
    run_snapshot,
    start_job,
    write_run,
)

pytestmark = pytest.mark.slow  # real `geosem pretrain` / `geosem finetune` processes

STEPS = 8
CHECKPOINT_EVERY = 2
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
# One init per pre-training task module (PRETRAIN_TASKS names them as config/config.yaml does).
PRETRAIN_CASES = (
    "depth_mono_rand",
    "depth_stereo_rand",
    "depth_mono_stereo_rand",
    "depth_supervised",
    "depth_lidar",
    "depth_cropped",
    "flow_rand",
    "mae_seed",
    "mae_patch",
    "moco_v2",
    "dino",
    "supervised_segmentation",  # on another dataset: not in PRETRAIN_TASKS, which train on the driving set
)
CASES = [("pretrain", init) for init in PRETRAIN_CASES] + [("finetune", mode) for mode in FINETUNE_MODES]
# The step each case is killed at: drawn once from a fixed seed, so a failure reproduces.
KILL_STEPS = {case: random.Random(f"kill-{case}").randint(1, STEPS - 1) for case in CASES}


def _task_module(init: str) -> str:
    return PRETRAIN_TASKS.get(init, {}).get("task", init)


def test_every_registered_training_task_has_a_kill_case() -> None:
    covered = {_task_module(init) for init in PRETRAIN_CASES} | {SEG_TASK["name"]}
    assert set(list_tasks()) <= covered, f"tasks without a SIGKILL case: {set(list_tasks()) - covered}"


def _supervised_segmentation(shards: Path, loop: dict[str, Any]) -> dict[str, Any]:
    task = pretrain_task_section(
        {"pretrain": {"tasks": {"supervised_segmentation": {}}}}, "supervised_segmentation"
    )
    snapshot = run_snapshot(
        shards, "pretrain", "supseg-resnet18-64x96-s0", STEPS, task=task, seed=0, loop=loop
    )
    # As the planner does: the class count of the data it reads joins the task section.
    snapshot["task"].update(
        dataset_keys(task, snapshot["data"]["label_space"], snapshot["data"]["num_classes"])
    )
    return snapshot


def _snapshot(shards: Path, ade_shards: Path, kind: str, name: str) -> dict[str, Any]:
    loop = {"eval_every": 4, "checkpoint_every": CHECKPOINT_EVERY}
    if name == "supervised_segmentation":
        return _supervised_segmentation(ade_shards, loop)
    if kind == "pretrain":
        run_id = f"{name}-resnet18-64x96-s0"
        return run_snapshot(shards, kind, run_id, STEPS, task=pretrain_task(name), seed=0, loop=loop)
    task = {**SEG_TASK, "mode": name}
    run_id = f"seg-random-{name}-resnet18-64x96-s0"
    return run_snapshot(shards, kind, run_id, STEPS, task=task, seed=0, loop=loop)


def _steps_logged(run_dir: Path) -> int:
    """Optimiser steps the job has taken so far: rows of its per-step loss log (dvclive)."""
    log = run_dir / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    try:
        return max(0, len(log.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def _kill_at_step(kind: str, run: Path, step: int) -> None:
    process = start_job(
        kind, run, "--procs", "1", env=NO_GPU, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while _steps_logged(run.parent) < step and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)  # no handler can run: the hard case (OOM killer, node loss)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"


@pytest.mark.parametrize(
    ("kind", "name"), CASES, ids=[f"{kind}-{name}-at{KILL_STEPS[(kind, name)]}" for kind, name in CASES]
)
def test_sigkill_at_a_random_step_then_rerun_matches_an_uninterrupted_run(
    tiny_shards: Path, tiny_tall_shards: Path, tiny_ade_shards: Path, tmp_path: Path, kind: str, name: str
) -> None:
    # depth_cropped's 64x64 crops must move in both axes: larger images than the 64x96 set.
    shards = tiny_tall_shards if name == "depth_cropped" else tiny_shards
    snapshot = _snapshot(shards, tiny_ade_shards, kind, name)
    whole = write_run(tmp_path / "whole", snapshot)
    killed = write_run(tmp_path / "killed", snapshot)
    env = cli_env(NO_GPU)
    subprocess.run(job_command(kind, whole, "--procs", "1"), check=True, env=env, capture_output=True)

    _kill_at_step(kind, killed, KILL_STEPS[(kind, name)])
    assert not (killed.parent / "metrics.json").exists()
    checkpoint = killed.parent / "checkpoint.pt"
    saved_step = torch.load(checkpoint, weights_only=False)["step"] if checkpoint.exists() else 0
    assert saved_step % CHECKPOINT_EVERY == 0

    rerun = subprocess.run(
        job_command(kind, killed, "--procs", "1"), check=True, env=env, capture_output=True, text=True
    )
    resumed = re.search(r"resuming \S+ from step (\d+)", rerun.stderr)
    assert (int(resumed.group(1)) if resumed else 0) == saved_step, rerun.stderr[-2000:]

    metrics_whole = json.loads((whole.parent / "metrics.json").read_text())
    assert json.loads((killed.parent / "metrics.json").read_text()) == metrics_whole
    assert (killed.parent / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
    if name.startswith("depth"):
        assert metrics_whole["depth_images_scored"] > 0
    a = torch.load(whole.parent / "model.pt", weights_only=True)["model"]
    b = torch.load(killed.parent / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(killed.parent.glob("checkpoint*")) and not list(killed.parent.glob(".*.tmp"))

"""The fast path (bf16 autocast, channels_last): detected rather than assumed, numerically close to fp32,
and kept out of the snapshots of runs that do not ask for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.studies import plan_runs
from geosem.tasks import get_task
from geosem.train import fast_path
from geosem.train.fast_path import autocast, batch_channels_last, cpu_has_bf16, resolve_precision

from tests.helpers import SEG_TASK, pretrain_task, run_snapshot, validated_config

# bf16 keeps 8 bits of mantissa (a relative rounding of 0.4 %); through a network and a loss that sums
# many terms the loss moves by more than one rounding but stays within a few percent of fp32.
LOSS_TOLERANCE = 0.03


def test_bf16_hardware_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_bf16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert not cpu_has_bf16(cpuinfo)
    assert not cpu_has_bf16(tmp_path / "missing")


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(fast_path, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(fast_path, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match=r"compute\.precision must be one of"):
        resolve_precision("fp16", cpu)


def _loss(task: Any, model: torch.nn.Module, batch: dict[str, torch.Tensor], fast: bool) -> float:
    cpu = torch.device("cpu")
    if fast:
        model = fast_path.to_channels_last(model)
        batch = batch_channels_last(batch)
    with torch.no_grad(), autocast("bf16" if fast else "fp32", cpu):
        loss, _ = task.loss(model, batch)
    return float(loss)


@pytest.mark.parametrize(
    "init",
    ["depth_supervised", "depth_mono_rand", "depth_stereo_rand", "flow_rand", "mae_patch", "segmentation"],
)
def test_the_fast_paths_loss_is_within_tolerance_of_fp32_on_a_fixed_batch(
    tiny_shards: Path, init: str
) -> None:
    task_section = SEG_TASK if init == "segmentation" else pretrain_task(init)
    kind = "finetune" if init == "segmentation" else "pretrain"
    run = run_snapshot(tiny_shards, kind, f"{init}-fast", task=task_section, seed=0)
    task = get_task(run["task"]["name"])(run)
    torch.manual_seed(0)
    model = task.build_model().train()
    shards = ShardSet(tiny_shards)
    dataset = ShardDataset(shards, shards.ids("train"), task.fields, transform=task.transform, seed=0)
    items = [dataset[(i, i)] for i in range(4)]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    # Train mode: BatchNorm uses batch statistics in both runs; no_grad keeps its running stats apart.
    reference = _loss(task, model, batch, fast=False)
    fast = _loss(task, model, batch, fast=True)
    assert abs(fast - reference) <= LOSS_TOLERANCE * abs(reference), (fast, reference)


def test_default_runs_carry_no_fast_path_keys_and_a_bf16_run_is_another_run() -> None:
    base = plan_runs(validated_config())
    assert all(set(run["compute"]) == {"num_workers"} for run in base.pretrain.values())
    config = validated_config()
    config["compute"] |= {"precision": "bf16", "channels_last": True}
    fast = plan_runs(config)
    (run,) = fast.pretrain.values()
    assert run["compute"] == {"num_workers": 0, "precision": "bf16", "channels_last": True}
    assert fast.pretrain != base.pretrain


def test_a_training_job_runs_its_steps_on_the_fast_path_its_snapshot_asks_for(
    tiny_shards: Path, tmp_path: Path
) -> None:
    """The same 2-step pre-training in fp32 and in bf16 + channels_last: the trainer honours the setting
    (the bf16 run's losses are not fp32's) and stays close (evaluation is fp32 in both)."""
    import pandas as pd
    from geosem.train.jobs import run_job

    from tests.helpers import DEPTH_TASK, write_run

    curves = {}
    for name, compute in (("fp32", {}), ("fast", {"precision": "bf16", "channels_last": True})):
        snap = run_snapshot(tiny_shards, "pretrain", f"depth-{name}", 2, task=DEPTH_TASK, compute=compute)
        path = write_run(tmp_path / name, snap)
        run_job(path, threads=1)
        curves[name] = pd.read_csv(path.parent / "curves.csv").iloc[-1]
    fp32, fast = curves["fp32"], curves["fast"]
    assert fast["train_loss"] != fp32["train_loss"]
    assert abs(fast["train_loss"] - fp32["train_loss"]) <= LOSS_TOLERANCE * fp32["train_loss"]
    assert abs(fast["depth_abs_rel"] - fp32["depth_abs_rel"]) <= LOSS_TOLERANCE * fp32["depth_abs_rel"]

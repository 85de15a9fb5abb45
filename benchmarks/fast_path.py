"""The training step with and without the fast path (bf16 autocast + channels_last), side by side
(BENCHMARKS.md, "Training step: the fast path").

For each task (depth_mono from scratch, depth_supervised, segmentation) a GeoSem model takes optimiser
steps on the same fixed batch of real shards (forward, loss, backward, Adam), alternating fp32 and fast
steps so that load on the machine slows both alike. Reports the median seconds per step of each, their
ratio, and the loss of the first step of each (the fast path's numbers must stay close to fp32's).

    .venv/bin/python benchmarks/fast_path.py --shards shards/synth_driving/64x192-v3 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.studies.plan import pretrain_task_section
from geosem.tasks import get_task, resolve_parameters
from geosem.train.fast_path import autocast, batch_channels_last, cpu_has_bf16, to_channels_last

TASKS: dict[str, dict[str, Any]] = {
    "depth_mono": {"task": "depth_mono", "encoder_init": "random", "pose_scale": 1.0},
    "depth_supervised": {"task": "depth_supervised"},
}


def _run(shards: Path, task: dict[str, Any], kind: str) -> dict[str, Any]:
    manifest = ShardSet(shards).manifest
    return {
        "run_id": f"bench-{task['name']}",
        "kind": kind,
        "seed": 0,
        "task": task,
        "model": {"encoder": "resnet18", "decoder_channels": [16, 32, 64, 128, 256]},
        "data": {
            "shards": str(shards),
            "num_classes": len(manifest.classes),
            "label_space": manifest.label_space,
        },
        "init": {"name": "random"},
        "loop": {},
        "evaluation": {"batch_size": 8, "max_depth": 80.0, "depth_crop": "garg"},
        "compute": {"num_workers": 0},
    }


def _batch(task: Any, shards: Path, size: int) -> dict[str, torch.Tensor]:
    shard_set = ShardSet(shards)
    dataset = ShardDataset(shard_set, shard_set.ids("train"), task.fields, transform=task.transform, seed=0)
    items = [dataset[(i, i)] for i in range(size)]
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def _stepper(task: Any, batch: dict[str, torch.Tensor], fast: bool):
    torch.manual_seed(0)
    model = task.build_model().train()
    if fast:
        model, batch = to_channels_last(model), batch_channels_last(batch)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    cpu = torch.device("cpu")

    def step() -> float:
        optimiser.zero_grad(set_to_none=True)
        with autocast("bf16" if fast else "fp32", cpu):
            loss, _ = task.loss(model, batch)
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    return step


def measure(name: str, task: Any, batch: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    steppers = {"fp32": _stepper(task, batch, False), "fast": _stepper(task, batch, True)}
    first = {mode: stepper() for mode, stepper in steppers.items()}  # warm-up, and the first losses
    times: dict[str, list[float]] = {"fp32": [], "fast": []}
    for _ in range(steps):
        for mode, stepper in steppers.items():
            start = time.perf_counter()
            stepper()
            times[mode].append(time.perf_counter() - start)
    fp32, fast = statistics.median(times["fp32"]), statistics.median(times["fast"])
    losses = f"{first['fp32']:.4f} | {first['fast']:.4f}"
    print(f"| {name} | {fp32:.3f} | {fast:.3f} | {fp32 / fast:.2f}x | {losses} |", flush=True)
    return {"fp32": fp32, "fast": fast}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
        f"batch {args.batch}, CPU bf16 in hardware: {cpu_has_bf16()}, shards {args.shards}"
    )
    print("| task | fp32 s/step | fast s/step | speed-up | fp32 first loss | fast first loss |")
    print("|---|---|---|---|---|---|")
    for init, entry in TASKS.items():
        section = pretrain_task_section({"pretrain": {"tasks": {init: copy.deepcopy(entry)}}}, init)
        task = get_task(section["name"])(_run(args.shards, section, "pretrain"))
        measure(init, task, _batch(task, args.shards, args.batch), args.steps)
    segmentation = {
        "name": "segmentation",
        **resolve_parameters("segmentation", {"mode": "all"}, "benchmark"),
    }
    task = get_task("segmentation")(_run(args.shards, segmentation, "finetune"))
    measure("segmentation", task, _batch(task, args.shards, args.batch), args.steps)


if __name__ == "__main__":
    main()

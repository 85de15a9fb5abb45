"""MoCo v2 pre-training (geosem.tasks.moco): InfoNCE, the queue, the momentum encoder, real training on
the tiny shard set, the transfer to segmentation, and exact resume after a SIGKILL."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.tasks import get_task, resolve_parameters
from geosem.tasks.moco import MoCoModel, info_nce
from geosem.train.jobs import run_job

from tests.helpers import (
    SEG_TASK,
    cli_env,
    job_command,
    pretrained_init,
    run_snapshot,
    start_job,
    write_run,
)

# Small enough for CPU tests: 32x32 views, a narrow head and a short queue (the defaults are MoCo v2's).
SMALL = {"queue_size": 16, "mlp_hidden": 64, "dim": 16, "view_size": [32, 32], "momentum": 0.9}


def moco_task(**overrides: Any) -> dict[str, Any]:
    """The snapshot task section of a moco_v2 init, resolved as the planner resolves it."""
    params = resolve_parameters("moco_v2", {**SMALL, **overrides}, "pretrain.tasks.moco_v2")
    return {"name": "moco_v2", "init": "moco_v2", **params}


def moco_run(shards: Path, run_id: str = "moco", steps: int = 2, **kwargs: Any) -> dict[str, Any]:
    return run_snapshot(shards, "pretrain", run_id, steps, task=moco_task(), seed=0, **kwargs)


def _batch(task: Any, shards: Path, count: int = 2) -> dict[str, torch.Tensor]:
    shard_set = ShardSet(shards)
    dataset = ShardDataset(shard_set, shard_set.ids("train"), task.fields, transform=task.transform, seed=0)
    items = [dataset[(i, i)] for i in range(count)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def test_info_nce_of_identical_pairs_and_orthogonal_negatives_is_analytic() -> None:
    temperature, negatives = 0.2, 5
    basis = torch.eye(negatives + 2)
    query = basis[:2]  # two queries, each its own key
    queue = basis[2:]  # K negatives orthogonal to both queries
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + negatives))
    assert info_nce(query, query.clone(), queue, temperature).item() == pytest.approx(expected, rel=1e-6)
    # A negative equal to the query counts like the positive: -log(e^(1/T) / (2 e^(1/T) + K - 1)).
    queue[0] = query[0]
    both = -math.log(math.exp(1 / temperature) / (2 * math.exp(1 / temperature) + negatives - 1))
    assert info_nce(query[:1], query[:1], queue, temperature).item() == pytest.approx(both, rel=1e-6)


def _model(tiny_shards: Path, **overrides: Any) -> MoCoModel:
    torch.manual_seed(0)
    return get_task("moco_v2")(moco_run(tiny_shards) | {"task": moco_task(**overrides)}).build_model()


def test_the_queue_pointer_wraps_and_the_oldest_keys_are_replaced(tiny_shards: Path) -> None:
    model = _model(tiny_shards, queue_size=5, dim=4)
    first, second = torch.full((3, 4), 1.0), torch.full((3, 4), 2.0)
    model.enqueue(first)
    assert model.queue_ptr.item() == 3 and torch.equal(model.queue[:3], first)
    before = model.queue[3:].clone()
    model.enqueue(second)  # slots 3, 4, then wraps to 0
    assert model.queue_ptr.item() == 1
    assert torch.equal(model.queue[[3, 4, 0]], second) and not torch.equal(model.queue[3:], before)
    assert torch.equal(model.queue[1:3], first[1:])
    state = model.state_dict()
    assert {"queue", "queue_ptr", "momentum_updates"} <= set(state) and state["queue_ptr"].item() == 1


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_momentum_zero_copies_the_query_and_one_keeps_the_key(tiny_shards: Path, momentum: float) -> None:
    model = _model(tiny_shards, momentum=momentum)
    with torch.no_grad():
        for parameter in model.query_parameters():
            parameter.add_(torch.randn_like(parameter))
    keys_before = [p.clone() for p in model.key_parameters()]
    model.momentum_update()
    expected = model.query_parameters() if momentum == 0.0 else keys_before
    assert all(torch.equal(k, e) for k, e in zip(model.key_parameters(), expected, strict=True))
    assert model.momentum_updates.item() == 1


def test_the_key_network_gets_no_gradient_and_is_not_optimised(tiny_shards: Path) -> None:
    task = get_task("moco_v2")(moco_run(tiny_shards))
    torch.manual_seed(0)
    model = task.build_model()
    batch = _batch(task, tiny_shards, 4)
    model.train()
    loss, logs = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"moco_positive", "moco_top1_queue"}
    key_ids = {id(p) for p in model.key_parameters()}
    assert key_ids and all(p.grad is None and not p.requires_grad for p in model.key_parameters())
    # What the loop optimises (Adam over the parameters that require a gradient): the query network only.
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.query_parameters()}
    assert all(p.grad is not None for p in trainable)
    assert model.momentum_updates.item() == 1 and model.queue_ptr.item() == 4
    # The views collate at a fixed size; the keys are computed in the shuffled order and put back.
    assert batch["view_q"].shape == batch["view_k"].shape == (4, 3, 32, 32)


def test_shuffled_bn_groups_change_the_keys_and_keep_their_order(tiny_shards: Path) -> None:
    task = get_task("moco_v2")(moco_run(tiny_shards))
    torch.manual_seed(0)
    model = task.build_model().train()
    view = _batch(task, tiny_shards, 4)["view_k"]
    identity = torch.arange(4)
    whole = model.keys(view, identity)  # two groups: samples 0-1 and 2-3
    swapped = model.keys(view, torch.tensor([2, 0, 3, 1]))  # groups {2, 0} and {3, 1}
    model.shuffle_bn_groups = 1
    one_group = model.keys(view, torch.tensor([2, 0, 3, 1]))
    assert not torch.allclose(whole, swapped, atol=1e-4)
    assert torch.allclose(one_group, model.keys(view, identity), atol=1e-5)
    # Each key is still its own sample's: with per-sample statistics out of the way (eval mode), the
    # permutation changes nothing.
    model.eval()
    assert torch.allclose(model.keys(view, identity), model.keys(view, torch.tensor([2, 0, 3, 1])), atol=1e-5)


@pytest.mark.parametrize("exclude", [True, False])
def test_loss_on_a_fixed_batch(tiny_shards: Path, exclude: bool) -> None:
    """As tests/unit/test_tasks.py trains every pre-training task: six Adam steps on one fixed batch.

    With ``exclude_same_image`` the negatives stay the random starting entries and the loss falls. In
    MoCo's own form the batch's keys queue up as negatives of the same two images, nearly equal to the
    positives, so the loss rises towards log(1 + copies): the reason for the option on small sets."""
    task = get_task("moco_v2")(moco_run(tiny_shards) | {"task": moco_task(exclude_same_image=exclude)})
    torch.manual_seed(0)
    model = task.build_model()
    batch = _batch(task, tiny_shards)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        model.train()
        optimiser.zero_grad()
        loss, _ = task.loss(model, batch)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses)), losses
    if exclude:
        assert np.mean(losses[-2:]) < losses[0], losses
    else:
        assert min(losses[1:]) > losses[0], losses
    dense = task.transfer_model(model)
    assert set(dense.state_dict()) <= {k.split(".", 1)[-1] for k in model.state_dict()}
    assert dense(batch["image"])[0].shape[-2:] == batch["image"].shape[-2:]


def test_untrained_scores_are_the_scores_of_the_initial_network(tiny_shards: Path) -> None:
    run = moco_run(tiny_shards)
    task = get_task("moco_v2")(run)
    torch.manual_seed(run["seed"])
    initial = task.build_model()
    shards = ShardSet(tiny_shards)
    ids = shards.ids("test")
    state = torch.get_rng_state()
    scores = task.evaluate(initial, shards, ids)
    assert torch.equal(torch.get_rng_state(), state)  # evaluating draws nothing from the global generator
    for name in ("top1", "top1_backbone", "infonce"):
        assert scores[f"untrained_moco_{name}"] == scores[f"test_moco_{name}"]
    assert scores["test_moco_images"] == len(ids) == 4
    assert scores["test_moco_chance_top1"] == 0.25 and 0 <= scores["test_moco_top1"] <= 1
    assert task.evaluate(initial, shards, ids) == scores  # fixed views: the same scores every time


@pytest.fixture(scope="module")
def moco_pretrain(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A finished 6-step moco_v2 pre-training job on the tiny shard set."""
    snapshot = moco_run(tiny_shards, "moco-job", 6, loop={"eval_every": 3, "batch_size": 4})
    run = write_run(tmp_path_factory.mktemp("moco"), snapshot)
    run_job(run, threads=2)
    return snapshot, run.parent


def test_a_pretraining_job_trains_and_reports_its_score(moco_pretrain: tuple[dict, Path]) -> None:
    import pandas as pd

    _, run_dir = moco_pretrain
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for name in ("test_moco_top1", "test_moco_top1_backbone", "test_moco_infonce", "untrained_moco_top1"):
        assert np.isfinite(metrics[name]), name
    assert metrics["steps"] == 6 and metrics["test_moco_images"] == 4
    curves = pd.read_csv(run_dir / "curves.csv")
    assert curves["step"].tolist() == [3, 6] and np.isfinite(curves["train_loss"]).all()
    state = torch.load(run_dir / "model.pt", weights_only=True)["model"]
    assert state["momentum_updates"].item() == 6 and state["queue_ptr"].item() == (6 * 4) % 16
    # The key encoder followed the query encoder, by momentum: it moved, and it is not the query.
    key, query = state["key_encoder.body.conv1.weight"], state["dense.encoder.body.conv1.weight"]
    assert not torch.equal(key, query)


def test_the_pretrain_table_shows_the_score_beside_the_untrained_one(
    moco_pretrain: tuple[dict, Path],
) -> None:
    from geosem.aggregate.pretrain import collect_pretrain_runs, pretrain_markdown

    _, run_dir = moco_pretrain
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = collect_pretrain_runs([run_dir])
    assert table.loc[0, "task"] == "moco_v2" and table.loc[0, "test_moco_top1"] == metrics["test_moco_top1"]
    markdown = pretrain_markdown(table, "zoo")
    assert f"moco_top1 {metrics['test_moco_top1']:.3f}; untrained_moco_top1" in markdown


@pytest.mark.parametrize("mode", ["all", "deeplabv3"])
def test_a_finetune_starts_from_the_query_encoder(
    tiny_shards: Path, moco_pretrain: tuple[dict, Path], mode: str
) -> None:
    snapshot, run_dir = moco_pretrain
    init = pretrained_init(snapshot, run_dir / "model.pt")
    finetune = run_snapshot(tiny_shards, "finetune", "seg", 2, task={**SEG_TASK, "mode": mode}, init=init)
    model = get_task("segmentation")(finetune).build_model()
    state = torch.load(run_dir / "model.pt", weights_only=True)["model"]
    query = {k.removeprefix("dense.encoder."): v for k, v in state.items() if k.startswith("dense.encoder.")}
    if mode == "deeplabv3":
        encoder = model.net.encoder.model.state_dict()
        query = {k.removeprefix("body."): v for k, v in query.items()}
        assert all(torch.equal(encoder[k], v) for k, v in query.items() if k in encoder)
        assert torch.equal(encoder["conv1.weight"], query["conv1.weight"])
        return
    assert all(torch.equal(model.encoder.state_dict()[k], v) for k, v in query.items())
    assert all(p.requires_grad for p in model.parameters())  # the decoder is trained in the fine-tune


def test_a_finetune_job_from_a_moco_pretraining_runs(
    tiny_shards: Path, moco_pretrain: tuple[dict, Path], tmp_path: Path
) -> None:
    snapshot, run_dir = moco_pretrain
    init = pretrained_init(snapshot, run_dir / "model.pt")
    finetune = write_run(tmp_path, run_snapshot(tiny_shards, "finetune", "seg", 2, init=init))
    metrics = run_job(finetune, threads=2)
    assert metrics is not None and 0 <= metrics["test_miou"] <= 1


def _steps_logged(run_dir: Path) -> int:
    log = run_dir / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    try:
        return max(0, len(log.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tiny_shards: Path, tmp_path: Path) -> None:
    """tests/unit/test_resume_kill.py's check for this task, until its table has a moco_v2 case: killed
    after step 5 (checkpoints every 2), the rerun repeats step 5 and ends bit-identical."""
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}
    loop = {"eval_every": 4, "checkpoint_every": 2, "batch_size": 4}
    snapshot = moco_run(tiny_shards, "moco-kill", 8, loop=loop)
    whole, killed = write_run(tmp_path / "whole", snapshot), write_run(tmp_path / "killed", snapshot)
    env = cli_env(no_gpu)
    subprocess.run(job_command("pretrain", whole, "--procs", "1"), check=True, env=env, capture_output=True)

    process = start_job(
        "pretrain", killed, "--procs", "1", env=no_gpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while _steps_logged(killed.parent) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(killed.parent / "checkpoint.pt", weights_only=False)
    assert saved["step"] % 2 == 0 and saved["model"]["momentum_updates"].item() == saved["step"]

    rerun = subprocess.run(
        job_command("pretrain", killed, "--procs", "1"), check=True, env=env, capture_output=True, text=True
    )
    resumed = re.search(r"resuming \S+ from step (\d+)", rerun.stderr)
    assert resumed and int(resumed.group(1)) == saved["step"], rerun.stderr[-2000:]
    metrics = json.loads((whole.parent / "metrics.json").read_text())
    assert json.loads((killed.parent / "metrics.json").read_text()) == metrics
    assert (killed.parent / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
    a = torch.load(whole.parent / "model.pt", weights_only=True)["model"]
    b = torch.load(killed.parent / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parameters_are_declared_with_moco_v2_defaults() -> None:
    params = resolve_parameters("moco_v2", {}, "pretrain.tasks.moco_v2")
    assert params["momentum"] == 0.999 and params["temperature"] == 0.2 and params["dim"] == 128
    assert params["mlp_hidden"] == 2048 and params["queue_size"] == 65536 and params["view_size"] is None
    with pytest.raises(ValueError, match=re.escape("pretrain.tasks.moco_v2.view_size")):
        resolve_parameters("moco_v2", {"view_size": [32]}, "pretrain.tasks.moco_v2")

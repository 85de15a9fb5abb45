"""The DINO pre-training task (geosem.tasks.dino): centring, sharpening and the loss on constructed
logits with known answers, the schedules, the EMA teacher outside the optimiser, the multi-crop
transform, short real runs with a ResNet and a ViT, the transfer to segmentation, and exact resume
after a SIGKILL."""

from __future__ import annotations

import itertools
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
import torch.nn.functional as F
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.tasks import get_task, resolve_parameters
from geosem.tasks.dino import (
    DINOModel,
    dino_loss,
    local_size,
    teacher_momentum,
    teacher_targets,
    teacher_temperature,
    top1_retrieval,
    updated_centre,
)
from geosem.train.jobs import run_job

from tests.helpers import SEG_TASK, cli_env, job_command, pretrained_init, run_snapshot, start_job, write_run

VIT = "vit_tiny_patch16_224"
WIDTHS = [8, 16, 32, 64, 128]
# Small enough for CPU tests: 2 local crops, 256 prototypes.
TINY = {"local_crops": 2, "out_dim": 256}


def dino_section(**overrides: Any) -> dict[str, Any]:
    """The snapshot task section of a ``dino`` init, as the planner resolves it."""
    values = {**TINY, **overrides}
    return {"name": "dino", "init": "dino", **resolve_parameters("dino", values, "pretrain.tasks.dino")}


def dino_run(shards: Path, steps: int = 2, encoder: str = "resnet18", **extra: Any) -> dict[str, Any]:
    model = {"encoder": encoder, "decoder_channels": WIDTHS}
    run_id = f"dino-{encoder}-64x96-s0"
    return run_snapshot(shards, "pretrain", run_id, steps, task=dino_section(), seed=0, model=model, **extra)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.log()).sum(-1)


# --- the loss on constructed inputs -------------------------------------------------------------------


def test_centre_is_an_ema_of_the_teacher_batch_mean_and_centring_shifts_the_softmax() -> None:
    centre = torch.tensor([[1.0, -2.0, 0.5]])
    views = [
        torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 0.0, 6.0], [0.0, 2.0, 3.0]]),
    ]
    mean = torch.tensor([[1.0, 1.0, 3.0]])  # over both views and both samples
    assert torch.allclose(updated_centre(centre, views, 0.9), 0.9 * centre + 0.1 * mean)
    assert torch.allclose(updated_centre(centre, views, 0.0), mean)
    # The teacher distribution is the softmax of the centred, temperature-scaled logits.
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    expected = torch.tensor([math.exp(1.0 / 0.5), math.exp(3.0 / 0.5), math.exp(-0.5 / 0.5)])
    assert torch.allclose(teacher_targets(logits, centre, 0.5)[0], expected / expected.sum())
    # A centre equal to the logits cancels them: uniform targets (the collapse centring prevents).
    assert torch.allclose(teacher_targets(logits, logits, 0.04), torch.full((1, 3), 1 / 3))


def test_a_lower_temperature_sharpens_the_teacher_distribution() -> None:
    logits = torch.tensor([[0.3, -0.1, 0.2, 0.0]])
    zero = torch.zeros(1, 4)
    entropies = [float(entropy(teacher_targets(logits, zero, t))) for t in (1.0, 0.1, 0.04, 0.01)]
    assert entropies == sorted(entropies, reverse=True) and entropies[0] < math.log(4)
    assert teacher_targets(logits, zero, 0.001)[0, 0] > 0.999  # towards one-hot on the largest logit


def test_identical_student_and_teacher_logits_give_the_teacher_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 16)
    zero = torch.zeros(1, 16)
    loss = dino_loss([logits] * 4, [logits] * 2, zero, 0.1, 0.1)
    assert torch.isclose(loss, entropy(F.softmax(logits / 0.1, dim=-1)).mean(), atol=1e-5)
    # Two global views, different: the mean of H(teacher 0, student 1) and H(teacher 1, student 0).
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    q_a, q_b = F.softmax(a / 0.04, -1), F.softmax(b / 0.04, -1)
    by_hand = (
        -(q_a * F.log_softmax(b / 0.1, -1)).sum(-1).mean() - (q_b * F.log_softmax(a / 0.1, -1)).sum(-1).mean()
    ) / 2
    assert torch.isclose(dino_loss([a, b], [a, b], zero, 0.1, 0.04), by_hand, atol=1e-5)


def test_schedules_momentum_from_0996_to_1_and_temperature_warm_up() -> None:
    steps = 50
    momenta = [teacher_momentum(s, steps) for s in range(steps)]
    assert momenta[0] == pytest.approx(0.996) and momenta[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(momenta))
    assert teacher_momentum(0, 1) == 1.0
    temps = [teacher_temperature(s, steps, 0.04, 0.07, 0.3) for s in range(steps)]
    assert temps[0] == pytest.approx(0.04) and temps[14] == pytest.approx(0.07) and temps[-1] == 0.07
    assert all(a <= b for a, b in itertools.pairwise(temps))
    assert local_size(64, 96) == (32, 48) and local_size(192, 640) == (80, 272)


def test_retrieval_scores_by_nearest_gallery_row() -> None:
    gallery = torch.eye(3)
    assert top1_retrieval(gallery + 0.1, gallery) == 1.0
    assert top1_retrieval(gallery[[1, 0, 2]], gallery) == pytest.approx(1 / 3)


# --- model, optimiser, transform -----------------------------------------------------------------------


def _batch(task: Any, shards: Path, count: int = 2) -> dict[str, torch.Tensor]:
    shard_set = ShardSet(shards)
    dataset = ShardDataset(shard_set, shard_set.ids("train"), task.fields, transform=task.transform, seed=0)
    items = [dataset[(i, i)] for i in range(count)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def test_teacher_is_outside_the_optimiser_gets_no_gradient_and_follows_the_ema(tiny_shards: Path) -> None:
    task = get_task("dino")(dino_run(tiny_shards, steps=10))
    torch.manual_seed(0)
    model = task.build_model()
    assert isinstance(model, DINOModel)
    state = model.state_dict()
    assert {"centre", "step"} <= set(state) and any(k.startswith("teacher.encoder.") for k in state)
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]  # what the loop gives Adam
    assert teacher_ids and not teacher_ids & {id(p) for p in trainable}
    # Neither is the untrained decoder the fine-tune starts from (it would get no gradient under DDP).
    assert not {id(p) for p in [*model.decoder.parameters(), *model.heads.parameters()]} & {
        id(p) for p in trainable
    }
    optimiser = torch.optim.Adam(trainable, lr=1e-3)
    batch = _batch(task, tiny_shards)
    model.train()
    loss, logs = task.loss(model, batch)
    loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert int(model.step) == 1 and logs["teacher_temp"] == pytest.approx(0.04)
    assert not torch.equal(model.centre, torch.zeros_like(model.centre))
    optimiser.step()
    # The next loss call first moves the teacher towards the updated student with momentum m(0) = 0.996.
    teacher = [p.clone() for p in model.teacher["head"].parameters()]
    student = [p.detach().clone() for p in model.head.parameters()]
    task.loss(model, batch)
    for t, s, now in zip(teacher, student, model.teacher["head"].parameters(), strict=True):
        assert torch.allclose(now, 0.996 * t + 0.004 * s, atol=1e-7)
    assert int(model.step) == 2


def test_multicrop_transform_is_deterministic_and_leaves_torchs_rng_alone(tiny_shards: Path) -> None:
    task = get_task("dino")(dino_run(tiny_shards))
    image = ShardDataset(ShardSet(tiny_shards), ShardSet(tiny_shards).ids("train"), ("image",))[0]["image"]
    before = torch.get_rng_state()
    a = task.transform({"image": image}, np.random.default_rng([0, 7]))
    assert torch.equal(torch.get_rng_state(), before)
    b = task.transform({"image": image}, np.random.default_rng([0, 7]))
    c = task.transform({"image": image}, np.random.default_rng([0, 8]))
    assert list(a) == ["image", "global_0", "global_1", "local_0", "local_1"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["global_0"], c["global_0"]) and not torch.equal(a["global_0"], a["global_1"])
    assert a["global_0"].shape == a["global_1"].shape == (3, 64, 96)
    assert (
        a["local_0"].shape == (3, 32, 48)
        and 0.0 <= float(a["local_1"].min()) <= float(a["local_1"].max()) <= 1.0
    )


# --- real training jobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["resnet18", VIT])
def test_a_short_dino_run_writes_its_quality_scores(tiny_shards: Path, tmp_path: Path, encoder: str) -> None:
    path = write_run(tmp_path, dino_run(tiny_shards, steps=3, encoder=encoder, loop={"eval_every": 3}))
    metrics = run_job(path, threads=2)
    assert metrics is not None and metrics == json.loads((path.parent / "metrics.json").read_text())
    assert metrics["test_dino_images"] == 4 and np.isfinite(metrics["test_dino_loss"])
    for key in ("test_dino_retrieval", "test_dino_retrieval_local", "test_dino_retrieval_untrained"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test_dino_retrieval_chance"] == 0.25
    curves = (path.parent / "curves.csv").read_text()
    assert "teacher_entropy" in curves and "test_dino_loss" in curves
    state = torch.load(path.parent / "model.pt", weights_only=True)["model"]
    assert int(state["step"]) == 3


def test_fine_tune_starts_from_the_students_encoder_and_the_untrained_decoder(
    tiny_shards: Path, tmp_path: Path
) -> None:
    pretrain = dino_run(tiny_shards, steps=2)
    pre = write_run(tmp_path, pretrain)
    run_job(pre, threads=2)
    init = pretrained_init(pretrain, pre.parent / "model.pt")
    fresh = get_task("dino")(init["run"]).build_model()  # what the pre-training started from
    task = {**SEG_TASK, "mode": "all"}
    seg = get_task("segmentation")(run_snapshot(tiny_shards, "finetune", "seg-dino", 2, task=task, init=init))
    model = seg.build_model()
    state, tuned = torch.load(pre.parent / "model.pt", weights_only=True)["model"], model.state_dict()
    encoder = [k for k in state if k.startswith("encoder.")]
    assert encoder and all(torch.equal(tuned[k], state[k]) for k in encoder)
    assert any(not torch.equal(state[k], fresh.state_dict()[k]) for k in encoder)  # DINO trained it
    # The decoder never trained: the pre-training stored it as built.
    decoder = [k for k in state if k.startswith("decoder.")]
    assert decoder and all(torch.equal(tuned[k], state[k]) for k in decoder)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(k.startswith(("teacher.", "head.")) for k in tuned)
    out = model(torch.rand(1, 3, 64, 96))[0]
    assert out.shape == (1, pretrain["data"]["num_classes"], 64, 96)


def test_evaluation_is_repeatable_and_draws_nothing_from_torchs_rng(tiny_shards: Path) -> None:
    task = get_task("dino")(dino_run(tiny_shards))
    torch.manual_seed(0)
    model = task.build_model()
    shards = ShardSet(tiny_shards)
    before = torch.get_rng_state()
    first = task.evaluate(model, shards, shards.ids("test"))
    assert torch.equal(torch.get_rng_state(), before)
    assert task.evaluate(model, shards, shards.ids("test")) == first
    # The run's seed is 0 and the model was built right after seeding with it: it is the initial network.
    assert first["test_dino_retrieval"] == first["test_dino_retrieval_untrained"]
    assert first["test_dino_retrieval_local"] == first["test_dino_retrieval_local_untrained"]
    # A fresh task (a resumed job) computes the untrained reference again, to the same numbers.
    assert get_task("dino")(dino_run(tiny_shards)).evaluate(model, shards, shards.ids("test")) == first


# --- exact resume after SIGKILL (the approach of tests/unit/test_resume_kill.py) ------------------------


def _steps_logged(run_dir: Path) -> int:
    log = run_dir / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    try:
        return max(0, len(log.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tiny_shards: Path, tmp_path: Path) -> None:
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""}
    snapshot = dino_run(tiny_shards, steps=8, loop={"eval_every": 4, "checkpoint_every": 2})
    whole, killed = write_run(tmp_path / "whole", snapshot), write_run(tmp_path / "killed", snapshot)
    env = cli_env(no_gpu)
    subprocess.run(job_command("pretrain", whole, "--procs", "1"), check=True, env=env, capture_output=True)

    process = start_job(
        "pretrain", killed, "--procs", "1", env=no_gpu, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while _steps_logged(killed.parent) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)  # between the checkpoints of steps 4 and 6
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(killed.parent / "checkpoint.pt", weights_only=False)["step"]
    rerun = subprocess.run(
        job_command("pretrain", killed, "--procs", "1"), check=True, env=env, capture_output=True, text=True
    )
    assert re.search(rf"resuming \S+ from step {saved}\b", rerun.stderr), rerun.stderr[-2000:]

    assert json.loads((killed.parent / "metrics.json").read_text()) == json.loads(
        (whole.parent / "metrics.json").read_text()
    )
    assert (killed.parent / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
    a = torch.load(whole.parent / "model.pt", weights_only=True)["model"]
    b = torch.load(killed.parent / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(b["step"]) == 8 and not torch.equal(b["centre"], torch.zeros_like(b["centre"]))

"""The training loop on real shards: losses fall, runs repeat, and a stopped run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from geosem.snapshot import write_snapshot
from geosem.train.jobs import few_shot_subset, run_job
from geosem.train.loop import StepBatchSampler

from tests.helpers import DEPTH_TASK, SEG_TASK, pretrained_init, run_snapshot, write_run


def test_batch_order_depends_only_on_seed_and_step() -> None:
    full = list(StepBatchSampler(5, 3, seed=4, start=0, steps=6))
    resumed = list(StepBatchSampler(5, 3, seed=4, start=3, steps=6))
    assert full[3:] == resumed
    draws = [draw for batch in full for _, draw in batch]
    assert draws == list(range(18))
    # Every epoch of 5 draws visits each sample once.
    assert sorted(index for batch in full for index, _ in batch[:0]) == []
    first_epoch = [index for batch in full for index, _ in batch][:5]
    assert sorted(first_epoch) == [0, 1, 2, 3, 4]


def test_few_shot_subset_is_seeded_and_independent_of_the_test_split() -> None:
    pool = [f"x{i}" for i in range(50)]
    assert few_shot_subset(pool, 16, 0) == few_shot_subset(pool, 16, 0)
    assert few_shot_subset(pool, 16, 0) != few_shot_subset(pool, 16, 1)
    assert len(set(few_shot_subset(pool, 16, 3))) == 16
    assert few_shot_subset(pool, 0, 3) == pool


def test_depth_pretraining_loss_falls(tiny_shards: Path, tmp_path: Path) -> None:
    run = write_run(tmp_path, run_snapshot(tiny_shards, "pretrain", "depth", 12, task=DEPTH_TASK))
    run_job(run, threads=2)
    curves = pd.read_csv(run.parent / "curves.csv")
    assert curves["train_loss"].iloc[-3:].mean() < curves["train_loss"].iloc[:2].mean()
    metrics = json.loads((run.parent / "metrics.json").read_text())
    assert metrics["depth_images_scored"] == 4 and metrics["depth_abs_rel"] > 0
    assert not (run.parent / "checkpoint.pt").exists()


def test_finetune_from_depth_and_resume_matches_uninterrupted(tiny_shards: Path, tmp_path: Path) -> None:
    pretrain = run_snapshot(tiny_shards, "pretrain", "depth", 4, task=DEPTH_TASK)
    pre = write_run(tmp_path, pretrain)
    run_job(pre, threads=2)
    init = pretrained_init(pretrain, pre.parent / "model.pt")
    snap = run_snapshot(tiny_shards, "finetune", "seg", 6, task=SEG_TASK, init=init)
    whole = write_run(tmp_path / "whole", snap)
    first = run_job(whole, threads=2)
    assert first is not None

    split = write_run(tmp_path / "split", snap)
    assert run_job(split, threads=2, max_steps_this_call=3) is None  # stops resumably after step 3
    state = torch.load(split.parent / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and not (split.parent / "metrics.json").exists()
    second = run_job(split, threads=2)
    assert second == first
    assert (split.parent / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
    a = torch.load(whole.parent / "model.pt", weights_only=True)["model"]
    b = torch.load(split.parent / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert 0.0 <= first["test_miou"] <= 1.0 and first["train_samples"] == 4


def test_a_checkpoint_of_another_configuration_is_not_resumed(tiny_shards: Path, tmp_path: Path) -> None:
    snap = run_snapshot(tiny_shards, "finetune", "seg", 4, task=SEG_TASK, init={"name": "random"})
    path = write_run(tmp_path, snap)
    assert run_job(path, threads=2, max_steps_this_call=2) is None
    snap["loop"]["lr"] = 5e-4
    write_snapshot(snap, path)
    run_job(path, threads=2)
    curves = pd.read_csv(path.parent / "curves.csv")
    assert curves["step"].tolist() == [2, 4]  # started from step 0, not from the stale checkpoint


def test_missing_pretrained_checkpoint_is_named(tiny_shards: Path, tmp_path: Path) -> None:
    pretrain = run_snapshot(tiny_shards, "pretrain", "gone", 2, task=DEPTH_TASK)
    init = pretrained_init(pretrain, tmp_path / "gone" / "model.pt")
    path = write_run(tmp_path, run_snapshot(tiny_shards, "finetune", "seg", 2, task=SEG_TASK, init=init))
    with pytest.raises(FileNotFoundError, match="gone"):
        run_job(path, threads=1)


def _pretrained_init(tiny_shards: Path, tmp_path: Path) -> dict[str, Any]:
    pretrain = run_snapshot(tiny_shards, "pretrain", "depth", 2, task=DEPTH_TASK)
    pre = write_run(tmp_path / "pre", pretrain)
    run_job(pre, threads=2)
    return pretrained_init(pretrain, pre.parent / "model.pt")


def test_frozen_mode_trains_the_decoder_and_leaves_the_encoder_untouched(
    tiny_shards: Path, tmp_path: Path
) -> None:
    init = _pretrained_init(tiny_shards, tmp_path)
    start = torch.load(init["checkpoint"], weights_only=True)["model"]
    snap = run_snapshot(tiny_shards, "finetune", "frozen", 3, task={**SEG_TASK, "mode": "frozen"}, init=init)
    path = write_run(tmp_path, snap)
    run_job(path, threads=2)
    end = torch.load(path.parent / "model.pt", weights_only=True)["model"]
    encoder_keys = [k for k in start if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder_keys)
    for key in encoder_keys:  # weights and BatchNorm statistics alike
        assert torch.equal(start[key], end[key]), key
    decoder_keys = [k for k in start if k.startswith("decoder.")]
    assert any(not torch.equal(start[k], end[k]) for k in decoder_keys)


def test_encoder_only_mode_starts_from_a_fresh_decoder(tiny_shards: Path, tmp_path: Path) -> None:
    from geosem.tasks import get_task

    init = _pretrained_init(tiny_shards, tmp_path)
    start = torch.load(init["checkpoint"], weights_only=True)["model"]
    for mode, decoder_is_pretrained in (("all", True), ("encoder_only", False)):
        snap = run_snapshot(tiny_shards, "finetune", mode, 1, task={**SEG_TASK, "mode": mode}, init=init)
        model = get_task("segmentation")(snap).build_model()
        state = model.state_dict()
        assert all(torch.equal(state[k], start[k]) for k in start if k.startswith("encoder."))
        same_decoder = all(torch.equal(state[k], start[k]) for k in start if k.startswith("decoder."))
        assert same_decoder == decoder_is_pretrained, mode


def test_every_step_is_logged_once_through_dvclive_also_across_a_kill(
    tiny_shards: Path, tmp_path: Path
) -> None:
    from geosem.train.steplog import read_step_log

    snap = run_snapshot(tiny_shards, "finetune", "seg", 5, task=SEG_TASK, init={"name": "random"})
    whole = write_run(tmp_path / "whole", snap)
    run_job(whole, threads=2)
    losses = read_step_log(whole.parent, "train/loss")
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5]
    assert [step for step, _ in read_step_log(whole.parent, "test/test_miou")] == [2, 4, 5]
    assert [step for step, _ in read_step_log(whole.parent, "train/lr")] == [1, 2, 3, 4, 5]

    split = write_run(tmp_path / "split", snap)
    assert run_job(split, threads=2, max_steps_this_call=3) is None  # checkpoint at step 3
    # A killed attempt would have logged steps past its checkpoint before dying; the resume replays them.
    loss_tsv = split.parent / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    loss_tsv.write_text(loss_tsv.read_text() + "4\t99.0\n5\t99.0\n")
    run_job(split, threads=2)
    assert read_step_log(split.parent, "train/loss") == losses


def test_evaluating_more_often_changes_no_weight(tiny_shards: Path, tmp_path: Path) -> None:
    """Evaluation draws no random numbers and leaves the weights alone, so `eval_every` changes only the
    curves' resolution (and the run time), never the final model or metrics."""
    models = {}
    for eval_every in (1, 4):
        snap = run_snapshot(
            tiny_shards, "finetune", f"seg-e{eval_every}", 4, task=SEG_TASK, init={"name": "random"}
        )
        snap["loop"]["eval_every"] = eval_every
        path = write_run(tmp_path, snap)
        metrics = run_job(path, threads=2)
        assert metrics is not None
        models[eval_every] = (
            torch.load(path.parent / "model.pt", weights_only=True)["model"],
            {k: v for k, v in metrics.items() if k.startswith("test_")},
        )
    (often, often_metrics), (rarely, rarely_metrics) = models[1], models[4]
    assert all(torch.equal(often[k], rarely[k]) for k in often)
    assert often_metrics == rarely_metrics


def test_the_step_schedule_drops_the_rate_once_as_monodepth2_does() -> None:
    """monodepth2: 1e-4 for 14 of its 20 epochs, then 1e-5 (StepLR(15, 0.1) stepped at each epoch's start)."""
    from geosem.train.loop import LoopSpec, _make_scheduler

    spec = LoopSpec(
        steps=20, batch_size=1, lr=1e-4, weight_decay=0.0, lr_schedule="step", eval_every=5,
        checkpoint_every=5, seed=0, lr_step_at=0.7, lr_step_factor=0.1,
    )  # fmt: skip
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=spec.lr)
    scheduler = _make_scheduler(optimizer, spec)
    rates = []
    for _ in range(spec.steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:14] == [1e-4] * 14 and rates[14:] == pytest.approx([1e-5] * 6)

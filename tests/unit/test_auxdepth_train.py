"""Study B's alternating trainer (geosem.train.alternating) and its job (geosem.train.auxdepth_job).

On a toy model: the decoder's update is alpha x (resp. 1 - alpha) x a plain AdamW step's, the heads'
is not scaled; the beta variant and gamma. On tiny real runs (a 4-block ViT, a 32-channel decoder,
shard sets written here): alpha = 1 with an auxiliary task trains the baseline's depth model bit for
bit, the backbone stays bit-identical and in no optimiser, a SIGKILLed job resumes to the uninterrupted
run's metrics, a checkpoint of another snapshot is not resumed, and an unknown task names the known.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from geosem.shards.writer import ShardWriter
from geosem.train.alternating import (
    MIN_LR_RATIO,
    WARMUP_RATIO,
    AlternatingOptimizer,
    AlternatingSpec,
    warmup_cosine,
)
from torch import nn

from tests.helpers import cli_env, job_command, write_run

# --- the toy model -------------------------------------------------------------------------------------

LR, HEAD_LR = 1e-2, 3e-3


class Toy(nn.Module):
    """A decoder Linear and two heads on plain tensors, in float64: an update of 1e-3 on a weight of 0.5
    is then exact to 1e-12, so the ratio test need not allow for float32 rounding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.decoder = nn.Linear(4, 6)
        self.depth_head = nn.Linear(6, 1)
        self.aux_head = nn.Linear(6, 3)
        self.double()

    def depth_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.depth_head(torch.tanh(self.decoder(x))).square().mean()

    def aux_loss(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux_head(torch.tanh(self.decoder(x))).sin().sum()


X_DEPTH = torch.linspace(-1, 1, 20, dtype=torch.float64).reshape(5, 4)
X_AUX = torch.linspace(2, -1, 12, dtype=torch.float64).reshape(3, 4)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _plain_update(model: Toy, loss: str, lr: float, part: str, weight_decay: float) -> torch.Tensor:
    """The update of ``part`` by one plain AdamW step at ``lr`` over the whole toy model."""
    twin = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=lr, weight_decay=weight_decay)
    getattr(twin, loss)(X_DEPTH if loss == "depth_loss" else X_AUX).backward()
    before = _flat(getattr(twin, part))
    optimizer.step()
    return _flat(getattr(twin, part)) - before


def _alternating(spec: AlternatingSpec, model: Toy) -> AlternatingOptimizer:
    params = lambda m: list(m.parameters())  # noqa: E731
    return AlternatingOptimizer(spec, params(model.decoder), params(model.depth_head), params(model.aux_head))


def _spec(**overrides: Any) -> AlternatingSpec:
    values = {"steps": 10, "lr": LR, "head_lr": HEAD_LR, "grad_clip": None, "weight_decay": 0.01}
    return AlternatingSpec(**(values | overrides))


def _one_global_step(spec: AlternatingSpec) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(actual update, plain AdamW update at the unscaled rate) of decoder and heads in each half step."""
    model = Toy()
    optimizer = _alternating(spec, model)
    wd = spec.weight_decay
    out = {}
    expected_decoder = _plain_update(model, "depth_loss", LR, "decoder", wd)
    expected_head = _plain_update(model, "depth_loss", HEAD_LR, "depth_head", wd)
    before_decoder, before_head = _flat(model.decoder), _flat(model.depth_head)
    optimizer.depth_step(model.depth_loss(X_DEPTH))
    out["depth decoder"] = (_flat(model.decoder) - before_decoder, expected_decoder)
    out["depth head"] = (_flat(model.depth_head) - before_head, expected_head)
    # The auxiliary step starts where the depth step left the decoder (eq. 5's theta_tD).
    expected_decoder = _plain_update(model, "aux_loss", LR, "decoder", wd)
    expected_head = _plain_update(model, "aux_loss", HEAD_LR, "aux_head", wd)
    before_decoder, before_head = _flat(model.decoder), _flat(model.aux_head)
    optimizer.aux_step(model.aux_loss(X_AUX))
    out["aux decoder"] = (_flat(model.decoder) - before_decoder, expected_decoder)
    out["aux head"] = (_flat(model.aux_head) - before_head, expected_head)
    return out


def _assert_scaled(actual: torch.Tensor, plain: torch.Tensor, scale: float, what: str) -> None:
    # Adam's first step is lr x g / (|g| + eps) (+ lr x wd x p): linear in the rate, whatever g is.
    assert plain.abs().min() > 0, f"{what}: the plain step leaves a weight in place; pick other inputs"
    torch.testing.assert_close(actual, scale * plain, rtol=1e-9, atol=1e-15, msg=what)


@pytest.mark.parametrize("alpha", [0.9, 0.3, 1.0, 0.0])
def test_alpha_scales_the_decoder_update_and_never_the_heads(alpha: float) -> None:
    updates = _one_global_step(_spec(alpha=alpha))
    _assert_scaled(*updates["depth decoder"], alpha, "depth step, decoder")
    _assert_scaled(*updates["aux decoder"], 1 - alpha, "auxiliary step, decoder")
    _assert_scaled(*updates["depth head"], 1.0, "depth head")
    _assert_scaled(*updates["aux head"], 1.0, "auxiliary head")
    if alpha == 1.0:  # AdamW at lr 0: not a rounding error's worth of movement
        assert torch.equal(updates["aux decoder"][0], torch.zeros_like(updates["aux decoder"][0]))


def test_beta_leaves_depth_steps_unscaled_and_scales_auxiliary_steps() -> None:
    updates = _one_global_step(_spec(alpha=0.9, beta=0.05))  # alpha is ignored once beta is set
    _assert_scaled(*updates["depth decoder"], 1.0, "depth step, decoder")
    _assert_scaled(*updates["aux decoder"], 0.05, "auxiliary step, decoder")
    _assert_scaled(*updates["aux head"], 1.0, "auxiliary head")


def test_gamma_scales_every_rate() -> None:
    updates = _one_global_step(_spec(alpha=1.0, gamma=0.5))
    _assert_scaled(*updates["depth decoder"], 0.5, "depth step, decoder")
    _assert_scaled(*updates["depth head"], 0.5, "depth head")
    _assert_scaled(*updates["aux head"], 0.5, "auxiliary head")


def test_schedule_warms_up_linearly_then_follows_the_cosine() -> None:
    steps, warmup = 100, 10
    assert warmup_cosine(0, steps, warmup) == pytest.approx(WARMUP_RATIO)
    cosine = lambda s: MIN_LR_RATIO + 0.5 * (1 - MIN_LR_RATIO) * (1 + math.cos(math.pi * s / steps))  # noqa: E731
    assert warmup_cosine(5, steps, warmup) == pytest.approx(
        cosine(5) * (WARMUP_RATIO + 0.5 * (1 - WARMUP_RATIO))
    )
    assert warmup_cosine(10, steps, warmup) == pytest.approx(cosine(10))
    assert warmup_cosine(steps, steps, warmup) == pytest.approx(MIN_LR_RATIO)
    # Both optimisers follow it: the rates after k global steps.
    model = Toy()
    optimizer = _alternating(_spec(alpha=0.75, warmup_steps=warmup, steps=steps), model)
    for _ in range(3):
        optimizer.depth_step(model.depth_loss(X_DEPTH))
        optimizer.aux_step(model.aux_loss(X_AUX))
        optimizer.end_step()
    factor = warmup_cosine(3, steps, warmup)
    rates = optimizer.rates()
    assert rates["lr_depth"] == pytest.approx(LR * 0.75 * factor)
    assert rates["lr_aux"] == pytest.approx(LR * 0.25 * factor)
    assert rates["lr_head"] == pytest.approx(HEAD_LR * factor)


def test_gradients_are_clipped_per_step_over_that_steps_parameters() -> None:
    model = Toy()
    optimizer = _alternating(_spec(grad_clip=1e-3), model)
    norm = optimizer.depth_step(model.depth_loss(X_DEPTH) * 1e3)
    clipped = torch.cat(
        [p.grad.flatten() for p in (*model.decoder.parameters(), *model.depth_head.parameters())]
    )
    assert norm > 1e-3 and float(clipped.norm()) == pytest.approx(1e-3, rel=1e-4)
    assert all(p.grad is None for p in model.aux_head.parameters())


def test_a_frozen_parameter_in_an_optimiser_is_refused() -> None:
    model = Toy()
    model.decoder.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="decoder"):
        _alternating(_spec(), model)


# --- data streams --------------------------------------------------------------------------------------


def test_fractions_of_one_seed_are_nested_and_seeds_differ() -> None:
    from geosem.train.auxdepth_job import fraction_subset

    pool = [f"id{i:03d}" for i in range(200)]
    small, large = fraction_subset(pool, 0.1, seed=3), fraction_subset(pool, 0.5, seed=3)
    assert len(small) == 20 and len(large) == 100 and set(small) < set(large)
    assert small == sorted(small) and fraction_subset(pool, 1.0, seed=3) == pool
    assert fraction_subset(pool, 0.1, seed=4) != small
    with pytest.raises(ValueError, match="fraction"):
        fraction_subset(pool, 0.0, seed=3)


def test_mix6_schedule_is_proportional_to_size_and_prefix_stable() -> None:
    from geosem.train.auxdepth_job import aux_schedule

    schedule = aux_schedule([300, 100], 4000, seed=0)
    assert abs(float((schedule == 0).mean()) - 0.75) < 0.03 and set(schedule.tolist()) == {0, 1}
    # A run's first steps do not depend on how long it is, nor on anything but the seed.
    assert np.array_equal(aux_schedule([300, 100], 50, seed=0), schedule[:50])
    assert not np.array_equal(aux_schedule([300, 100], 50, seed=1), schedule[:50])
    assert not aux_schedule([7], 20, seed=0).any()


# --- tiny real runs ------------------------------------------------------------------------------------

SIZE = (32, 48)  # the shard sets' images; the training crop is 28 x 42 (2 x 3 tokens of 14 pixels)
BACKBONE = {
    "name": "vit_small_patch14_dinov2",
    "weights": "",
    "layout": "timm",
    "kwargs": {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 42},
}


def _write_set(out: Path, label_space: str | None, train: int, test: int, depth: bool, seed: int) -> Path:
    """A small shard set of smooth random images (and depth growing down the image, and labels)."""
    rng = np.random.default_rng(seed)
    height, width = SIZE
    rows = np.linspace(0.5, 6.0, height, dtype=np.float32)[:, None]
    with ShardWriter(
        out,
        dataset=out.parent.name,
        variant=out.name,
        source_version="test",
        converter_version="1",
        label_space=label_space,
        parameters={"height": height, "width": width},
        samples_per_part=4,
    ) as writer:
        for i in range(train + test):
            image = rng.integers(0, 256, (height // 4, width // 4, 3)).repeat(4, 0).repeat(4, 1)
            arrays: dict[str, np.ndarray] = {"image": image.astype(np.uint8)}
            if depth:
                arrays["depth"] = rows * rng.uniform(0.8, 1.2) + np.zeros((1, width), np.float32)
            if label_space:
                labels = rng.integers(0, 5, (height // 8, width // 8)).repeat(8, 0).repeat(8, 1)
                labels[0] = 255
                arrays["label"] = labels.astype(np.uint8)
            meta = {"id": f"{out.parent.name}-{i}", "split": "train" if i < train else "test"}
            meta |= {"sequence": "s", "frame": i, "fx": 20.0, "fy": 20.0, "cx": 24.0, "cy": 16.0}
            writer.add(arrays, meta)
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A depth set (6 train, 2 test) and two labelled auxiliary sets of different sizes (MIX6 here)."""
    root = tmp_path_factory.mktemp("auxdepth-shards")
    return {
        "synth_indoor": _write_set(root / "synth_indoor" / "32x48-v1", None, 6, 2, depth=True, seed=1),
        "synth_ade": _write_set(root / "synth_ade" / "32x48-v1", "voc21", 5, 1, depth=False, seed=2),
        "synth_sun": _write_set(root / "synth_sun" / "32x48-v1", "sun37", 3, 1, depth=False, seed=3),
    }


def _snapshot(
    sets: dict[str, Path],
    run_id: str,
    task: str = "none",
    aux_sets: tuple[str, ...] = (),
    alpha: float = 1.0,
    beta: float | None = None,
    **loop: Any,
) -> dict[str, Any]:
    classes = {"synth_ade": 21, "synth_sun": 37}
    datasets = [
        {"dataset": name, "shards": str(sets[name]), "split": "train", "num_classes": classes[name]}
        for name in aux_sets
    ]
    return {
        "kind": "auxdepth",
        "run_id": run_id,
        "seed": 0,
        "backbone": copy.deepcopy(BACKBONE),
        "decoder": {"channels": 32},
        "depth": {
            "dataset": "synth_indoor",
            "shards": str(sets["synth_indoor"]),
            "train_split": "train",
            "test_split": "test",
            "fraction": 1.0,
            "crop": [28, 42],
            "augment": "nyu",
            "min_depth": 0.001,
            "max_depth": 10.0,
            "eval_crop": "eigen_nyu",
            "eval_max_depth": 10.0,
            "flip_tta": True,
        },
        "aux": {"task": task, "datasets": datasets, "alpha": alpha, "beta": beta},
        "loop": {
            "steps": 3,
            "batch_size": 2,
            "aux_batch_size": 2,
            "lr": 1e-3,
            "head_lr": 1e-3,
            "gamma": 1.0,
            "weight_decay": 0.01,
            "warmup_steps": 1,
            "grad_clip": 35.0,
            "eval_every": 2,
            "checkpoint_every": 2,
            "gradient_loss": "intended",
            "gradient_weight": 0.5,
            **loop,
        },
        "compute": {"num_workers": 0},
    }


def _train(root: Path, snapshot: dict[str, Any], **kwargs: Any) -> tuple[Path, dict[str, Any] | None]:
    from geosem.train.auxdepth_job import run_auxdepth_job

    path = write_run(root, snapshot)
    return path.parent, run_auxdepth_job(path, **kwargs)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def _without_time(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics.json less its wall-clock training time, the one entry two identical runs differ in."""
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


def test_alpha_1_with_segmentation_trains_the_baselines_depth_model_bit_for_bit(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    base_dir, base = _train(tmp_path / "a", _snapshot(sets, "baseline"))
    seg_dir, seg = _train(tmp_path / "b", _snapshot(sets, "seg-a1", "segmentation", ("synth_ade",)))
    half_dir, _ = _train(tmp_path / "c", _snapshot(sets, "seg-a0.5", "segmentation", ("synth_ade",), 0.5))
    baseline, with_aux, half = _weights(base_dir), _weights(seg_dir), _weights(half_dir)
    depth_keys = [k for k in baseline if k.startswith(("decoder.", "depth_head."))]
    assert depth_keys and set(baseline) == set(depth_keys)
    assert all(torch.equal(baseline[k], with_aux[k]) for k in depth_keys)
    assert not all(torch.equal(baseline[k], half[k]) for k in depth_keys)  # the check can fail
    # The auxiliary head trained all the same, and the depth scores are the baseline's.
    assert any(k.startswith("aux_heads.segmentation:synth_ade.") for k in with_aux)
    assert base is not None and seg is not None
    assert {k: v for k, v in seg.items() if k.startswith("depth_")} == {
        k: v for k, v in base.items() if k.startswith("depth_")
    }
    assert seg["aux_datasets"] == ["synth_ade"] and base["aux_task"] == "none" and seg["alpha"] == 1.0


def test_the_backbone_is_bit_identical_after_training_and_in_no_optimiser(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    from geosem.train.alternating import train_alternating
    from geosem.train.auxdepth_job import AuxDepthJob

    snapshot = _snapshot(sets, "mix-mldc", "mldc", ("synth_ade", "synth_sun"), 0.9)
    run_dir = write_run(tmp_path, snapshot).parent
    job = AuxDepthJob(snapshot, "test", torch.device("cpu"))  # type: ignore[arg-type]
    backbone = {k: v.clone() for k, v in job.model.backbone.state_dict().items()}
    optimizer = job.optimizer()
    in_optimisers = {
        id(p) for o in (optimizer.depth, optimizer.aux) for g in o.param_groups for p in g["params"]
    }
    assert not in_optimisers & {id(p) for p in job.model.backbone.parameters()}
    assert in_optimisers == {id(p) for n, p in job.model.named_parameters() if not n.startswith("backbone.")}
    metrics = train_alternating(job.trainer(run_dir), job.describe, job.model_extra())
    after = job.model.backbone.state_dict()
    assert backbone.keys() == after.keys() and all(torch.equal(backbone[k], after[k]) for k in backbone)
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert not [k for k in saved["model"] if k.startswith("backbone.")]
    assert saved["backbone"]["digest"] == job.model.backbone.frozen_digest() == metrics["backbone_digest"]
    assert set(saved["heads"]) == {"mldc.synth_ade", "mldc.synth_sun"}
    # Both heads trained (MIX6: each auxiliary step routes to its dataset's head).
    assert metrics["aux_samples"] == {"mldc.synth_ade": 5, "mldc.synth_sun": 3}


def test_a_checkpoint_of_another_snapshot_or_backbone_is_not_resumed(
    sets: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from geosem.train.checkpoint import load_checkpoint, save_checkpoint

    snapshot = _snapshot(sets, "run", "reconstruction", ("synth_sun",), 0.9, steps=4)
    run_dir, stopped = _train(tmp_path / "x", snapshot, max_steps_this_call=2)
    assert stopped is None and (run_dir / "checkpoint.pt").is_file()
    _, fresh = _train(tmp_path / "fresh", {**snapshot, "loop": {**snapshot["loop"], "lr": 2e-3}})
    capfd.readouterr()
    # Another snapshot (another rate) in the same folder: the checkpoint is ignored, the run starts over.
    _, other = _train(tmp_path / "x", {**snapshot, "loop": {**snapshot["loop"], "lr": 2e-3}})
    assert "resuming" not in capfd.readouterr().err
    assert other is not None and fresh is not None and _without_time(other) == _without_time(fresh)
    # The same snapshot, but a checkpoint written for another backbone: not resumed either.
    _, stopped = _train(tmp_path / "y", snapshot, max_steps_this_call=2)
    state = load_checkpoint(tmp_path / "y" / "auxdepth" / "run")
    assert state is not None and stopped is None
    save_checkpoint({**state, "guard": {"backbone_digest": "0" * 64}}, tmp_path / "y" / "auxdepth" / "run")
    capfd.readouterr()
    _, again = _train(tmp_path / "y", snapshot)
    assert "resuming" not in capfd.readouterr().err and again is not None and again["steps"] == 4


def test_an_unknown_auxiliary_task_names_the_known_ones(sets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"unknown auxiliary task 'depthseg'.*mldc.*segmentation"):
        _train(tmp_path, _snapshot(sets, "bad", "depthseg", ("synth_ade",), 0.9))


def test_a_snapshot_missing_a_section_key_is_refused_naming_it(sets: dict[str, Path], tmp_path: Path) -> None:
    snapshot = _snapshot(sets, "bad")
    del snapshot["loop"]["grad_clip"]
    with pytest.raises(ValueError, match=r"loop lacks key\(s\) \['grad_clip'\]"):
        write_run(tmp_path, snapshot)


def _steps_logged(run_dir: Path) -> int:
    log = run_dir / "dvclive" / "plots" / "metrics" / "train" / "depth_loss.tsv"
    try:
        return max(0, len(log.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.slow  # three `geosem auxdepth` processes
def test_sigkill_then_rerun_gives_the_uninterrupted_runs_metrics(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    snapshot = _snapshot(sets, "mix-mldc", "mldc", ("synth_ade", "synth_sun"), 0.9, steps=12, eval_every=4)
    whole, killed = write_run(tmp_path / "whole", snapshot), write_run(tmp_path / "killed", snapshot)
    env = cli_env({"CUDA_VISIBLE_DEVICES": ""})
    subprocess.run(job_command("auxdepth", whole), check=True, env=env, capture_output=True)

    process = subprocess.Popen(
        job_command("auxdepth", killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while _steps_logged(killed.parent) < 5 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(killed.parent / "checkpoint.pt", weights_only=False)["step"]
    assert saved >= 4 and saved % 2 == 0 and not (killed.parent / "metrics.json").exists()

    rerun = subprocess.run(
        job_command("auxdepth", killed), check=True, env=env, capture_output=True, text=True
    )
    assert f"from step {saved}" in rerun.stderr, rerun.stderr[-2000:]
    metrics = [json.loads((run.parent / "metrics.json").read_text()) for run in (whole, killed)]
    assert _without_time(metrics[0]) == _without_time(metrics[1]) and metrics[0]["depth_images_scored"] == 2
    assert (whole.parent / "curves.csv").read_text() == (killed.parent / "curves.csv").read_text()
    a, b = _weights(whole.parent), _weights(killed.parent)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(killed.parent.glob("checkpoint*"))


def test_sigint_checkpoints_mid_run_and_the_rerun_finishes_as_an_uninterrupted_run(
    sets: dict[str, Path], tmp_path: Path
) -> None:
    from geosem.cli import main
    from geosem.train.alternating import train_alternating
    from geosem.train.auxdepth_job import AuxDepthJob
    from geosem.train.loop import EXIT_RESUMABLE
    from geosem.train.seeding import seed_everything

    snapshot = _snapshot(
        sets, "seg", "segmentation", ("synth_ade", "synth_sun"), 0.9, steps=5, checkpoint_every=0
    )
    _, whole = _train(tmp_path / "whole", snapshot)
    run_dir = write_run(tmp_path / "stopped", snapshot).parent

    def interrupted() -> dict[str, Any] | None:
        job = AuxDepthJob(snapshot, "test", torch.device("cpu"))  # type: ignore[arg-type]
        steps = job.steps()
        depth_loss = steps.depth_loss

        def loss(batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of step 3
            return depth_loss(batch, step)

        steps.depth_loss = loss
        return train_alternating(job.trainer(run_dir, steps), job.describe, job.model_extra())

    # The handler the run must put back: Python's default in a terminal, SIG_IGN where the suite runs in
    # a background job (a non-interactive shell starts those with SIGINT ignored).
    before = signal.getsignal(signal.SIGINT)
    seed_everything(snapshot["seed"])  # as the job does: the interrupted run starts from the same weights
    assert interrupted() is None  # the step finished, then the run saved and stopped
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    # The command line: one more step, then the resumable exit status; then the rest.
    assert main(["auxdepth", "--run", str(run_dir / "run.yaml"), "--max-steps", "1"]) == EXIT_RESUMABLE
    assert main(["auxdepth", "--run", str(run_dir / "run.yaml")]) == 0
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert whole is not None and _without_time(resumed) == _without_time(whole)
    assert resumed["train_seconds"] > 0

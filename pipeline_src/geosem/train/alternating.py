"""Study B's alternating optimisation (paper B, eqs. 4-5) and its resumable training loop.

One global step is a depth step followed by an auxiliary step, each with its own AdamW optimiser and
learning-rate scheduler ("we duplicate the optimizer and learning rate scheduler"):

* depth step: the shared decoder at ``lr x alpha``, the depth head at ``head_lr``;
* auxiliary step: the decoder at ``lr x (1 - alpha)``, every auxiliary head at ``head_lr``.

The beta variant (Fig. 5, right) scales the decoder by 1 on depth steps and by ``beta`` on auxiliary
steps; ``gamma`` (Fig. 5, left) multiplies every rate, heads included. The heads are never scaled by
alpha or beta (the paper gives them their own rates, "here eta_phi = eta_psi"). With alpha = 1 the
auxiliary optimiser moves the decoder by exactly nothing (AdamW at lr 0 multiplies by 1 and adds 0), so
the depth model equals the baseline's step for step. The frozen backbone is in no optimiser.

Both schedules are DINOv2's (mmcv's CosineAnnealing with linear warm-up): a cosine from the base rate to
``MIN_LR_RATIO`` x it over the whole run, multiplied during the first ``warmup_steps`` by a linear ramp
from ``WARMUP_RATIO`` to 1. Gradients are clipped to an L2 norm of ``grad_clip`` per step, over that
step's parameters. DINOv2's OneCycle momentum cycling of Adam's beta1 is not reproduced (constant
betas 0.9, 0.999): paper B does not say it keeps it, and it would couple the two optimisers' momenta
to a schedule the paper never mentions.

Exact resume as in ``geosem.train.loop``: the data streams are pure functions of (seed, step), and the
checkpoint holds decoder and heads, both optimisers and schedulers, RNG states, step, curve rows and
the training time so far, plus the backbone's digest (the backbone itself is re-created from the
snapshot, and a checkpoint whose backbone digest differs is not resumed).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geosem.atomic import atomic_write_json, atomic_write_text
from geosem.train.checkpoint import atomic_torch_save, load_checkpoint, remove_checkpoints, save_checkpoint
from geosem.train.loop import StopRequested, curves_csv
from geosem.train.seeding import capture_rng_state, restore_rng_state
from geosem.train.steplog import StepLog

log = logging.getLogger(__name__)

# DINOv2's depth recipe (mmcv): warm-up from 1e-3 x the rate; the cosine ends at 1e-8 x the rate.
WARMUP_RATIO = 1e-3
MIN_LR_RATIO = 1e-8
ADAM_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class AlternatingSpec:
    """The rates and schedule of an alternating run (snapshot sections ``loop`` and ``aux``)."""

    steps: int
    lr: float
    head_lr: float
    alpha: float = 1.0
    beta: float | None = None
    gamma: float = 1.0
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_clip: float | None = 35.0
    eval_every: int = 0  # 0: evaluate at the last step only
    checkpoint_every: int = 0  # 0: checkpoint only when stopped early

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"loop.steps must be at least 1, got {self.steps}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"aux.alpha must lie in [0, 1], got {self.alpha}")
        if self.beta is not None and self.beta < 0:
            raise ValueError(f"aux.beta must be null or >= 0, got {self.beta}")
        if min(self.lr, self.head_lr, self.gamma) < 0 or self.warmup_steps < 0:
            raise ValueError("loop.lr, loop.head_lr, loop.gamma and loop.warmup_steps must be >= 0")

    @property
    def decoder_scales(self) -> tuple[float, float]:
        """(depth step, auxiliary step) multipliers of the decoder's rate ``lr``, gamma included."""
        if self.beta is not None:
            return self.gamma, self.beta * self.gamma
        return self.alpha * self.gamma, (1.0 - self.alpha) * self.gamma


def warmup_cosine(step: int, steps: int, warmup_steps: int) -> float:
    """The rate multiplier at optimiser step ``step`` (0-based) of ``steps``: mmcv's cosine annealing
    to ``MIN_LR_RATIO`` over the run, times a linear warm-up from ``WARMUP_RATIO`` to 1."""
    progress = min(step, steps) / steps
    factor = MIN_LR_RATIO + 0.5 * (1.0 - MIN_LR_RATIO) * (1.0 + math.cos(math.pi * progress))
    if step < warmup_steps:
        factor *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - WARMUP_RATIO)
    return factor


def _params(params: list[nn.Parameter], where: str) -> list[nn.Parameter]:
    frozen = [i for i, p in enumerate(params) if not p.requires_grad]
    if frozen:
        raise ValueError(f"{where}: parameters {frozen[:5]} do not require gradients (frozen?)")
    return params


class AlternatingOptimizer:
    """The two AdamW optimisers and their schedulers; ``aux_heads`` None: no auxiliary task."""

    def __init__(
        self,
        spec: AlternatingSpec,
        decoder: list[nn.Parameter],
        depth_head: list[nn.Parameter],
        aux_heads: list[nn.Parameter] | None = None,
    ) -> None:
        self.spec = spec
        depth_scale, aux_scale = spec.decoder_scales
        head_lr = spec.head_lr * spec.gamma
        decoder = _params(list(decoder), "decoder")
        self.depth = self._adamw(
            [(decoder, spec.lr * depth_scale), (_params(depth_head, "depth head"), head_lr)]
        )
        self.depth_params = [*decoder, *depth_head]
        self.aux: torch.optim.AdamW | None = None
        self.aux_params: list[nn.Parameter] = []
        if aux_heads is not None:
            self.aux = self._adamw(
                [(decoder, spec.lr * aux_scale), (_params(aux_heads, "aux heads"), head_lr)]
            )
            self.aux_params = [*decoder, *aux_heads]
        self.schedulers = [self._scheduler(o) for o in (self.depth, self.aux) if o is not None]

    def _adamw(self, groups: list[tuple[list[nn.Parameter], float]]) -> torch.optim.AdamW:
        return torch.optim.AdamW(
            [{"params": params, "lr": lr} for params, lr in groups],
            lr=groups[0][1],
            betas=ADAM_BETAS,
            weight_decay=self.spec.weight_decay,
        )

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        spec = self.spec
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, spec.steps, spec.warmup_steps)
        )

    def _step(
        self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], loss: torch.Tensor
    ) -> float:
        """Zero, backpropagate, clip over ``params``, step; the gradient norm before clipping."""
        for p in params:
            p.grad = None
        loss.backward()
        # No clip (None or 0): an infinite bound, which scales every gradient by exactly 1.
        bound = self.spec.grad_clip or math.inf
        norm = float(torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], bound))
        optimizer.step()
        return norm

    def depth_step(self, loss: torch.Tensor) -> float:
        """Eq. (4): one step of decoder (x alpha) and depth head; the gradient norm."""
        return self._step(self.depth, self.depth_params, loss)

    def aux_step(self, loss: torch.Tensor) -> float:
        """Eq. (5): one step of decoder (x (1 - alpha)) and auxiliary heads; the gradient norm."""
        if self.aux is None:
            raise RuntimeError("an auxiliary step on a run without an auxiliary task")
        return self._step(self.aux, self.aux_params, loss)

    def end_step(self) -> None:
        """Advance both schedules: once per global step."""
        for scheduler in self.schedulers:
            scheduler.step()

    def rates(self) -> dict[str, float]:
        """The decoder's current rate in each optimiser and the heads' rate."""
        rates = {"lr_depth": self.depth.param_groups[0]["lr"], "lr_head": self.depth.param_groups[1]["lr"]}
        if self.aux is not None:
            rates["lr_aux"] = self.aux.param_groups[0]["lr"]
        return rates

    def state_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth.state_dict(),
            "aux": None if self.aux is None else self.aux.state_dict(),
            "schedulers": [s.state_dict() for s in self.schedulers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["aux"] is None) != (self.aux is None):
            raise ValueError("checkpoint and run disagree on whether there is an auxiliary optimiser")
        self.depth.load_state_dict(state["depth"])
        if self.aux is not None:
            self.aux.load_state_dict(state["aux"])
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)


class StopOnSignal(StopRequested):
    """``StopRequested`` plus SIGINT: Ctrl-C also checkpoints and exits resumably."""

    def __enter__(self) -> StopOnSignal:
        super().__enter__()
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
        return self


Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch, int], tuple[torch.Tensor, dict[str, float]]]
AuxLossFn = Callable[[str, Batch, int], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Steps:
    """What the job supplies: batch streams from a start step, losses, the test evaluation.

    ``depth_stream(start)`` yields the depth batch of every step from ``start`` on; ``aux_stream(start)``
    the (head, batch) of every auxiliary step (None: no auxiliary task). Both must depend on (seed,
    step) only, so a resumed run draws the batches an uninterrupted one draws.
    """

    depth_stream: Callable[[int], Iterator[Batch]]
    depth_loss: LossFn
    evaluate: Callable[[], dict[str, Any]]
    aux_stream: Callable[[int], Iterator[tuple[str, Batch]]] | None = None
    aux_loss: AuxLossFn | None = None
    # Entries a checkpoint must match to be resumed besides the snapshot digest (the backbone's digest).
    guard: dict[str, Any] = field(default_factory=dict)


def trained_state(trained: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat state dict of the trained modules on the CPU (loadable without a GPU), keys
    ``<module>.<parameter>``."""
    return {f"{name}.{k}": v.cpu() for name, m in trained.items() for k, v in m.state_dict().items()}


def load_trained_state(trained: dict[str, nn.Module], state: dict[str, torch.Tensor]) -> None:
    for name, module in trained.items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


class AlternatingTrainer:
    """One call of ``train``: resume, the steps this call takes, checkpoints and the final outputs."""

    def __init__(
        self,
        run_dir: Path,
        run_digest: str,
        model: nn.Module,
        trained: dict[str, nn.Module],
        optimizer: AlternatingOptimizer,
        steps: Steps,
    ) -> None:
        self.run_dir, self.run_digest, self.model, self.trained = Path(run_dir), run_digest, model, trained
        self.optimizer, self.fns, self.spec = optimizer, steps, optimizer.spec
        self.curves: list[dict[str, Any]] = []
        self.seconds_before = 0.0  # training time of earlier attempts
        self.last_eval: dict[str, Any] | None = None
        self.step = self.start = self.resume()

    def resume(self) -> int:
        """Load this run's checkpoint when it was written for this snapshot and backbone; the start step."""
        state = load_checkpoint(self.run_dir)
        if state is None:
            return 0
        if state.get("run_digest") != self.run_digest:
            log.warning("ignoring %s/checkpoint.pt: written for another run snapshot", self.run_dir)
            return 0
        if state.get("guard") != self.fns.guard:
            log.warning(
                "ignoring %s/checkpoint.pt: written for %s, this run has %s",
                self.run_dir,
                state.get("guard"),
                self.fns.guard,
            )
            return 0
        load_trained_state(self.trained, state["trained"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        self.curves, self.seconds_before = state["curves"], float(state["train_seconds"])
        print(f"resuming {self.run_dir} from step {state['step']}", file=sys.stderr)
        return int(state["step"])

    def save(self, seconds: float) -> None:
        save_checkpoint(
            {
                "run_digest": self.run_digest,
                "guard": self.fns.guard,
                "step": self.step,
                "trained": trained_state(self.trained),
                "optimizer": self.optimizer.state_dict(),
                "rng": capture_rng_state(),
                "curves": self.curves,
                "train_seconds": seconds,
            },
            self.run_dir,
        )

    def global_step(self, depth_batch: Batch, aux: tuple[str, Batch] | None) -> dict[str, float]:
        """Eqs. (4) and (5): the depth step, then the auxiliary step; the step's scalars."""
        self.model.train()
        loss, logs = self.fns.depth_loss(depth_batch, self.step)
        self._check_finite(loss, "depth")
        values = {"depth_loss": float(loss.item()), **logs}
        values["grad_norm_depth"] = self.optimizer.depth_step(loss)
        if aux is not None and self.fns.aux_loss is not None:
            head, batch = aux
            aux_loss, aux_logs = self.fns.aux_loss(head, batch, self.step)
            self._check_finite(aux_loss, f"auxiliary ({head})")
            values |= {"aux_loss": float(aux_loss.item()), f"aux_loss_{head}": float(aux_loss.item())}
            values |= {f"aux/{k}": v for k, v in aux_logs.items()}
            values["grad_norm_aux"] = self.optimizer.aux_step(aux_loss)
        values |= self.optimizer.rates()  # the rates this step used
        self.optimizer.end_step()
        self.step += 1
        return values

    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.run_dir}: {what} loss is {loss.item()} at step {self.step}")

    def evaluate(self) -> dict[str, Any]:
        self.model.eval()
        with torch.no_grad():
            return self.fns.evaluate()

    def record(self, values: dict[str, float], scores: dict[str, Any], step_log: StepLog) -> None:
        """One curve row at an evaluation step: the step's losses and rates, the numeric test scores."""
        row: dict[str, Any] = {"step": self.step}
        row |= {
            k: values[k] for k in ("depth_loss", "aux_loss", "lr_depth", "lr_aux", "lr_head") if k in values
        }
        row |= {k: v for k, v in scores.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.curves.append(row)
        step_log.log(self.step, scores, prefix="test/")
        step_log.summary()
        log.info("step %d: %s", self.step, row)

    def finish(self, metrics: dict[str, Any], extra: dict[str, Any]) -> None:
        """model.pt (the trained weights, ``extra``), curves.csv, metrics.json (last: it marks the run
        done); none of them is left behind when one fails."""
        state = {"model": trained_state(self.trained), "run_digest": self.run_digest, **extra}
        written: list[Path] = []
        try:
            for name, write in (
                ("model.pt", lambda p: atomic_torch_save(state, p)),
                ("curves.csv", lambda p: atomic_write_text(p, curves_csv(self.curves))),
                ("metrics.json", lambda p: atomic_write_json(p, metrics)),
            ):
                write(self.run_dir / name)
                written.append(self.run_dir / name)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        remove_checkpoints(self.run_dir)


def train_alternating(
    trainer: AlternatingTrainer,
    final_metrics: Callable[[dict[str, Any]], dict[str, Any]],
    model_extra: dict[str, Any],
    max_steps_this_call: int | None = None,
) -> dict[str, Any] | None:
    """Train to ``spec.steps`` from wherever the checkpoint left off; the final metrics, or None when a
    signal (or ``max_steps_this_call``) stopped this call after saving a checkpoint. ``model_extra``
    joins the weights in model.pt."""
    spec, run = trainer.spec, trainer
    step_log = StepLog(run.run_dir, run.start)
    stop_after = (
        spec.steps if max_steps_this_call is None else min(spec.steps, run.start + max_steps_this_call)
    )
    depth = run.fns.depth_stream(run.start)
    aux = run.fns.aux_stream(run.start) if run.fns.aux_stream is not None else None
    started = time.perf_counter()
    with StopOnSignal() as stop:
        while run.step < spec.steps:
            values = run.global_step(next(depth), next(aux) if aux is not None else None)
            step_log.log(run.step, values, prefix="train/")
            if (spec.eval_every and run.step % spec.eval_every == 0) or run.step == spec.steps:
                run.last_eval = run.evaluate()
                run.record(values, run.last_eval, step_log)
            ending = stop.signal is not None or run.step >= stop_after
            periodic = spec.checkpoint_every and run.step % spec.checkpoint_every == 0
            if run.step < spec.steps and (periodic or ending):
                run.save(run.seconds_before + time.perf_counter() - started)
            if run.step < spec.steps and ending:
                why = f"signal {stop.signal}" if stop.signal is not None else "step limit of this call"
                print(f"{run.run_dir}: stopped at step {run.step} ({why}); checkpoint saved", file=sys.stderr)
                step_log.close()
                return None
    metrics = dict(run.last_eval if run.last_eval is not None else run.evaluate())
    metrics |= {"steps": spec.steps, "train_seconds": run.seconds_before + time.perf_counter() - started}
    metrics = final_metrics(metrics)
    step_log.close()
    run.finish(metrics, model_extra)
    return metrics

"""Data-parallel training inside one job: one process per GPU, torch.distributed underneath.

A job becomes data-parallel when it sees more than one GPU (SLURM's ``--gpus=N`` sets
``CUDA_VISIBLE_DEVICES``) or when ``geosem pretrain|finetune --procs N`` asks for it (CPU processes on
gloo, which is how the tests exercise this path). ``launch`` then starts N workers of the same command
with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and forwards
SIGTERM/SIGUSR1 to them; each worker builds a ``Distributed`` from that environment.

What stays as in one process, and why:

- Data: step ``s`` draws the same global batch as a single process (``StepBatchSampler``); rank ``r``
  trains on items ``r, r + W, ...`` of it. Draws keep their global numbers, so augmentation is the same.
- Seeds: every rank seeds from the snapshot, so all start from the same weights (DDP also broadcasts
  rank 0's weights when it wraps the model).
- Gradients: DDP averages them over ranks, which for a loss averaged over samples is the gradient of
  the global batch. BatchNorm statistics are synchronised across GPUs (SyncBatchNorm); torch has no
  SyncBatchNorm on CPUs, so with gloo each process normalises its own share of the batch.
- Metrics: the logged training loss is averaged over ranks (each rank's share has the same size, so
  this is the global batch's loss); evaluation runs once, on rank 0 with the unwrapped model over the
  whole test split, and its metrics are broadcast, so curves and metrics.json are what one process
  computes for the same weights.
- Stopping: a signal that reaches any rank stops every rank after the same step (the flag is reduced
  with MAX every step); rank 0 writes the checkpoint and the final outputs.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist
from torch import nn

T = TypeVar("T")

# Exit status of a worker (and of the launcher) that stopped on a signal after a checkpoint: the value of
# geosem.train.loop.EXIT_RESUMABLE, repeated because the loop imports this module.
EXIT_RESUMABLE = 75
# How long workers may wait for each other in one collective before the job fails instead of hanging.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
# After one worker fails, how long the others get to exit on SIGTERM before SIGKILL.
SHUTDOWN_GRACE_S = 30.0


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel job; ``Distributed()`` is the single-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        """Join the process group described by torchrun's variables; single-process without them."""
        env = os.environ if environ is None else environ
        world_size = int(env.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
        if not torch_dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            address = f"tcp://{env.get('MASTER_ADDR', '127.0.0.1')}:{env['MASTER_PORT']}"
            torch_dist.init_process_group(
                backend, init_method=address, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT
            )
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    def device(self) -> torch.device:
        """This rank's GPU (one per process), else the CPU."""
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if not self.active:
            return torch.device("cuda")
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return device

    def shard(self, items: list[T]) -> list[T]:
        """This rank's share of a global batch: every world_size-th item from its rank on."""
        if len(items) % self.world_size:
            raise ValueError(
                f"a batch of {len(items)} cannot be split evenly over {self.world_size} processes; "
                "choose a batch size that is a multiple of the number of GPUs"
            )
        return items[self.rank :: self.world_size]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train with: DDP over all ranks, or the model itself in one process."""
        if not self.active:
            return model
        if device.type == "cuda":
            # In place: the BatchNorm children of `model` are replaced, their parameters are kept.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(model)

    def mean(self, value: float) -> float:
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        torch_dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        if not self.active:
            return flag
        tensor = torch.tensor([int(flag)], dtype=torch.int32, device=self._collective_device())
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return bool(tensor.item())

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box: list[Any] = [obj]
        torch_dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def close(self) -> None:
        if self.active and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def _collective_device(self) -> torch.device:
        # NCCL reduces only CUDA tensors; gloo only CPU ones.
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def default_procs() -> int:
    """One process per GPU the job sees; one on a CPU."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def free_port() -> int:
    """A TCP port free on this host now: where one job's ranks meet (rank 0 listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(worker_args: Sequence[str], procs: int) -> int:
    """Run ``python -m geosem.cli *worker_args`` as ``procs`` ranks of one data-parallel job.

    Returns 0 when every worker finished, EXIT_RESUMABLE when they stopped on a signal after the
    checkpoint, else the first failing worker's status (the others are then stopped). SIGTERM and
    SIGUSR1 received here are forwarded to every worker: under SLURM they may also reach the workers
    directly, and a second delivery only sets the same stop flag again.
    """
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(procs),
        LOCAL_WORLD_SIZE=str(procs),
    )
    workers: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    # Before the first worker starts: a signal must never end the launcher and orphan its workers.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        for rank in range(procs):
            worker_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            command = [sys.executable, "-m", "geosem.cli", *worker_args]
            workers.append(subprocess.Popen(command, env=worker_env))
        return _wait(workers)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait(workers: list[subprocess.Popen[bytes]]) -> int:
    while True:
        codes = [worker.poll() for worker in workers]
        failed = [code for code in codes if code is not None and code not in (0, EXIT_RESUMABLE)]
        if failed:
            # The others would wait in a collective for the failed rank until the timeout: stop them.
            _stop(workers)
            print(f"geosem: a data-parallel worker failed with status {failed[0]}", file=sys.stderr)
            # A worker killed by signal N reports -N; exit as a shell reports it, 128 + N.
            return 128 - failed[0] if failed[0] < 0 else failed[0]
        if all(code is not None for code in codes):
            return 0 if all(code == 0 for code in codes) else EXIT_RESUMABLE
        time.sleep(0.2)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

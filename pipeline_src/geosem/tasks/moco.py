"""MoCo v2 contrastive pre-training (``moco_v2``; He et al. 2020, Chen et al. 2020 "Improved Baselines").

Two views of each image (``geosem.tasks.augment``: MoCo v2's crop, colour jitter, grayscale, blur and
flip) go through a query encoder and a momentum (key) encoder, each followed by MoCo v2's projection
head (Linear, ReLU, Linear to ``dim``; the encoder's pooled last feature map goes in). InfoNCE with
temperature ``temperature`` scores each query against its own key (the positive) and a queue of keys of
earlier batches (the negatives); the batch's keys then replace the oldest entries of the queue.

Exact resume: the queue, its pointer, its image ids and the count of momentum updates are buffers, so they
are in ``state_dict`` and in every checkpoint. The momentum update runs at the start of each loss call,
from the query weights as the previous optimiser step left them (MoCo's own order), so a resumed run
updates the key encoder from the same weights as an uninterrupted one. The key encoder and its head
have ``requires_grad`` off: no gradient, and not in the loop's optimiser.

Shuffling BN: BatchNorm statistics computed over a batch let a query "find" its positive key through
the statistics they share (MoCo, section 3.3), which MoCo breaks on N GPUs by computing the keys of a
shuffled batch, each GPU normalising its own share. One process has no GPUs to shuffle over, so the
same is done inside it: the key encoder runs in train mode (batch statistics, as in MoCo; never eval
mode) on the batch permuted by a per-sample draw of ``transform`` and cut into ``shuffle_bn_groups``
parts, each normalised on its own, while the queries are normalised over the whole batch. Parts keep at
least two samples, so a batch of two has one part (nothing to shuffle). In a data-parallel job each
rank does this on its share and the keys of all ranks are gathered before they are queued, so every
rank holds the same queue.

Self-negatives: the queue holds keys of earlier batches whatever image they show, so once it is as
long as the training set, every image meets its own older keys among its negatives (MoCo's K = 65536
is 5 % of ImageNet; the tiny test world has 8 training frames). ``exclude_same_image`` leaves those
out of each query's sum, matched by a hash of the image's content (``image_id``, queued beside the
keys); off by default, as in MoCo.

What transfers: ``dense`` holds the query encoder inside a ``DenseModel`` whose decoder and heads are
built with the model but never trained (``requires_grad`` off here, back on in ``transfer_model``), so
a segmentation fine-tune starts from the query encoder and a fresh decoder.

Evaluation, the score of the pre-training table: two views of every test image drawn from fixed seeds;
embeddings of both by the query encoder; ``test_moco_top1`` is the share of test images whose second
view's nearest first view (cosine, projection space) is its own, ``test_moco_top1_backbone`` the same on
the pooled encoder features (what transfers), ``test_moco_infonce`` the InfoNCE of those pairs with the
other test images as negatives (chance: log N, ``test_moco_chance_infonce``). The same scores of the
untrained network (this run's initial weights, rebuilt from its seed) are ``untrained_moco_*``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from itertools import chain
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from geosem.models.dense import DenseModel
from geosem.shards.reader import ShardSet
from geosem.tasks import register_task
from geosem.tasks.augment import ViewSpec, make_views
from geosem.tasks.base import ENCODER_INIT_RANDOM, Param, Task, iterate_batches, param
from geosem.tasks.depth_common import build_depth_network

# Seed of the evaluation views (with the test image's position): the same views at every evaluation.
EVAL_VIEW_SEED = 20_200_309


def projection_head(channels: int, hidden: int, dim: int) -> nn.Sequential:
    """MoCo v2's MLP head: Linear, ReLU, Linear (no BatchNorm, as in MoCo v2)."""
    return nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoCo's InfoNCE of unit queries (B,D) with their unit positive keys (B,D) and the negatives (K,D):
    cross-entropy of the logits [q.k, q.queue] / temperature with the positive as class 0. ``excluded``
    (B,K) bool: negatives left out of a query's sum."""
    positives = (query * key).sum(1, keepdim=True)
    negatives = query @ queue.T
    if excluded is not None:
        negatives = negatives.masked_fill(excluded, float("-inf"))
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(query), dtype=torch.long, device=query.device))


def _pooled(features: list[torch.Tensor]) -> torch.Tensor:
    return features[-1].mean(dim=(2, 3))  # global average pool of the last (coarsest) feature map


def image_fingerprint(image: torch.Tensor) -> torch.Tensor:
    """A float64 number naming ``image`` by its content (48 bits of a BLAKE2 hash, exact in float64)."""
    digest = hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=6).digest()
    return torch.tensor(float(int.from_bytes(digest, "big")), dtype=torch.float64)


def _gathered(keys: torch.Tensor) -> torch.Tensor:
    """The keys of every rank of a data-parallel job (rank order), so that all queue the same keys."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


class MoCoModel(nn.Module):
    """Query network (``dense.encoder`` + ``projector``), its momentum copy, and the queue of keys.
    One ``forward`` takes the whole training step's computation, so DDP sees every use."""

    def __init__(
        self,
        dense: DenseModel,
        hidden: int,
        dim: int,
        queue_size: int,
        momentum: float,
        temperature: float,
        shuffle_bn_groups: int,
    ) -> None:
        super().__init__()
        self.momentum, self.temperature, self.shuffle_bn_groups = momentum, temperature, shuffle_bn_groups
        self.dense = dense
        for parameter in chain(dense.decoder.parameters(), dense.heads.parameters()):
            parameter.requires_grad_(False)  # built for the transfer only; no gradient reaches them here
        self.projector = projection_head(dense.encoder.channels[-1], hidden, dim)
        # The key network starts as a copy of the query network (MoCo) and only follows it by momentum.
        self.key_encoder = copy.deepcopy(dense.encoder)
        self.key_projector = copy.deepcopy(self.projector)
        for parameter in self.key_parameters():
            parameter.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        # Which image each queued key shows (image_fingerprint); -1: one of the random starting entries.
        self.register_buffer("queue_ids", torch.full((queue_size,), -1.0, dtype=torch.float64))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("momentum_updates", torch.zeros((), dtype=torch.long))

    def query_parameters(self) -> list[nn.Parameter]:
        return [*self.dense.encoder.parameters(), *self.projector.parameters()]

    def key_parameters(self) -> list[nn.Parameter]:
        return [*self.key_encoder.parameters(), *self.key_projector.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m key + (1 - m) query, parameter by parameter (BatchNorm statistics are the key
        encoder's own, from its train-mode forward passes, as in MoCo)."""
        for key, query in zip(self.key_parameters(), self.query_parameters(), strict=True):
            key.mul_(self.momentum).add_(query.detach(), alpha=1.0 - self.momentum)
        self.momentum_updates += 1

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Overwrite the oldest entries with ``keys`` (of images ``ids``); the pointer wraps around."""
        size = len(self.queue)
        keys = keys[-size:]  # a batch larger than the queue leaves only its last keys
        slots = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ids[slots] = -1.0 if ids is None else ids[-size:].to(self.queue_ids.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)

    def embed(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit (projection, pooled encoder feature) of the query network."""
        pooled = _pooled(self.dense.encoder(image))
        return F.normalize(self.projector(pooled), dim=1), F.normalize(pooled, dim=1)

    @torch.no_grad()
    def keys(self, view: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Unit keys of ``view`` in its own order, computed on the batch permuted by ``order`` and cut
        into BatchNorm groups (the in-process shuffling BN of the module docstring)."""
        groups = max(1, min(self.shuffle_bn_groups, len(view) // 2))
        parts = view[order].tensor_split(groups)
        shuffled = torch.cat([self.key_projector(_pooled(self.key_encoder(part))) for part in parts])
        return F.normalize(shuffled, dim=1)[torch.argsort(order)]

    def forward(
        self,
        view_q: torch.Tensor,
        view_k: torch.Tensor,
        order: torch.Tensor,
        ids: torch.Tensor,
        exclude_same_image: bool = False,
    ) -> dict[str, Any]:
        self.momentum_update()  # from the query weights the last optimiser step left: exact on resume
        query, _ = self.embed(view_q)
        key = self.keys(view_k, order)
        # A copy: the queue changes in place below, and the loss's backward still needs these negatives.
        negatives = self.queue.clone()
        excluded = ids[:, None] == self.queue_ids[None, :] if exclude_same_image else None
        loss = info_nce(query, key, negatives, self.temperature, excluded)
        if self.training:
            self.enqueue(_gathered(key), _gathered(ids))
        with torch.no_grad():
            positive = (query * key).sum(1)
            similarity = query @ negatives.T
            if excluded is not None:
                similarity = similarity.masked_fill(excluded, float("-inf"))
            hardest = similarity.max(1).values
        return {"loss": loss, "positive": positive.mean(), "top1": (positive > hardest).float().mean()}


@register_task("moco_v2")
class MoCoV2(Task):
    """MoCo v2 contrastive pre-training: query and momentum encoders, a queue of negatives, InfoNCE."""

    fields = ("image",)
    parameters: ClassVar[dict[str, Param]] = {
        "momentum": param(
            0.999,
            "Momentum m of the key encoder: key <- m key + (1 - m) query.",
            type="number",
            minimum=0,
            maximum=1,
        ),
        "temperature": param(0.2, "InfoNCE temperature (MoCo v2 0.2).", type="number", exclusiveMinimum=0),
        "queue_size": param(65536, "Keys in the queue of negatives (MoCo K).", type="integer", minimum=1),
        "dim": param(128, "Output width of the projection head.", type="integer", minimum=1),
        "mlp_hidden": param(
            2048, "Hidden width of the 2-layer projection head (MoCo v2 2048).", type="integer", minimum=1
        ),
        "view_size": param(
            None,
            "[height, width] of the two views; null: a square of the images' shorter side.",
            type=["array", "null"],
            items={"type": "integer", "minimum": 16},
            minItems=2,
            maxItems=2,
        ),
        "crop_scale": param(
            [0.2, 1.0],
            "Area range of the random resized crop (MoCo v2 0.2-1).",
            type="array",
            items={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            minItems=2,
            maxItems=2,
        ),
        "shuffle_bn_groups": param(
            2,
            "Parts the shuffled key batch is normalised in (in-process shuffling BN); 1: none.",
            type="integer",
            minimum=1,
        ),
        "exclude_same_image": param(
            False,
            "Leave a query's own image's earlier keys out of its negatives. MoCo does not (false): with "
            "a queue as long as the training set, every image meets its own older keys as negatives.",
            type="boolean",
        ),
        "encoder_init": ENCODER_INIT_RANDOM,
    }

    def __init__(self, run: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(run, device)
        self._untrained: dict[tuple[str, ...], dict[str, float]] = {}

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> MoCoModel:
        p = self.params
        return MoCoModel(
            build_depth_network(self.run, out_channels=1),
            hidden=p["mlp_hidden"],
            dim=p["dim"],
            queue_size=p["queue_size"],
            momentum=p["momentum"],
            temperature=p["temperature"],
            shuffle_bn_groups=p["shuffle_bn_groups"],
        )

    def transfer_model(self, model: nn.Module) -> DenseModel:
        dense = model.dense
        for parameter in dense.parameters():
            parameter.requires_grad_(True)  # the never-trained decoder and heads train in the fine-tune
        return dense

    def view_spec(self, image: torch.Tensor) -> ViewSpec:
        size = self.params.get("view_size") or [min(image.shape[-2:])] * 2
        return ViewSpec(size=(int(size[0]), int(size[1])), scale=tuple(self.params["crop_scale"]))

    def views(self, image: torch.Tensor, rng: np.random.Generator) -> list[torch.Tensor]:
        spec = self.view_spec(image)
        return make_views(image, [spec, spec], rng)

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        view_q, view_k = self.views(sample["image"], rng)
        # The key batch's permutation for shuffling BN: the order of these draws, one per sample.
        shuffle = torch.tensor(rng.random(), dtype=torch.float64)
        views = {"view_q": view_q, "view_k": view_k, "shuffle_key": shuffle}
        return {**sample, **views, "image_id": image_fingerprint(sample["image"])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        order = torch.argsort(batch["shuffle_key"])
        out = model(
            batch["view_q"], batch["view_k"], order, batch["image_id"], self.params["exclude_same_image"]
        )
        return out["loss"], {"moco_positive": float(out["positive"]), "moco_top1_queue": float(out["top1"])}

    @torch.no_grad()
    def scores(self, model: MoCoModel, shards: ShardSet, ids: Sequence[str], prefix: str) -> dict[str, float]:
        """The retrieval scores of the module docstring, keys ``<prefix>_moco_*``."""
        model.eval()
        first, second, first_b, second_b = [], [], [], []
        count = 0
        for batch in iterate_batches(shards, ids, ("image",), self.run["evaluation"]["batch_size"], "cpu"):
            pairs = []
            for image in batch["image"]:
                pairs.append(self.views(image, np.random.default_rng([EVAL_VIEW_SEED, count])))
                count += 1
            for views, projected, pooled in ((0, first, first_b), (1, second, second_b)):
                z, h = model.embed(torch.stack([pair[views] for pair in pairs]).to(self.device))
                projected.append(z.cpu())
                pooled.append(h.cpu())
        if count == 0:
            return {f"{prefix}_moco_images": 0}
        z1, z2, h1, h2 = (torch.cat(parts).double() for parts in (first, second, first_b, second_b))
        target = torch.arange(count)
        similarity = z2 @ z1.T  # row i: second view of image i against the first view of every image
        return {
            f"{prefix}_moco_top1": float((similarity.argmax(1) == target).double().mean()),
            f"{prefix}_moco_top1_backbone": float(((h2 @ h1.T).argmax(1) == target).double().mean()),
            f"{prefix}_moco_infonce": float(F.cross_entropy(similarity / self.params["temperature"], target)),
            f"{prefix}_moco_images": count,
        }

    def untrained_scores(self, shards: ShardSet, ids: Sequence[str]) -> dict[str, float]:
        """The scores of this run's initial network: rebuilt from the run's seed (the job seeds torch
        with it right before building the model) inside a forked generator, so the training's random
        state is untouched; computed once per task and test set."""
        key = tuple(ids)
        if key not in self._untrained:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.run["seed"])
                initial = self.build_model().to(self.device)
            self._untrained[key] = self.scores(initial, shards, ids, "untrained")
        return self._untrained[key]

    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        scores = self.scores(model, shards, ids, "test")
        if scores["test_moco_images"]:
            scores["test_moco_chance_top1"] = 1.0 / scores["test_moco_images"]
            scores["test_moco_chance_infonce"] = math.log(scores["test_moco_images"])
        return {**scores, **self.untrained_scores(shards, ids)}

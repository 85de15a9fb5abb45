"""Self-distillation without labels (``dino``; Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers").

A student (encoder + projection head) and a teacher of the same architecture whose weights are an EMA of
the student's. Head: a 3-layer MLP (GELU, hidden 2048, bottleneck 256), L2 normalisation, then a
weight-normalised layer without bias to ``out_dim`` prototypes (weight-norm gain fixed at 1, DINO's
``norm_last_layer``). Multi-crop: two global views (``global_scale``, at the training resolution) and
``local_crops`` small views (``local_scale``); the teacher sees the global views only. Loss: the mean
over pairs (teacher global i, student view v != i) of the cross-entropy between the teacher's
sharpened, centred softmax ``softmax((t - c) / tau_t)`` and the student's ``log_softmax(s / tau_s)``.
The centre ``c`` is an EMA (``centre_momentum``) of the batch mean of the teacher's outputs, updated
after each loss. Schedules over the run's ``loop.steps``: teacher momentum on a cosine from
``teacher_momentum`` (0.996) to 1, teacher temperature linear from ``teacher_temp_start`` to
``teacher_temp`` over the first ``teacher_temp_warmup`` of the run, then constant.

Exact resume: teacher weights, centre and the schedules' step counter are in ``state_dict`` (the
teacher's parameters have ``requires_grad`` False, so they stay out of the optimiser). The EMA update
that DINO makes after optimiser step ``s - 1`` is made at the start of loss call ``s`` from the current
student weights, so it needs nothing the loop does not checkpoint; the momentum reaches 1 at the last
step, so the update after it, which never runs, would be the identity anyway.

Encoders: ResNets pool their last feature map (R50: 2048 features); ViTs give the class token
(``vit_pool: cls``) or the mean patch token (``mean``) of the last block, through a LayerNorm in the head
(``ViTEncoder`` drops timm's final norm). Transfer: the student's encoder with the untrained decoder and
head the model stores (docs/pretraining.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosem.models.dense import DenseModel, decoder_for
from geosem.models.encoders import create_encoder
from geosem.models.vit import ViTEncoder
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.tasks import register_task
from geosem.tasks.augment import ViewSpec, make_views
from geosem.tasks.base import ENCODER_INIT_RANDOM, Param, Task, param

# DINO's local crops are 96 px for 224-px global crops.
LOCAL_SIDE_RATIO = 96 / 224
SIDE_MULTIPLE = 16  # ViT patch size: every view must tile into whole patches
EVAL_SEED = 20210429  # the evaluation's fixed crops (any constant; DINO's arXiv date)
JITTER = (0.4, 0.4, 0.2, 0.1)  # DINO's colour jitter (brightness, contrast, saturation, hue)
SOLARIZE_P = 0.2  # DINO solarises the second global view only


def _scale(description: str, default: list[float]) -> Param:
    item = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    return param(default, description, type="array", items=item, minItems=2, maxItems=2)


def _size(description: str) -> Param:
    size = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}
    return param(None, description, anyOf=[{"type": "null"}, size])


class DINOHead(nn.Module):
    """MLP (GELU) -> L2 normalise -> weight-normalised prototypes; ``norm`` adds a LayerNorm in front."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 2048,
        bottleneck: int = 256,
        norm: bool = False,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim) if norm else nn.Identity()

        def hidden_layer(width: int) -> list[nn.Module]:  # DINO's use_bn_in_head: BatchNorm before GELU
            return [nn.Linear(width, hidden), *([nn.BatchNorm1d(hidden)] if batchnorm else []), nn.GELU()]

        self.mlp = nn.Sequential(*hidden_layer(in_dim), *hidden_layer(hidden), nn.Linear(hidden, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):  # DINO's init of the MLP
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.prototypes = nn.Linear(bottleneck, out_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = F.normalize(self.mlp(self.norm(features)), dim=-1)
        # Weight norm with the gain fixed at 1: each prototype is a unit vector, logits are cosines.
        return F.linear(projected, F.normalize(self.prototypes.weight, dim=-1))


def pooled(encoder: nn.Module, image: torch.Tensor, vit_pool: str = "cls") -> torch.Tensor:
    """(B, D) image features: the pooled last ResNet map, or the ViT's class / mean patch token."""
    last = encoder(image)[-1]
    if isinstance(encoder, ViTEncoder):  # channels: [patch token, class token broadcast over the grid]
        embed = last.shape[1] // 2
        return last[:, embed:, 0, 0] if vit_pool == "cls" else last[:, :embed].mean((2, 3))
    return last.mean((2, 3))


class DINOModel(nn.Module):
    """Student (``encoder``, ``head``), EMA teacher (``teacher``), ``centre`` and the ``step`` counter, plus
    the untrained ``decoder`` and ``heads`` a fine-tune starts from."""

    def __init__(
        self,
        encoder: nn.Module,
        out_dim: int,
        vit_pool: str,
        head_bn: bool = False,
        decoder_channels: tuple[int, ...] = (16, 32, 64, 128, 256),
    ) -> None:
        super().__init__()
        is_vit = isinstance(encoder, ViTEncoder)
        width = encoder.channels[-1] // 2 if is_vit else encoder.channels[-1]
        self.vit_pool = vit_pool
        self.encoder = encoder
        self.head = DINOHead(width, out_dim, norm=is_vit, batchnorm=head_bn)
        self.teacher = nn.ModuleDict({"encoder": copy.deepcopy(encoder), "head": copy.deepcopy(self.head)})
        self.teacher.requires_grad_(False)
        self.register_buffer("centre", torch.zeros(1, out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # DINO trains no decoder. Built here, never trained (no gradient: outside the optimiser and DDP's
        # reduction), stored with the weights, so a fine-tune loads the pre-training strictly like any other
        # and starts from an untrained decoder and head, as from a random init.
        dense = DenseModel(encoder, decoder_for(encoder, tuple(decoder_channels)), 1, (0,))
        self.decoder, self.heads = dense.decoder, dense.heads
        self.decoder.requires_grad_(False)
        self.heads.requires_grad_(False)

    def student_params(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.head.parameters()]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m teacher + (1 - m) student, over parameters (BatchNorm statistics stay the teacher's
        own, from its forward passes, as in DINO)."""
        teacher = [*self.teacher["encoder"].parameters(), *self.teacher["head"].parameters()]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, self.student_params(), alpha=1.0 - momentum)

    def features(self, image: torch.Tensor, teacher: bool = False) -> torch.Tensor:
        return pooled(self.teacher["encoder"] if teacher else self.encoder, image, self.vit_pool)

    def forward(
        self, views: list[torch.Tensor], n_global: int = 2
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Student logits of every view, teacher logits of the first ``n_global``. Views of one size run as
        one batch (DINO's multi-crop wrapper), so BatchNorm sees all crops of that size together."""
        student: list[torch.Tensor] = []
        for group in (views[:n_global], views[n_global:]):
            if group:
                student += self.head(self.features(torch.cat(group))).chunk(len(group))
        with torch.no_grad():
            teacher = self.teacher["head"](self.features(torch.cat(views[:n_global]), teacher=True))
        return student, list(teacher.chunk(n_global))


def teacher_targets(logits: torch.Tensor, centre: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centred and sharpened teacher distribution ``softmax((logits - centre) / temperature)``."""
    return F.softmax((logits - centre) / temperature, dim=-1)


def dino_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    centre: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """Mean cross-entropy H(teacher view i, student view v) over every pair with v != i; student views
    0..len(teacher)-1 are the teacher's global views in the same order."""
    targets = [teacher_targets(t, centre, teacher_temp).detach() for t in teacher]
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    terms = [
        -(target * log_probs[v]).sum(-1).mean()
        for i, target in enumerate(targets)
        for v in range(len(log_probs))
        if v != i
    ]
    return torch.stack(terms).mean()


def updated_centre(centre: torch.Tensor, teacher: Sequence[torch.Tensor], momentum: float) -> torch.Tensor:
    """``momentum * centre + (1 - momentum) * mean`` of the teacher logits of all global views; the mean is
    over the global batch in a data-parallel job (DINO all-reduces it), so every rank keeps one centre."""
    logits = torch.cat(list(teacher))
    total = logits.sum(0, keepdim=True)
    count = torch.tensor(float(len(logits)), device=logits.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        torch.distributed.all_reduce(count)
    return momentum * centre + (1.0 - momentum) * total / count


def teacher_momentum(step: int, steps: int, base: float = 0.996) -> float:
    """Cosine from ``base`` at step 0 to 1 at the last step ``steps - 1``."""
    progress = min(step / (steps - 1), 1.0) if steps > 1 else 1.0
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * progress)) / 2.0


def teacher_temperature(step: int, steps: int, start: float, final: float, warmup: float) -> float:
    """Linear from ``start`` to ``final`` over the first ``warmup`` share of the steps, then ``final``."""
    warmup_steps = round(warmup * steps)
    if step >= warmup_steps or warmup_steps <= 1:
        return final
    return start + (final - start) * step / (warmup_steps - 1)


def local_size(height: int, width: int) -> tuple[int, int]:
    """DINO's 96/224 of each side, in whole 16-pixel patches (at least one)."""
    return tuple(
        max(SIDE_MULTIPLE, round(side * LOCAL_SIDE_RATIO / SIDE_MULTIPLE) * SIDE_MULTIPLE)
        for side in (height, width)
    )


def top1_retrieval(queries: torch.Tensor, gallery: torch.Tensor) -> float:
    """Share of queries whose most cosine-similar gallery row is the row of the same index."""
    similarity = F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    return float((similarity.argmax(1) == torch.arange(len(queries), device=queries.device)).float().mean())


@register_task("dino")
class DINO(Task):
    """DINO self-distillation: multi-crop student vs EMA teacher with centring and sharpening."""

    fields = ("image",)
    parameters: ClassVar[dict[str, Param]] = {
        "out_dim": param(
            4096, "Prototypes K of the head's last layer (DINO 65536).", type="integer", minimum=2
        ),
        "student_temp": param(0.1, "Student softmax temperature.", type="number", exclusiveMinimum=0),
        "teacher_temp": param(
            0.04, "Teacher temperature after the warm-up (DINO 0.04-0.07).", type="number", exclusiveMinimum=0
        ),
        "teacher_temp_start": param(
            0.04, "Teacher temperature at step 0 (DINO 0.04).", type="number", exclusiveMinimum=0
        ),
        "teacher_temp_warmup": param(
            0.3,
            "Share of the steps over which the teacher temperature warms up.",
            type="number",
            minimum=0,
            maximum=1,
        ),
        "teacher_momentum": param(
            0.996, "Teacher EMA momentum at step 0 (cosine to 1).", type="number", minimum=0, maximum=1
        ),
        "centre_momentum": param(0.9, "EMA momentum of the centre.", type="number", minimum=0, maximum=1),
        "local_crops": param(8, "Local views per sample (DINO's code: 8).", type="integer", minimum=0),
        "global_scale": _scale("Area range of the global crops (DINO 0.4-1).", [0.4, 1.0]),
        "local_scale": _scale("Area range of the local crops (DINO 0.05-0.4).", [0.05, 0.4]),
        "global_size": _size("Global view size [h, w]; null: the training resolution."),
        "local_size": _size("Local view size [h, w]; null: 96/224 of each global side, in 16-px steps."),
        "vit_pool": param(
            "cls",
            "ViT feature: cls (class token, DINO) or mean (mean patch token).",
            type="string",
            enum=["cls", "mean"],
        ),
        "head_bn": param(
            False, "BatchNorm after the head's hidden layers (DINO's use_bn_in_head).", type="boolean"
        ),
        "encoder_init": ENCODER_INIT_RANDOM,
    }

    def __init__(self, run: dict[str, Any], device: torch.device | str = "cpu") -> None:
        super().__init__(run, device)
        self._untrained: dict[tuple[str, ...], dict[str, float]] = {}

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> DINOModel:
        # Only the model and task sections: a fine-tune rebuilds this model from those alone.
        encoder = create_encoder(
            self.run["model"]["encoder"],
            pretrained=self.params.get("encoder_init", "random") == "imagenet",
            weights_file=self.params.get("weights_file"),
        )
        p, channels = self.params, tuple(self.run["model"]["decoder_channels"])
        return DINOModel(encoder, p["out_dim"], p["vit_pool"], p["head_bn"], channels)

    def transfer_model(self, model: nn.Module) -> DenseModel:
        """The student's encoder with the untrained decoder and one-channel full-resolution head (the
        fine-tune swaps the head), both trainable again."""
        dense = DenseModel(model.encoder, model.decoder, 1, head_scales=())  # draws no head: the stored one
        dense.head_scales, dense.heads = (0,), model.heads
        dense.requires_grad_(True)
        return dense

    def view_specs(self, height: int, width: int) -> list[ViewSpec]:
        """DINO's augmentations: blur p 1.0 / 0.1 on the global views, 0.5 on the local ones."""
        full = tuple(self.params["global_size"] or (height, width))
        small = tuple(self.params["local_size"] or local_size(*full))
        common = {"jitter": JITTER, "jitter_p": 0.8, "grayscale_p": 0.2, "blur_sigma": (0.1, 2.0)}
        global_scale, local_scale = tuple(self.params["global_scale"]), tuple(self.params["local_scale"])
        specs = [ViewSpec(full, global_scale, blur_p=p, **common) for p in (1.0, 0.1)]
        return specs + [ViewSpec(small, local_scale, blur_p=0.5, **common)] * self.params["local_crops"]

    def views(self, image: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        crops = make_views(image, self.view_specs(*image.shape[-2:]), rng)
        if rng.random() < SOLARIZE_P:  # after the blur, as in DINO; augment.py has no solarisation
            crops[1] = torch.where(crops[1] >= 0.5, 1.0 - crops[1], crops[1])
        names = ["global_0", "global_1"] + [f"local_{i}" for i in range(len(crops) - 2)]
        return dict(zip(names, crops, strict=True))

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        # ``image`` stays: the transfer checks and a fine-tune's shape checks read it.
        return {**sample, **self.views(sample["image"], rng)}

    def _view_list(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [batch["global_0"], batch["global_1"]] + [
            batch[f"local_{i}"] for i in range(self.params["local_crops"])
        ]

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        core: DINOModel = getattr(model, "module", model)  # DDP wraps the model
        steps, step = int(self.run["loop"]["steps"]), int(core.step)
        if step > 0:  # the update DINO makes after optimiser step ``step - 1``
            core.update_teacher(teacher_momentum(step - 1, steps, self.params["teacher_momentum"]))
        core.step.add_(1)
        p = self.params
        temperature = teacher_temperature(
            step, steps, p["teacher_temp_start"], p["teacher_temp"], p["teacher_temp_warmup"]
        )
        student, teacher = model(self._view_list(batch))  # through DDP's forward: gradients are synchronised
        total = dino_loss(student, teacher, core.centre, p["student_temp"], temperature)
        with torch.no_grad():
            targets = teacher_targets(torch.cat(teacher), core.centre, temperature)
            entropy = float(-(targets * targets.clamp_min(1e-12).log()).sum(-1).mean())
            core.centre.copy_(updated_centre(core.centre, teacher, p["centre_momentum"]))
        return total, {"teacher_temp": temperature, "teacher_entropy": entropy}

    @torch.no_grad()
    def _scores(self, model: DINOModel, shards: ShardSet, ids: Sequence[str]) -> dict[str, float]:
        """DINO loss (final teacher temperature, current centre) and top-1 retrieval of teacher features on
        the test images, each with fixed views drawn from ``default_rng([EVAL_SEED, index])``."""
        model.eval()
        dataset = ShardDataset(shards, ids, ("image",))
        size = self.run["evaluation"]["batch_size"]
        loss_sum = 0.0
        features: dict[str, list[torch.Tensor]] = {"global_0": [], "global_1": [], "local_0": []}
        for first in range(0, len(dataset), size):
            items = [
                self.views(dataset[i]["image"], np.random.default_rng([EVAL_SEED, i]))
                for i in range(first, min(first + size, len(dataset)))
            ]
            batch = {key: torch.stack([item[key] for item in items]).to(self.device) for key in items[0]}
            student, teacher = model(self._view_list(batch))
            loss = dino_loss(
                student, teacher, model.centre, self.params["student_temp"], self.params["teacher_temp"]
            )
            loss_sum += float(loss) * len(items)
            for key in features:
                if key in batch:
                    features[key].append(model.features(batch[key], teacher=True))
        gallery = torch.cat(features["global_0"])
        scores = {
            "test_dino_loss": loss_sum / len(dataset),
            "test_dino_retrieval": top1_retrieval(torch.cat(features["global_1"]), gallery),
        }
        if features["local_0"]:
            scores["test_dino_retrieval_local"] = top1_retrieval(torch.cat(features["local_0"]), gallery)
        return scores

    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        """Own scores, the same scores of this run's initial network (rebuilt from the run's seed, as the
        job seeds torch right before building the model; once per job) and chance (1 / test images). Two
        crops of one image share colours and layout: an untrained network retrieves above chance too."""
        if not ids:
            return {"test_dino_images": 0}
        scores = self._scores(model, shards, ids)
        key = tuple(ids)
        if key not in self._untrained:
            # The CPU generator alone, forked: evaluating must not shift any global draw of the run.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(self.run["seed"])
                fresh = self.build_model()
            self._untrained[key] = self._scores(fresh.to(self.device), shards, ids)
        untrained = {
            f"{name}_untrained": value for name, value in self._untrained[key].items() if "retrieval" in name
        }
        return {
            **scores,
            **untrained,
            "test_dino_retrieval_chance": 1.0 / len(ids),
            "test_dino_images": len(ids),
        }

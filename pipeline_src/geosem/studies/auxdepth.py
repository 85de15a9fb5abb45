"""Study B (paper B): expand a ``kind: auxdepth`` study file into auxdepth run snapshots.

A study-B file is a grid: depth datasets x fractions x variants (task, alpha, beta, gamma) x auxiliary
sources x seeds. Each grid point is one run of the alternating trainer (``runs/auxdepth/<id>/run.yaml``)
on a frozen backbone. What a dataset, a backbone or the training loop is comes from the config's
``auxdepth`` section, resolved here per depth dataset, so one study file serves the embedded world and
the full-scale preset alike (docs/study-b.md).

Run ids are built from the grid axes only, so they are stable across edits of other parameters and a
run that two studies (or two points of one grid) describe identically is planned once:

    auxdepth-vitt16.mae_vit-synth_indoor-96x128-v1-baseline-s0
    auxdepth-vitt16.mae_vit-synth_indoor-96x128-v1-mldc-mix6-a0.9-f0.1-s0

alpha = 1 is the baseline (the auxiliary steps leave the decoder alone: the paper's eq. 5, and the
trainer's test), so a sweep's alpha = 1 point of every task is the baseline run itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosem.labelspaces import num_classes
from geosem.snapshot import AUXDEPTH_SECTION_KEYS, loop_section
from geosem.studies.inits import (
    Unavailable,
    pretrain_loop_section,
    pretrain_resolution,
    pretrain_task_section,
)

if TYPE_CHECKING:
    from geosem.studies.plan import _Planner

TASK_TAGS = {
    "none": "baseline",
    "mldc": "mldc",
    "segmentation": "seg",
    "reconstruction": "recon",
    "sldc": "sldc",
}
LAYOUTS = ("table3", "table4", "table6", "fig1", "fig3", "fig4", "fig5")
DEPTH_SELECTORS = ("all", "no_driving", "main")
# The loop keys every auxdepth snapshot carries: the snapshot module owns the list.
AUXDEPTH_LOOP_KEYS = AUXDEPTH_SECTION_KEYS["loop"]
DEPTH_KEYS = ("augment", "min_depth", "max_depth", "eval_crop", "eval_max_depth")
# The schema fills these in; a config that skipped validation (a test) gets them here too.
DEPTH_DEFAULTS = {"min_depth": 0.001, "driving": False, "labelled": False}
# Depth datasets of paper B that GeoSem cannot train depth on (yet): a study row naming one is reported
# unavailable with the reason, never replaced by another dataset.
MISSING_DEPTH = {
    "sunrgbd": "the sunrgbd converter reads the ankurhanda segmentation mirror, which has no depth maps",
    "matterport3d": "GeoSem has no Matterport3D converter",
    "taskonomy": "GeoSem has no Taskonomy converter",
    **{
        f"diode_{scene}": f"the diode converter's scene_type ({scene}) cannot be chosen per shard set yet: "
        "`geosem convert` passes no converter parameters, so only DIODE indoors + outdoor exists"
        for scene in ("indoor", "outdoor")
    },
}
_VIT_NAME = re.compile(r"vit_(?P<size>tiny|small|base|large|giant|huge)_patch(?P<patch>\d+)_\w+")


def is_auxdepth_study(study: dict[str, Any]) -> bool:
    return study.get("kind", "finetune") == "auxdepth"


def _short(name: str) -> str:
    """``vit_tiny_patch16_224`` -> ``vitt16``, ``vit_giant_patch14_dinov2`` -> ``vitg14``."""
    match = _VIT_NAME.fullmatch(name)
    return f"vit{match['size'][0]}{match['patch']}" if match else name


def _fmt(value: float) -> str:
    return f"{value:g}"


def hub_weights(name: str, where: str) -> str:
    """timm's weights of ``name`` in the local Hugging Face cache (never a download), else Unavailable
    naming what to fetch: the backbone's own lookup (``geosem.models.dinov2``), which the job uses too."""
    from geosem.models.dinov2 import resolve_backbone_weights  # torch: only when a row needs hub weights

    try:
        return str(resolve_backbone_weights(name, None, "timm"))
    except FileNotFoundError as error:
        raise Unavailable(f"{where}.weights: {error}") from None


class AuxDepthPlanner:
    """Plans the study-B files of one config into ``planner.plan`` (auxdepth runs, the backbones'
    pre-trainings, the shard sets they read)."""

    def __init__(self, planner: _Planner) -> None:
        self.planner, self.config = planner, planner.config
        self.cfg = planner.config["auxdepth"]

    # --- backbone ------------------------------------------------------------------------------------

    def backbone(self, key: str) -> tuple[dict[str, Any], str]:
        """(snapshot backbone section, id tag) of backbone ``key`` (``default``: auxdepth.backbone)."""
        where = "auxdepth.backbone" if key == "default" else f"auxdepth.backbones.{key}"
        if key == "default":
            entry = self.cfg["backbone"]
        elif key in self.cfg["backbones"]:
            entry = self.cfg["backbones"][key]
        else:
            raise KeyError(
                f"backbone {key!r} is not under auxdepth.backbones {sorted(self.cfg['backbones'])}"
            )
        name, layout, weights = entry["name"], entry.get("layout", "timm"), entry.get("weights", "")
        if weights == "pretrain":
            weights, source = self.backbone_pretrain(entry, f"{where}.pretrain"), entry["pretrain"]["init"]
        elif weights == "random":  # a frozen random ViT: the named fallback, not a foundation model
            weights, source = "", "rand"
        elif weights == "":
            if layout != "timm":
                raise Unavailable(f"{where}.weights: not configured; set it to the {layout} checkpoint file")
            weights, source = hub_weights(name, where), "timm"
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise Unavailable(f"{where}.weights: {path} does not exist on this machine")
            weights, source = str(path), layout
        section = {
            "name": name,
            "weights": weights,
            "layout": layout,
            "kwargs": dict(entry.get("kwargs", {})),
        }
        return section, f"{_short(name)}.{source}"

    def backbone_pretrain(self, entry: dict[str, Any], where: str) -> str:
        """Plan the pre-training (an init of the study-A zoo) that makes a backbone; return its model.pt.

        Like a study-A pre-training (same id scheme, snapshot and rule), but on the dataset the entry
        names rather than data.dataset: a self-supervised backbone reads images of its train split only."""

        planner, spec = self.planner, entry["pretrain"]
        init = spec["init"]
        if init not in self.config["pretrain"]["tasks"]:
            raise KeyError(f"{where}.init: {init!r} is not a task under pretrain.tasks")
        task = pretrain_task_section(self.config, init)
        height, width = pretrain_resolution(task, (spec["height"], spec["width"]), where)
        dataset = task.get("dataset") or spec["dataset"]
        shards = planner.shard_set(dataset, height, width)
        seed = self.config["pretrain"]["seed"]
        run_id = f"{init}-{entry['name']}-{dataset}-{Path(shards).name}-s{seed}"
        model = {"encoder": entry["name"], "decoder_channels": list(self.config["model"]["decoder_channels"])}
        snapshot = {
            "run_id": run_id,
            "kind": "pretrain",
            "seed": seed,
            "task": task,
            "model": model,
            "data": planner.data_section(shards, height, width, dataset),
            "loop": loop_section(pretrain_loop_section(self.config, init)),
            "evaluation": self.pretrain_evaluation(dataset),
            "compute": planner.compute,
        }
        planner.add(planner.plan.pretrain, snapshot, where)  # type: ignore[arg-type]
        return f"{self.config['runs_root']}/pretrain/{run_id}/model.pt"

    def pretrain_evaluation(self, dataset: str) -> dict[str, Any]:
        """A backbone pre-training's own depth scores: on a study-B depth set with its cap and crop (the
        pre-training evaluation knows garg or none), else as study A's pre-trainings."""
        evaluation = {**self.planner.evaluation, "depth_crop": self.config["evaluation"]["depth_crop"]}
        entry = self.cfg["depth_datasets"].get(dataset)
        if entry is None:
            return evaluation
        crop = "garg" if entry["eval_crop"] == "garg" else "none"
        return evaluation | {"max_depth": entry["eval_max_depth"], "depth_crop": crop}

    # --- datasets ------------------------------------------------------------------------------------

    def depth_rows(self, study: dict[str, Any], where: str) -> list[str]:
        """The study's depth datasets: a selector over auxdepth.depth (all, no_driving, main) or a list."""
        rows, selected = list(self.cfg["depth"]), study.get("depth_datasets", "all")
        if isinstance(selected, list):
            return selected
        if selected == "main":
            return rows[:1]
        if selected == "no_driving":
            return [r for r in rows if not self.cfg["depth_datasets"].get(r, {}).get("driving", False)]
        if selected == "all":
            return rows
        raise ValueError(f"{where}.depth_datasets: {selected!r} is none of {DEPTH_SELECTORS} nor a list")

    def depth_entry(self, dataset: str) -> dict[str, Any]:
        """auxdepth.depth_datasets.<dataset>; Unavailable for paper-B sets GeoSem cannot train on."""
        if dataset in MISSING_DEPTH:
            raise Unavailable(f"depth dataset {dataset}: {MISSING_DEPTH[dataset]}")
        if dataset not in self.cfg["depth_datasets"]:
            raise KeyError(
                f"depth dataset {dataset!r} has no entry under auxdepth.depth_datasets "
                f"{sorted(self.cfg['depth_datasets'])}, nor is it a known missing one {sorted(MISSING_DEPTH)}"
            )
        return {**DEPTH_DEFAULTS, **self.cfg["depth_datasets"][dataset]}

    def depth_section(self, dataset: str, fraction: float) -> dict[str, Any]:
        entry = self.depth_entry(dataset)
        crop = [int(side) for side in entry["crop"]]
        if crop[0] > entry["height"] or crop[1] > entry["width"]:
            raise ValueError(
                f"auxdepth.depth_datasets.{dataset}.crop {crop} exceeds its shards' "
                f"{entry['height']}x{entry['width']}"
            )
        section = {
            "dataset": dataset,
            "shards": self.planner.shard_set(dataset, entry["height"], entry["width"]),
            "train_split": "train",
            "test_split": "test",
            "fraction": float(fraction),
            "crop": crop,
        }
        section |= {key: entry[key] for key in DEPTH_KEYS}
        return section | {"flip_tta": bool(self.cfg["flip_tta"])}

    def aux_dataset(self, dataset: str, depth: str) -> dict[str, Any]:
        """One auxiliary source: its shard set (the depth set's own for ``same``) and its classes."""
        from geosem.sources.catalog import dataset_spec

        if dataset == depth:
            entry = self.depth_entry(depth)
            if not entry.get("labelled", False):
                raise Unavailable(
                    f"{depth} has no semantic labels on its train split to be its own auxiliary set"
                )
        elif dataset in self.cfg["aux_datasets"]:
            entry = self.cfg["aux_datasets"][dataset]
        else:
            raise KeyError(f"auxiliary dataset {dataset!r} has no entry under auxdepth.aux_datasets")
        label_space = dataset_spec(dataset).label_space
        if not label_space:
            raise Unavailable(f"auxiliary dataset {dataset} has no label space")
        return {
            "dataset": dataset,
            "shards": self.planner.shard_set(dataset, entry["height"], entry["width"]),
            "split": "train",
            "num_classes": num_classes(label_space),
        }

    def sources(self, study: dict[str, Any], depth: str) -> list[tuple[str, list[str]]]:
        """(id tag, auxiliary datasets) of each source: mix6 (auxdepth.mix6), each (every mix6 set
        alone), same (the depth set itself, Appendix C.2) or a dataset name."""
        out: list[tuple[str, list[str]]] = []
        for source in study.get("aux_sources", ["mix6"]):
            if source == "mix6":
                out.append(("mix6", list(self.cfg["mix6"])))
            elif source == "each":
                out += [(name, [name]) for name in self.cfg["mix6"]]
            elif source == "same":
                out.append((depth, [depth]))
            else:
                out.append((source, [source]))
        return out

    # --- the grid ------------------------------------------------------------------------------------

    def variants(self, study: dict[str, Any]) -> list[tuple[str, float, float | None, float]]:
        """(task, alpha, beta, gamma) of each run kind: the baseline once per gamma; every other task per
        alpha (alpha = 1 is the baseline) and per beta (depth steps unscaled, auxiliary ones x beta)."""
        out: list[tuple[str, float, float | None, float]] = []
        for task in study.get("tasks", ["none", "mldc"]):
            if task == "none":
                out += [("none", 1.0, None, float(g)) for g in study.get("gammas", [1.0])]
                continue
            for alpha in study.get("alphas", [self.cfg["alpha"]]):
                out.append(("none", 1.0, None, 1.0) if alpha == 1 else (task, float(alpha), None, 1.0))
            out += [(task, 1.0, float(beta), 1.0) for beta in study.get("betas", [])]
        return list(dict.fromkeys(out))

    def study(self, name: str, study: dict[str, Any]) -> None:
        where = f"study {name}"
        layout = study.get("layout")
        if layout not in LAYOUTS:
            raise ValueError(f"{where}: layout {layout!r} is none of {LAYOUTS}")
        ids: list[str] = []
        unavailable: list[dict[str, str]] = []
        rows = self.depth_rows(study, where)
        try:
            backbone, tag = self.backbone(study.get("backbone", "default"))
        except Unavailable as reason:
            unavailable = [{"depth": depth, "setting": "all", "reason": str(reason)} for depth in rows]
            rows = []
        for depth in rows:
            try:
                ids += self.depth_runs(study, depth, backbone, tag, unavailable)
            except Unavailable as reason:
                unavailable.append({"depth": depth, "setting": "all", "reason": str(reason)})
        plan = self.planner.plan
        plan.auxdepth_studies[name] = {
            "runs": list(dict.fromkeys(ids)),
            "layout": layout,
            "depth": self.depth_rows(study, where),
            "mix6": list(self.cfg["mix6"]),
            "labels": dict(study.get("labels", {})),
        }
        plan.unavailable[name] = unavailable

    def depth_runs(
        self,
        study: dict[str, Any],
        depth: str,
        backbone: dict[str, Any],
        tag: str,
        unavailable: list[dict[str, str]],
    ) -> list[str]:
        """Plan every fraction x variant x source x seed of one depth dataset; return their ids."""
        ids = []
        seeds = study.get("seeds", self.cfg["seeds"])
        for fraction in study.get("fractions", [1.0]):
            section = self.depth_section(depth, fraction)
            for task, alpha, beta, gamma in self.variants(study):
                for source, datasets in self.sources(study, depth) if task != "none" else [("", [])]:
                    try:
                        aux = [self.aux_dataset(d, depth) for d in datasets]
                    except Unavailable as reason:
                        row = {"depth": depth, "setting": f"{task}-{source}", "reason": str(reason)}
                        unavailable += [row] if row not in unavailable else []
                        continue
                    aux_section = {"task": task, "datasets": aux, "alpha": alpha, "beta": beta}
                    stem = self.run_stem(tag, section, task, source, alpha, beta, gamma)
                    for seed in seeds:
                        ids.append(
                            self.add_run(f"{stem}-s{seed}", seed, backbone, section, aux_section, gamma)
                        )
        return ids

    def run_stem(
        self,
        tag: str,
        depth: dict[str, Any],
        task: str,
        source: str,
        alpha: float,
        beta: float | None,
        gamma: float,
    ) -> str:
        stem = f"auxdepth-{tag}-{depth['dataset']}-{Path(depth['shards']).name}-{TASK_TAGS[task]}"
        if task != "none":
            stem += f"-{source}" + (f"-b{_fmt(beta)}" if beta is not None else f"-a{_fmt(alpha)}")
        stem += f"-g{_fmt(gamma)}" if gamma != 1 else ""
        return stem + (f"-f{_fmt(depth['fraction'])}" if depth["fraction"] != 1 else "")

    def add_run(
        self,
        run_id: str,
        seed: int,
        backbone: dict[str, Any],
        depth: dict[str, Any],
        aux: dict[str, Any],
        gamma: float,
    ) -> str:
        loop = {key: self.cfg["loop"][key] for key in AUXDEPTH_LOOP_KEYS} | {"gamma": gamma}
        snapshot = {
            "kind": "auxdepth",
            "run_id": run_id,
            "seed": seed,
            "backbone": backbone,
            "depth": depth,
            "aux": aux,
            "loop": loop,
            "decoder": {"channels": int(self.cfg["decoder"]["channels"])},
            "compute": {"num_workers": self.config["compute"]["num_workers"]},
        }
        self.planner.add(self.planner.plan.auxdepth, snapshot, f"auxdepth run {run_id}")  # type: ignore[arg-type]
        return run_id


def plan_auxdepth_study(planner: _Planner, name: str, study: dict[str, Any]) -> None:
    """Plan study-B file ``name`` (loaded as ``study``) into ``planner.plan``."""
    AuxDepthPlanner(planner).study(name, study)

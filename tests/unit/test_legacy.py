"""The legacy protocol of study A (issue 5): each run-snapshot key that reproduces the published code
(no zero_grad, BatchNorm-only freeze, per-image legacy metric, N-dependent split, bicubic labels) and the
Welch t-test column of the study tables."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from geosem.aggregate import aggregate_study
from geosem.cli import main as geosem_main
from geosem.labelspaces import cityscapes_id_to_train_id
from geosem.metrics.legacy import legacy_scores
from geosem.shards.manifest import read_manifest
from geosem.shards.reader import ShardSet
from geosem.sources import convert
from geosem.sources.common import resize_label_ids
from geosem.tasks import get_task
from geosem.tasks.base import iterate_batches
from geosem.train.jobs import run_job, split_ids
from geosem.train.loop import LoopSpec, train
from geosem.train.seeding import seed_everything
from torch import nn
from torch.utils.data import Dataset

from tests.helpers import LOOP, SEG_TASK, fake_finetune_run, markdown_tables, run_snapshot, write_run

LEGACY_TASK = {**SEG_TASK, "mode": "frozen", "freeze": "batchnorm", "metric": "legacy", "hflip": False}


# ----------------------------------------------------------------------------------------------------
# zero_grad


class _Constant(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {"x": torch.ones(3)}


def _linear_run(tmp_path: Path, zero_grad: bool, steps: int) -> nn.Linear:
    """A linear model whose loss ``sum(w . x)`` has the same gradient (x) at every step."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    spec = LoopSpec(
        steps=steps,
        batch_size=2,
        lr=0.1,
        weight_decay=0.0,
        lr_schedule="constant",
        eval_every=steps,
        checkpoint_every=steps,
        seed=0,
        zero_grad=zero_grad,
    )
    train(
        run_dir=tmp_path / f"zero_grad_{zero_grad}_{steps}",
        run_digest="x",
        model=model,
        dataset=_Constant(),
        loss_fn=lambda net, batch: (net(batch["x"]).sum() / 2, {}),
        evaluate_fn=lambda m: {},
        spec=spec,
    )
    return model


def test_without_zero_grad_the_gradients_accumulate(tmp_path: Path) -> None:
    with_zero = _linear_run(tmp_path, True, 3)
    without = _linear_run(tmp_path, False, 3)
    # Each step's gradient is (1, 1, 1); zeroed it stays that, accumulated it is the sum of 3 steps.
    assert torch.equal(with_zero.weight.grad, torch.ones(1, 3))
    assert torch.equal(without.weight.grad, torch.full((1, 3), 3.0))
    # The first update is the same (nothing accumulated yet); later ones differ.
    assert torch.equal(_linear_run(tmp_path, True, 1).weight, _linear_run(tmp_path, False, 1).weight)
    assert not torch.equal(with_zero.weight, without.weight)
    assert LoopSpec.from_dict(dict(LOOP), seed=0).zero_grad  # a loop section that does not say: on


def _legacy_snapshot(tiny_shards: Path, run_id: str, steps: int, **data: Any) -> dict[str, Any]:
    return run_snapshot(
        tiny_shards,
        "finetune",
        run_id,
        steps,
        task=LEGACY_TASK,
        loop={"zero_grad": False},
        data={"split_rule": "legacy", "train_size": 2, **data},
    )


def test_a_stopped_legacy_run_resumes_to_the_same_weights(tiny_shards: Path, tmp_path: Path) -> None:
    """All legacy keys together (no zero_grad, BatchNorm-only freeze, legacy metric and split): the
    accumulated gradients travel in the checkpoint, so a stopped and resumed run is bit-identical."""
    snap = _legacy_snapshot(tiny_shards, "legacy", 6)
    whole = write_run(tmp_path / "whole", snap)
    first = run_job(whole, threads=2)
    assert first is not None

    split = write_run(tmp_path / "split", snap)
    assert run_job(split, threads=2, max_steps_this_call=3) is None
    state = torch.load(split.parent / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3
    # Gradients of the trainable encoder too: the BatchNorm-only freeze leaves it in the optimiser.
    assert any(name.startswith("encoder.") for name in state["gradients"])
    assert all(g.abs().sum() > 0 for g in state["gradients"].values() if g.dim() > 1)
    second = run_job(split, threads=2)
    assert second == first
    assert (split.parent / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
    a = torch.load(whole.parent / "model.pt", weights_only=True)["model"]
    b = torch.load(split.parent / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The legacy split: the first 2 labelled images train, the other 2 test; the legacy metric reports.
    assert first["train_samples"] == 2 and first["test_samples"] == 2
    assert first["test_miou"] == first["test_miou_legacy"]


# ----------------------------------------------------------------------------------------------------
# freeze


@pytest.mark.parametrize("freeze", ["batchnorm", "full"])
def test_batchnorm_freeze_trains_the_encoder_but_keeps_its_statistics(
    tiny_shards: Path, tmp_path: Path, freeze: str
) -> None:
    task = {**SEG_TASK, "mode": "frozen", "freeze": freeze}
    snap = run_snapshot(tiny_shards, "finetune", f"frozen-{freeze}", 2, task=task, init={"name": "random"})
    # run_job seeds and builds the same way, so this is its initial model (the "full" case checks it).
    seed_everything(snap["seed"])
    start = get_task("segmentation")(snap).build_model().state_dict()
    path = write_run(tmp_path, snap)
    run_job(path, threads=2)
    end = torch.load(path.parent / "model.pt", weights_only=True)["model"]
    statistics = [k for k in start if k.startswith("encoder.") and ("running_" in k)]
    convs = [k for k in start if k.startswith("encoder.") and k.endswith(".weight") and start[k].dim() == 4]
    assert statistics and convs
    assert all(torch.equal(start[k], end[k]) for k in statistics), "BatchNorm statistics moved"
    conv_changed = [not torch.equal(start[k], end[k]) for k in convs]
    if freeze == "batchnorm":
        assert all(conv_changed)
    else:
        assert not any(conv_changed)
    assert any(not torch.equal(start[k], end[k]) for k in start if k.startswith("decoder."))


def test_an_unknown_freeze_is_refused(tiny_shards: Path) -> None:
    task = {**SEG_TASK, "mode": "frozen", "freeze": "encoder"}
    snap = run_snapshot(tiny_shards, "finetune", "x", 1, task=task, init={"name": "random"})
    with pytest.raises(ValueError, match="freeze"):
        get_task("segmentation")(snap).build_model()


# ----------------------------------------------------------------------------------------------------
# metric


def test_evaluation_reports_both_metrics_and_names_one(tiny_shards: Path) -> None:
    shards = ShardSet(tiny_shards)
    ids = shards.ids("test")
    results = {}
    for metric in ("dataset", "legacy"):
        snap = run_snapshot(tiny_shards, "finetune", "x", 1, task={**SEG_TASK, "metric": metric})
        task = get_task("segmentation")(snap)
        torch.manual_seed(0)
        model = task.build_model()
        results[metric] = task.evaluate(model, shards, ids)
    dataset, legacy = results["dataset"], results["legacy"]
    for key in ("test_miou_dataset", "test_pixel_accuracy_dataset", "test_miou_legacy"):
        assert dataset[key] == legacy[key]
    assert dataset["test_miou"] == dataset["test_miou_dataset"]
    assert legacy["test_miou"] == legacy["test_miou_legacy"]
    assert legacy["test_pixel_accuracy"] == legacy["test_pixel_accuracy_legacy"]
    assert "test_per_class_iou" in legacy and "test_scored_classes" in legacy
    # The legacy numbers are geosem.metrics.legacy's over the per-image predictions.
    batch = next(iterate_batches(shards, ids, ("image", "label"), len(ids)))
    with torch.no_grad():
        predictions = model.eval()(batch["image"])[0].argmax(dim=1).numpy()
    expected = legacy_scores(predictions, batch["label"].numpy())
    assert legacy["test_miou_legacy"] == pytest.approx(expected["miou"], nan_ok=True)
    assert legacy["test_pixel_accuracy_legacy"] == pytest.approx(expected["pixel_accuracy"])


# ----------------------------------------------------------------------------------------------------
# split rule


def test_split_rules(tiny_shards: Path) -> None:
    shards = ShardSet(tiny_shards)
    labelled = shards.ids("test")  # index order: semantics-000000_10, ...
    assert labelled == sorted(labelled) and len(labelled) == 4

    heldout = run_snapshot(tiny_shards, "finetune", "h", 1, task=SEG_TASK)
    for size in (2, 3):
        heldout["data"]["train_size"] = size
        train_ids, test = split_ids(shards, heldout)
        assert test == labelled  # the same test set for every N
        assert len(train_ids) == size and set(train_ids) <= set(shards.ids("train"))

    legacy = _legacy_snapshot(tiny_shards, "legacy-run", 1)
    for size in (1, 3):
        legacy["data"]["train_size"] = size
        assert split_ids(shards, legacy) == (labelled[:size], labelled[size:])  # test set changes with N
    legacy["data"]["test_stride"] = 2
    legacy["data"]["train_size"] = 1
    assert split_ids(shards, legacy) == (labelled[:1], labelled[1::2])

    for size in (0, 4):
        legacy["data"]["train_size"] = size
        with pytest.raises(ValueError, match=r"legacy-run.*'legacy'.*no test set"):
            split_ids(shards, legacy)
    legacy["data"]["split_rule"] = "random"
    with pytest.raises(ValueError, match="split_rule 'random'"):
        split_ids(shards, legacy)
    pretrain = run_snapshot(tiny_shards, "pretrain", "p", 1)
    assert split_ids(shards, pretrain) == (shards.ids("train"), labelled)
    pretrain["data"]["split_rule"] = "legacy"
    with pytest.raises(ValueError, match="fine-tuning only"):
        split_ids(shards, pretrain)


# ----------------------------------------------------------------------------------------------------
# bicubic labels


def test_bicubic_label_resize_invents_ids_at_boundaries_like_the_seed_code() -> None:
    from PIL import Image

    table = cityscapes_id_to_train_id()
    ids = np.full((20, 30), 7, dtype=np.uint8)  # road (train id 0) ...
    ids[:, 13:] = 26  # ... next to car (train id 13)
    nearest = resize_label_ids(ids, table, 9, 14, "nearest")
    bicubic = resize_label_ids(ids, table, 9, 14, "bicubic")
    assert set(np.unique(nearest)) == {0, 13}
    assert not set(np.unique(bicubic)) <= {0, 13}  # bogus classes or ignore at the boundary
    # Exactly the seed code: PIL's default resize of the mode-"L" id image, then the mapping.
    seed = np.asarray(Image.fromarray(ids).convert("L").resize((14, 9)), dtype=np.uint8)
    assert len(set(np.unique(seed)) - {7, 26}) > 0
    assert np.array_equal(bicubic, table[seed])
    with pytest.raises(ValueError, match="bilinear"):
        resize_label_ids(ids, table, 9, 14, "bilinear")


def test_a_bicubic_conversion_says_so_in_its_manifest(tiny_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth_driving" / "48x80-bicubic"
    common = ["--converter", "kitti", "--dataset", "synth_driving", "--raw", str(tiny_raw)]
    size = ["--height", "48", "--width", "80", "--samples-per-part", "16", "--label-interpolation"]
    assert geosem_main(["convert", *common, "--out", str(out), *size, "bicubic"]) == 0
    nearest = convert("kitti", tiny_raw, tmp_path / "nearest", height=48, width=80, progress=False)
    assert read_manifest(out).parameters["label_interpolation"] == "bicubic"
    assert read_manifest(nearest).parameters["label_interpolation"] == "nearest"
    bicubic_shards, nearest_shards = ShardSet(out), ShardSet(nearest)
    ids = bicubic_shards.ids("test")
    differ = [
        not np.array_equal(
            bicubic_shards.read(i, ["label"])["label"], nearest_shards.read(i, ["label"])["label"]
        )
        for i in ids
    ]
    assert any(differ)
    # The workflow passes the flag to every converter: nearest is what the others do, bicubic is refused.
    with pytest.raises(TypeError, match=r"'ade20k' takes no parameter\(s\) \['label_interpolation'\]"):
        convert("ade20k", tmp_path, tmp_path / "ade", height=8, width=8, label_interpolation="bicubic")
    with pytest.raises(FileNotFoundError):  # got past the parameter check to the (missing) raw data
        convert(
            "ade20k", tmp_path / "none", tmp_path / "ade", height=8, width=8, label_interpolation="nearest"
        )


# ----------------------------------------------------------------------------------------------------
# Welch t-test column


def _t_two_sided_p(t: float, df: float) -> float:
    """The t distribution's two-sided tail beyond |t|, integrated with Simpson's rule from its density
    (no scipy)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    steps, top = 20_000, abs(t)
    width = top / steps
    inner = density(0) + density(top) + sum((4 if k % 2 else 2) * density(k * width) for k in range(1, steps))
    return 2 * (0.5 - inner * width / 3)


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t and its two-sided p with Welch-Satterthwaite degrees of freedom."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    t = (ma - mb) / math.sqrt(va / na + vb / nb)
    df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return t, _t_two_sided_p(t, df)


def _paired_by_hand(a: list[float], b: list[float]) -> tuple[float, float]:
    """The paired t-test over the first min(len) values of both (matched seeds 0, 1, ...)."""
    differences = [x - y for x, y in zip(a, b, strict=False)]
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return t, _t_two_sided_p(t, n - 1)


def test_welch_p_matches_a_hand_computation(tmp_path: Path) -> None:
    values = {
        "random": [0.20, 0.30, 0.40],
        "depth_supervised": [0.50, 0.52, 0.60],
        "flow": [0.45],
        "inpainting": [0.31, 0.33, 0.35, 0.36],
    }
    runs = [
        fake_finetune_run(tmp_path / "runs", init, seed, miou, 0.5)
        for init, mious in values.items()
        for seed, miou in enumerate(mious)
    ]
    out = tmp_path / "results"
    table = aggregate_study(
        "unit",
        runs,
        table_csv=out / "t.csv",
        table_md=out / "t.md",
        metrics_dir=out / "metrics" / "unit",
        curves_plot=out / "c.png",
    ).set_index("init")
    t, p = _welch_by_hand(values["depth_supervised"], values["random"])
    assert t == pytest.approx(3.674235, abs=1e-6)  # 0.24 / sqrt(0.0028 / 3 + 0.01 / 3)
    assert table.loc["depth_supervised", "miou_welch_t"] == pytest.approx(t, rel=1e-9)
    assert table.loc["depth_supervised", "miou_welch_p"] == pytest.approx(p, abs=1e-7)
    _, p4 = _welch_by_hand(values["inpainting"], values["random"])
    assert table.loc["inpainting", "miou_welch_p"] == pytest.approx(p4, abs=1e-7)
    assert table.loc["inpainting", ["n_seeds", "baseline_n_seeds"]].tolist() == [4, 3]
    assert math.isnan(table.loc["flow", "miou_welch_p"]) and math.isnan(table.loc["flow", "miou_welch_t"])
    assert math.isnan(table.loc["random", "miou_welch_p"])

    csv = pd.read_csv(out / "t.csv")
    assert {"miou_welch_t", "miou_welch_p", "n_seeds", "baseline_n_seeds"} <= set(csv.columns)
    # The tests table beneath the scores: the p of each row against random, with both seed counts.
    scores, tests = markdown_tables((out / "t.md").read_text())
    assert tests[0] == ["Pre-training", "r18-all-n16", "seeds", "pre-trainings"]
    # The paired test matches seed s with the baseline's seed s: 3 pairs (inpainting's seed 3 has none).
    paired_t, paired_p = _paired_by_hand(values["depth_supervised"], values["random"])
    assert table.loc["depth_supervised", "miou_paired_t"] == pytest.approx(paired_t, rel=1e-9)
    assert table.loc["depth_supervised", "miou_paired_p"] == pytest.approx(paired_p, abs=1e-7)
    _, paired_p4 = _paired_by_hand(values["inpainting"], values["random"])
    assert table.loc["inpainting", "n_pairs"] == 3 and table.loc["flow", "n_pairs"] == 1
    assert {row[0]: row[1] for row in tests[2:]} == {
        "random": "baseline (3)",
        "depth_supervised": f"{p:.3f} (3 vs 3); paired {paired_p:.3f} (3)",
        "flow": "n/a (1 vs 3); paired n/a (1)",
        "inpainting": f"{p4:.3f} (4 vs 3); paired {paired_p4:.3f} (3)",
    }
    assert ["random", "30.0 ± 5.8", "50.0 ± 0.0"] in scores
    metrics = out / "metrics" / "unit" / "r18-all-n16"
    flow = json.loads((metrics / "flow.json").read_text())
    assert "p_welch" not in flow and flow["n"] == 1  # undefined: left out, as DVC drops nulls
    depth = json.loads((metrics / "depth_supervised.json").read_text())
    assert depth["p_welch"] == float(f"{p:.3g}")  # 3 significant digits

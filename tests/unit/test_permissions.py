"""Outputs follow the umask: every writer (atomic writes, torch saves and checkpoints, shard sets, tables
and figures) creates files with 0666 and folders with 0777, less the umask, as a plain ``open`` would.

The atomic writer used to keep ``tempfile.mkstemp``'s 0600, so colleagues sharing a project directory
could not read ``model.pt`` or ``metrics.json`` whatever their umask. The umask here is 027 (group may
read, others nothing), not the common 022, so a writer that hard-codes 0644 fails as well as one that
keeps 0600. The whole pipeline under umask 022 is checked in tests/workflow/test_pipeline.py.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from geosem.aggregate.plots import plot_sizes
from geosem.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, current_umask
from geosem.sources import convert
from geosem.train.checkpoint import atomic_torch_save, save_checkpoint

UMASK = 0o027
FILE_MODE, FOLDER_MODE = 0o640, 0o750


@pytest.fixture
def umask() -> Iterator[int]:
    previous = os.umask(UMASK)
    try:
        yield UMASK
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in paths}


def _assert_modes(root: Path) -> None:
    wrong = {
        name: oct(mode)
        for name, mode in _modes(root).items()
        if mode != (FOLDER_MODE if (root.parent / name).is_dir() else FILE_MODE)
    }
    assert not wrong, f"not {oct(FILE_MODE)} files / {oct(FOLDER_MODE)} folders under umask 027: {wrong}"


def test_the_umask_is_read_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    atomic_write_text(tmp_path / "out" / "a.txt", "a\n")
    atomic_write_bytes(tmp_path / "out" / "b.bin", b"b")
    atomic_write_json(tmp_path / "out" / "metrics.json", {"miou": 0.5})
    _assert_modes(tmp_path / "out")


def test_models_and_checkpoints_follow_the_umask(tmp_path: Path, umask: int) -> None:
    run_dir = tmp_path / "run"
    atomic_torch_save({"model": {"w": torch.ones(2)}}, run_dir / "model.pt")
    for step in (1, 2):  # the second save turns the first into checkpoint.prev.pt
        save_checkpoint({"step": step, "model": {"w": torch.ones(2) * step}}, run_dir)
    assert {p.name for p in run_dir.iterdir()} == {"model.pt", "checkpoint.pt", "checkpoint.prev.pt"}
    _assert_modes(run_dir)


def test_shard_sets_follow_the_umask(tiny_raw: Path, tmp_path: Path, umask: int) -> None:
    out = tmp_path / "shards" / "64x96"
    convert("kitti", tiny_raw, out, height=64, width=96, dataset="synth", samples_per_part=5, progress=False)
    assert any(p.suffix == ".h5" for p in out.iterdir()) and (out / "manifest.json").is_file()
    _assert_modes(tmp_path / "shards")


def test_figures_follow_the_umask(tmp_path: Path, umask: int) -> None:
    table = pd.DataFrame(
        {
            "init": ["random", "random"],
            "encoder": ["resnet18", "resnet18"],
            "mode": ["all", "all"],
            "train_samples": [4, 8],
            "miou_mean": [0.2, 0.3],
            "miou_se": [0.01, 0.02],
        }
    )
    plot_sizes(table, tmp_path / "figures" / "sizes.png", "sizes")
    _assert_modes(tmp_path / "figures")

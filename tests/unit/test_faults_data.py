"""Data faults, provoked for real (issue 17: item 2 and the shard-writing half of item 3).

Each test damages a real shard set or raw tree the way it happens in practice (a flipped byte, a copy cut
short or appended to, a rewritten index, a corrupt PNG, an unknown label id, a deleted frame, a full disk)
and shows three things: the error names what is at fault, nothing half-written is left (no staging folder
beside the shard set, no run outputs), and the earlier result is intact (byte-identical). The session's
tiny raw tree and shard set (tests/conftest.py) are copied before they are damaged.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from geosem.labelspaces import IGNORE_INDEX
from geosem.shards import ShardSet, ShardVerificationError, ShardWriter, verify_shards
from geosem.sources import convert
from geosem.worlds.aux_writer import AuxWorldConfig, write_ade
from geosem.worlds.indoor import IndoorWorldConfig
from geosem.worlds.nyu_writer import write_batch, write_nyu_files

from tests.helpers import cli_env, job_command, run_snapshot, write_run

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
DRIVE = Path("raw_data/2011_09_26/2011_09_26_drive_0001_sync")  # a training drive of TINY_WORLD
KITTI: dict[str, Any] = {
    "height": 64,
    "width": 96,
    "dataset": "synth_driving",
    "samples_per_part": 5,
    "progress": False,
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _siblings(out: Path) -> list[str]:
    """What lies beside a shard set: a staging or retired folder left by a failed write would show."""
    return sorted(p.name for p in out.parent.iterdir())


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _refused_conversion(
    converter: str, raw: Path, out: Path, damage: Callable[[], None], match: str, **params: Any
) -> str:
    """Convert ``raw`` into ``out``, damage the raw tree, convert again into the same ``out``: the second
    conversion must fail matching ``match`` and leave the first set byte-identical, nothing beside it.
    Returns the error message."""
    convert(converter, raw, out, **params)
    before = _tree(out)
    damage()
    with pytest.raises(Exception, match=match) as caught:
        convert(converter, raw, out, **params)
    assert _tree(out) == before
    assert _siblings(out) == [out.name]
    return str(caught.value)


# --- 1. a flipped byte in a part -----------------------------------------------------------------------


@pytest.mark.slow  # `geosem verify` as a process, as the workflow and a user run it
def test_verify_names_a_flipped_byte_with_both_hashes(tiny_shards: Path, tmp_path: Path) -> None:
    shards = _copy(tiny_shards, tmp_path / "synth_driving" / "64x96")
    part = shards / "part-00001.h5"
    recorded = json.loads((shards / "manifest.json").read_text())["parts"][1]["sha256"]
    _flip_byte(part)
    actual = hashlib.sha256(part.read_bytes()).hexdigest()
    before = _tree(shards)
    result = subprocess.run(
        ["geosem", "verify", str(shards)], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{part}: sha256 {actual} != manifest {recorded}" in result.stderr
    assert all(f"part-0000{k}.h5" not in result.stderr for k in (0, 2, 3))
    assert _tree(shards) == before  # verifying writes nothing


# --- 2. a shard set that changed after conversion, at the start of a training job ----------------------


def _truncate_part(shards: Path) -> tuple[Path, str]:
    part = shards / "part-00001.h5"
    size = part.stat().st_size
    os.truncate(part, size - 100)  # a copy cut short
    return part, f"{size - 100} bytes, manifest says {size} bytes"


def _append_to_part(shards: Path) -> tuple[Path, str]:
    part = shards / "part-00002.h5"
    size = part.stat().st_size
    with open(part, "ab") as handle:  # e.g. a second writer appending to the file
        handle.write(bytes(10))
    return part, f"{size + 10} bytes, manifest says {size} bytes"


def _rewrite_index(shards: Path) -> tuple[Path, str]:
    index = shards / "index.parquet"
    table = pq.read_table(index)
    pq.write_table(table.slice(0, table.num_rows - 1), index)  # a valid index, one sample short
    recorded = json.loads((shards / "manifest.json").read_text())["index_sha256"]
    return index, f"sha256 {hashlib.sha256(index.read_bytes()).hexdigest()}, manifest says {recorded}"


DAMAGES = {
    "truncated part": _truncate_part,
    "appended part": _append_to_part,
    "rewritten index": _rewrite_index,
}


@pytest.mark.slow  # a real `geosem pretrain` process
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_training_refuses_a_shard_set_that_no_longer_matches_its_manifest(
    tiny_shards: Path, tmp_path: Path, damage: str
) -> None:
    shards = _copy(tiny_shards, tmp_path / "synth_driving" / "64x96")
    run = write_run(tmp_path / "runs", run_snapshot(shards, "pretrain", "depth_supervised-64x96-s1"))
    path, differs = DAMAGES[damage](shards)
    result = subprocess.run(
        job_command("pretrain", run, "--procs", "1"),
        env=cli_env(NO_GPU),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert f"shard set {shards} no longer matches its manifest" in result.stderr, result.stderr
    assert f"{path}: {differs}" in result.stderr
    # Refused before the first step: no step logged, nothing written beside the run's snapshot.
    assert not re.search(r"geosem\.train\.loop: step \d+", result.stderr)
    assert sorted(p.name for p in run.parent.iterdir()) == ["run.yaml"]


def test_the_start_check_reads_sizes_not_contents(tiny_shards: Path, tmp_path: Path) -> None:
    """The check a job runs is cheap by design (``check_shard_set``: a stat per part, one hash of the
    index): a part replaced by zeros of the same size passes it, only `geosem verify` finds it."""
    shards = _copy(tiny_shards, tmp_path / "synth_driving" / "64x96")
    part = shards / "part-00000.h5"
    part.write_bytes(bytes(part.stat().st_size))  # not even HDF5 any more: never opened, never hashed
    ShardSet(shards).check_manifest()
    with pytest.raises(ShardVerificationError, match=re.escape(f"{part}: sha256")):
        verify_shards(shards)
    # An index that is no Parquet file at all is named while the set is opened, with both hashes.
    index = shards / "index.parquet"
    index.write_bytes(b"not parquet")
    with pytest.raises(ShardVerificationError, match=re.escape(f"{index}: sha256 ")) as caught:
        ShardSet(shards)
    assert f"shard set {shards}: cannot read its index" in str(caught.value)
    assert "manifest says sha256" in str(caught.value)


def test_manifests_without_sizes_stay_readable_and_newer_formats_are_refused(
    tiny_shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shards = _copy(tiny_shards, tmp_path / "synth_driving" / "64x96")
    path = shards / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["format"] == 2 and all(p["size"] > 0 for p in manifest["parts"])
    old = {
        **manifest,
        "format": 1,
        "parts": [{k: v for k, v in p.items() if k != "size"} for p in manifest["parts"]],
    }
    path.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="geosem.shards.verify"):
        ShardSet(shards).check_manifest()  # a format 1 set still trains: only presence is checked
    assert "records no part sizes" in caplog.text
    assert verify_shards(shards) == 16
    path.write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ValueError, match=re.escape(f"{path}: manifest format 99 is newer")):
        ShardSet(shards)


# --- 3. a corrupt PNG in the raw tree --------------------------------------------------------------------


def _overwrite_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 32] = b"\xa5" * 32
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    ("relative", "damage"),
    [
        ("image_02/data/0000000001.png", _overwrite_middle),
        ("proj_depth/groundtruth/image_02/0000000002.png", _truncate),
    ],
    ids=["image overwritten", "depth truncated"],
)
def test_a_corrupt_png_stops_its_conversion_and_keeps_the_previous_set(
    tiny_raw: Path, tmp_path: Path, relative: str, damage: Callable[[Path], None]
) -> None:
    raw = _copy(tiny_raw, tmp_path / "raw" / "synth_driving")
    png = raw / DRIVE / relative
    message = _refused_conversion(
        "kitti", raw, tmp_path / "shards" / "64x96", lambda: damage(png), re.escape(str(png)), **KITTI
    )
    assert "corrupt" in message


# --- 4. a label id outside the label space ---------------------------------------------------------------


def test_kitti_label_id_outside_the_label_space_names_sample_and_id(tiny_raw: Path, tmp_path: Path) -> None:
    raw = _copy(tiny_raw, tmp_path / "raw" / "synth_driving")
    png = raw / DRIVE / "semantic_02/data/0000000002.png"
    ids = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    ids[:8, :8] = IGNORE_INDEX  # 255 is ignore in every label space: allowed
    cv2.imwrite(str(png), ids)

    def damage() -> None:
        ids[:8, 8:16] = 250  # no Cityscapes label id
        cv2.imwrite(str(png), ids)

    out = tmp_path / "shards" / "64x96"
    message = _refused_conversion("kitti", raw, out, damage, re.escape(str(png)), **KITTI)
    assert "sample '2011_09_26_drive_0001_sync-0000000002'" in message and "[250]" in message
    label = ShardSet(out).read("2011_09_26_drive_0001_sync-0000000002", ["label"])["label"]
    assert (label[:8, :8] == IGNORE_INDEX).all()  # the first conversion kept 255 as ignore


def test_ade20k_label_id_outside_the_label_space_names_sample_and_id(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "synth_ade"
    write_ade(AuxWorldConfig(seed=2, images=4, test_share=0.25), raw)
    png = sorted((raw / "ADEChallengeData2016" / "annotations" / "training").glob("*.png"))[0]

    def damage() -> None:
        label = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        label[:4, :4] = 250  # ADE20K has 150 classes
        cv2.imwrite(str(png), label)

    params = {"height": 32, "width": 32, "dataset": "synth_ade", "progress": False}
    out = tmp_path / "shards" / "32x32"
    message = _refused_conversion("ade20k", raw, out, damage, re.escape(str(png)), **params)
    assert f"sample {png.stem!r}" in message and "[250]" in message


def test_nyuv2_raw_label_id_outside_its_class_mapping_names_sample_and_id(tmp_path: Path) -> None:
    config = IndoorWorldConfig(seed=5, rooms=2, frames_per_room=2, height=24, width=32)
    batch = write_batch(config, 0, 2, tmp_path / "batch_0.h5")
    raw = tmp_path / "raw" / "synth_indoor"
    mat = write_nyu_files(config, [batch], raw)

    def damage() -> None:
        with h5py.File(mat, "r+") as handle:  # raw object ids, MATLAB axes: (N, W, H)
            handle["labels"][0, :3, :3] = 60000

    params = {"height": 24, "width": 32, "dataset": "synth_indoor", "progress": False}
    message = _refused_conversion("nyuv2", raw, tmp_path / "shards" / "24x32", damage, "nyu-0001", **params)
    assert "sample 'nyu-0001'" in message and "[60000]" in message and str(mat) in message


def _write_unit_set(out: Path, label: int, next_id: str | None = None) -> None:
    with ShardWriter(
        out,
        dataset="unit",
        variant=out.name,
        source_version="test",
        converter_version="0",
        label_space="cityscapes19",
        parameters={},
    ) as writer:
        for i, sample in enumerate(("a", "b")):
            arrays = {"image": np.zeros((4, 6, 3), np.uint8), "label": np.full((4, 6), label, np.uint8)}
            writer.add(arrays, {"id": sample, "split": "train", "next_id": next_id if i else "b"})


def test_the_shard_writer_refuses_train_ids_outside_the_label_space_and_dangling_neighbours(
    tmp_path: Path,
) -> None:
    """The writer's checks serve every converter: train ids (after a converter's mapping) and the
    neighbour references frame triplets follow."""
    out = tmp_path / "unit" / "4x6"
    _write_unit_set(out, label=IGNORE_INDEX)
    before = _tree(out)
    with pytest.raises(
        ValueError, match=r"sample 'a'.*train id\(s\) \[19\] outside label space 'cityscapes19'"
    ):
        _write_unit_set(out, label=19)  # cityscapes19 has train ids 0..18
    with pytest.raises(ValueError, match=r"sample 'b'.*next_id 'c' is not a sample"):
        _write_unit_set(out, label=0, next_id="c")
    assert _tree(out) == before and _siblings(out) == ["4x6"]


# --- 5. a missing neighbour frame -----------------------------------------------------------------------


def test_a_missing_neighbour_frame_is_named_with_the_samples_that_need_it(
    tiny_raw: Path, tmp_path: Path
) -> None:
    raw = _copy(tiny_raw, tmp_path / "raw" / "synth_driving")
    frame = raw / DRIVE / "image_02/data/0000000002.png"
    message = _refused_conversion(
        "kitti", raw, tmp_path / "shards" / "64x96", frame.unlink, re.escape(f"{frame} is missing"), **KITTI
    )
    drive = DRIVE.name
    assert f"it is sample {drive}-0000000002" in message
    assert f"the next_id of sample {drive}-0000000001" in message
    assert f"the prev_id of sample {drive}-0000000003" in message


# --- 6. a full disk while a shard set is written ---------------------------------------------------------


def _pages(*paths: Path) -> int:
    """Bytes a tmpfs charges for these files (folders: the files under them): whole 4 KiB pages."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in files)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(kib)``: a real tmpfs of that size (we are root), unmounted after the test."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        point = tmp_path / f"disk-{len(mounted)}"
        point.mkdir()
        command = ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(
                "this test fills a real disk and needs a tmpfs mount (root, `mount -t tmpfs`): "
                f"{' '.join(command)} failed: {result.stderr.strip()}"
            )
        mounted.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=True, capture_output=True)


@pytest.mark.slow  # mount / umount
def test_a_full_disk_is_named_and_keeps_the_previous_set(
    tiny_raw: Path, tiny_shards: Path, tmp_path: Path, tmpfs: Callable[[int], Path]
) -> None:
    previous = convert(
        "kitti", tiny_raw, tmp_path / "small" / "64x96", **{**KITTI, "height": 16, "width": 24}
    )
    # Room for the previous set, the new set's first part and half of its second: the disk fills mid-write.
    room = (
        _pages(previous) + _pages(tiny_shards / "part-00000.h5") + _pages(tiny_shards / "part-00001.h5") // 2
    )
    disk = tmpfs(room // 1024)
    out = _copy(previous, disk / "synth_driving" / "64x96")
    before, used = _tree(out), shutil.disk_usage(disk).used
    with pytest.raises(OSError, match="disk full") as caught:
        convert("kitti", tiny_raw, out, **KITTI)
    error = caught.value
    assert error.errno == errno.ENOSPC
    assert str(out) in str(error) and Path(error.filename).name == "part-00001.h5"
    assert _tree(out) == before and verify_shards(out) == 16
    assert _siblings(out) == ["64x96"] and shutil.disk_usage(disk).used == used  # the staging is gone

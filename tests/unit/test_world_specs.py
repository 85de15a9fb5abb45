"""geosem.worlds declares what each world's jobs write; the jobs' command line (geosem.worlds.commands)
writes exactly that. Worlds are tiny, so the file runs in seconds."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from geosem.worlds import (
    CALIB_FILES,
    NYU_FILES,
    WORLDS,
    driving_drives,
    get_world,
    indoor_batch_file,
    indoor_batches,
)
from geosem.worlds.commands import COMMANDS, add_world_commands

WORLD_SECTION: dict[str, Any] = {
    "seed": 1,
    "driving": {
        "drives": 2,
        "heldout_drives": 1,
        "frames": 2,
        "semantics_frames": 1,
        "height": 16,
        "width": 24,
        "lidar_beams": 4,
    },
    "indoor": {"rooms": 3, "frames_per_room": 1, "rooms_per_batch": 2, "height": 12, "width": 16},
    "ade": {"images": 2, "test_share": 0.5},
    "sun": {"images": 2, "test_share": 0.5},
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geosem")
    add_world_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return args.func(args)


def test_registry_names_each_world_its_dataset_and_converter() -> None:
    assert {(s.name, s.dataset, s.converter) for s in WORLDS.values()} == {
        ("driving", "synth_driving", "kitti"),
        ("indoor", "synth_indoor", "nyuv2"),
        ("ade", "synth_ade", "ade20k"),
        ("sun", "synth_sun", "sunrgbd"),
    }
    assert all(WORLDS[dataset].dataset == dataset for dataset in WORLDS)
    assert get_world("synth_indoor").name == "indoor"
    with pytest.raises(KeyError, match=r"synth_ade.*synth_driving.*synth_indoor.*synth_sun"):
        get_world("kitti")


def test_raw_files_list_every_job_output() -> None:
    assert driving_drives(WORLD_SECTION) == [
        ("2011_09_26", "2011_09_26_drive_0001_sync", False),
        ("2011_09_26", "2011_09_26_drive_0002_sync", False),
        ("2011_10_03", "2011_10_03_drive_0001_sync", True),
    ]
    assert get_world("synth_driving").raw_files(WORLD_SECTION) == [
        "raw_data/2011_09_26/2011_09_26_drive_0001_sync",
        "raw_data/2011_09_26/2011_09_26_drive_0002_sync",
        "raw_data/2011_10_03/2011_10_03_drive_0001_sync",
        *(f"raw_data/2011_09_26/{name}" for name in CALIB_FILES),
        *(f"raw_data/2011_10_03/{name}" for name in CALIB_FILES),
        "data_semantics",
        "devkit/mapping/train_mapping.txt",
        "geosem_world.json",
    ]
    assert get_world("synth_indoor").raw_files(WORLD_SECTION) == list(NYU_FILES)
    assert indoor_batches(WORLD_SECTION) == 2 and indoor_batch_file(1) == "synth_indoor_batches/batch_1.h5"
    assert get_world("synth_ade").config(WORLD_SECTION) == {"seed": 1, "images": 2, "test_share": 0.5}


def _covered(root: Path, declared: list[str]) -> None:
    """Every declared path exists, and every file under ``root`` lies in a declared path."""
    assert [p for p in declared if not (root / p).exists()] == []
    written = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    stray = [p for p in written if not any(p == d or p.startswith(d + "/") for d in declared)]
    assert stray == []


def test_the_jobs_write_exactly_the_declared_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"

    def config(dataset: str) -> str:
        return json.dumps(get_world(dataset).config(WORLD_SECTION), sort_keys=True)

    driving = raw / "synth_driving"
    drives = driving_drives(WORLD_SECTION)
    for date in sorted({date for date, _, _ in drives}):
        assert (
            _run(
                "world-driving-calib",
                "--config",
                config("synth_driving"),
                "--date",
                date,
                "--root",
                str(driving),
            )
            == 0
        )
    for _, name, _ in drives:
        assert (
            _run(
                "world-driving-drive",
                "--config",
                config("synth_driving"),
                "--drive",
                name,
                "--root",
                str(driving),
            )
            == 0
        )
    assert _run("world-driving-semantics", "--config", config("synth_driving"), "--root", str(driving)) == 0
    batches = [str(raw / indoor_batch_file(k)) for k in range(indoor_batches(WORLD_SECTION))]
    for k, batch in enumerate(batches):
        assert (
            _run("world-indoor-batch", "--config", config("synth_indoor"), "--batch", str(k), "--out", batch)
            == 0
        )
    indoor = raw / "synth_indoor"
    assert (
        _run(
            "world-indoor-files",
            "--config",
            config("synth_indoor"),
            "--root",
            str(indoor),
            "--batches",
            *batches,
        )
        == 0
    )
    assert _run("world-ade", "--config", config("synth_ade"), "--root", str(raw / "synth_ade")) == 0
    assert _run("world-sun", "--config", config("synth_sun"), "--root", str(raw / "synth_sun")) == 0
    for dataset, spec in WORLDS.items():
        _covered(raw / dataset, spec.raw_files(WORLD_SECTION))
    marker = json.loads((driving / "geosem_world.json").read_text())
    assert marker["generator"] == "geosem.sources.synthetic.driving"  # a provenance name, kept on purpose


def test_unknown_date_or_drive_fails_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    driving = json.dumps(get_world("synth_driving").config(WORLD_SECTION))
    assert _run("world-driving-calib", "--config", driving, "--date", "2012_01_01", "--root", "unused") == 1
    assert "2011_09_26" in capsys.readouterr().err
    assert _run("world-driving-drive", "--config", driving, "--drive", "nope", "--root", "unused") == 1
    assert "2011_10_03_drive_0001_sync" in capsys.readouterr().err


def test_every_command_has_a_help_line() -> None:
    assert sorted(COMMANDS) == sorted(
        f"world-{name}"
        for name in (
            "driving-calib",
            "driving-drive",
            "driving-semantics",
            "indoor-batch",
            "indoor-files",
            "ade",
            "sun",
        )
    )
    assert all(help_text and "\n" not in help_text for _, help_text, _ in COMMANDS.values())


@pytest.mark.slow  # a fresh interpreter, to see what importing loads
def test_the_package_and_its_parser_stay_light() -> None:
    # The Snakefile imports geosem.worlds while parsing: no torch, no cv2, no h5py.
    code = (
        "import sys, argparse, geosem.worlds as w, geosem.worlds.commands as c\n"
        "c.add_world_commands(argparse.ArgumentParser().add_subparsers())\n"
        f"w.get_world('synth_driving').raw_files({WORLD_SECTION!r})\n"
        "print(sorted(m for m in ('torch', 'cv2', 'h5py') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

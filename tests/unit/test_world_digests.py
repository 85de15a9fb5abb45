"""The embedded worlds' raw files stay byte-identical: small versions of all four worlds are generated
and every file's sha256 is compared with tests/data/world_digests.json.

The digests were first recorded with the worlds' code as it stood before it moved from
``geosem.sources.synthetic`` to ``geosem.worlds`` (commit 35fe71b), so the move and the split of the
scene builders into helpers are checked against the old output. The OXTS packets' digests were
re-recorded from ``geosem.worlds`` once they were hashed rounded (ROUNDED_TEXT), on a machine where every
other file still matched the old recording byte for byte. A deliberate change to a world's
output bumps its ``WORLD_VERSION`` and re-records the digests:

    python tests/unit/test_world_digests.py --root EMPTY_FOLDER --write

The configs (stored in the fixture with the digests) are small, but together they reach every placement
branch of the scene builders: curved and straight roads, static and moving drives, walking and standing
people, moving, standing and parked cars, every room kind, street and room views.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "world_digests.json"
PACKAGE = "geosem.worlds"

# What is recorded: name -> the writer ("driving", "indoor", "ade", "sun") and its config. Indoor configs
# carry rooms_per_batch like the workflow's world section. The test regenerates from the fixture's copy.
WORLDS: dict[str, dict[str, Any]] = {
    # The unit tests' tiny world (tests/conftest.py): curved roads, moving and static scenes.
    "driving_curved": {
        "writer": "driving",
        "config": {
            "seed": 3,
            "drives": 2,
            "heldout_drives": 1,
            "frames": 4,
            "semantics_frames": 4,
            "height": 64,
            "width": 96,
        },
    },
    # Straight roads (no yaw), more drives, so static drives and walking people occur too.
    "driving_straight": {
        "writer": "driving",
        "config": {
            "seed": 11,
            "drives": 3,
            "heldout_drives": 1,
            "frames": 3,
            "semantics_frames": 2,
            "height": 32,
            "width": 48,
            "max_yaw_rate_rps": 0.0,
            "static_drive_share": 0.5,
            "road_width_m": 4.0,  # parked cars reach into the ego car's corridor and are left out
        },
    },
    # Right-hand curves, no parked cars and no signs: the placement loops that draw nothing.
    "driving_sparse": {
        "writer": "driving",
        "config": {
            "seed": 4,
            "drives": 1,
            "heldout_drives": 1,
            "frames": 2,
            "semantics_frames": 1,
            "height": 16,
            "width": 24,
            "parked_cars_per_100m": 0.0,
            "signs_per_100m": 0.0,
        },
    },
    # Every room kind; 3 batches, the last one short.
    "indoor": {
        "writer": "indoor",
        "config": {
            "seed": 32,
            "rooms": 8,
            "frames_per_room": 2,
            "height": 24,
            "width": 32,
            "rooms_per_batch": 3,
        },
    },
    "ade": {"writer": "ade", "config": {"seed": 2, "images": 6, "test_share": 0.34}},  # streets and rooms
    "sun": {"writer": "sun", "config": {"seed": 2, "images": 4, "test_share": 0.25}},
}


def generate(root: Path, worlds: dict[str, dict[str, Any]], package: str = PACKAGE) -> None:
    """Write every world of ``worlds`` under ``root/<name>`` with the world modules of ``package``
    (imported by name, so the same code generated the recorded digests from the old package)."""
    driving = importlib.import_module(f"{package}.driving")
    kitti_writer = importlib.import_module(f"{package}.kitti_writer")
    indoor = importlib.import_module(f"{package}.indoor")
    nyu_writer = importlib.import_module(f"{package}.nyu_writer")
    aux_writer = importlib.import_module(f"{package}.aux_writer")
    for name, world in worlds.items():
        out, values = root / name, dict(world["config"])
        if world["writer"] == "driving":
            kitti_writer.write_driving_world(driving.DrivingWorldConfig(**values), out)
        elif world["writer"] == "indoor":
            per_batch = values.pop("rooms_per_batch")
            config = indoor.IndoorWorldConfig(**values)
            batches = [
                nyu_writer.write_batch(config, k, per_batch, root / f".{name}_batches" / f"batch_{k}.h5")
                for k in range(-(-config.rooms // per_batch))
            ]
            nyu_writer.write_nyu_files(config, batches, out)
        else:
            write = aux_writer.write_ade if world["writer"] == "ade" else aux_writer.write_sun
            write(aux_writer.AuxWorldConfig(**values), out)


# Files of decimal numbers written at full precision (KITTI's OXTS packets: 15 significant digits of
# latitude, angles, velocities). Their last digits follow the CPU: OpenBLAS picks its matrix kernels by
# the CPU (the pose chain's matmuls), and kernels differ in the last bit. Measured on an AVX512 machine:
# with OpenBLAS's SkylakeX kernels 5 of 423 files differ from the recording (all OXTS), with
# OPENBLAS_CORETYPE=Haswell none, with Sandybridge 16. They are hashed at 10 significant digits, far above
# that noise and far below anything a converter reads (1e-8 degrees).
ROUNDED_TEXT = "/oxts/data/"
ROUNDED_DIGITS = 10


def _file_digest(path: Path) -> str:
    data = path.read_bytes()
    if ROUNDED_TEXT in path.as_posix():
        rounded = [f"{float(v):.{ROUNDED_DIGITS}g}" for v in data.decode().split()]
        data = " ".join(rounded).encode()
    return hashlib.sha256(data).hexdigest()


def digests(root: Path, names: list[str]) -> dict[str, str]:
    """sha256 of every file under the worlds' folders (not the temporary indoor batches), by path; the
    OXTS packets rounded first (ROUNDED_TEXT)."""
    return {
        path.relative_to(root).as_posix(): _file_digest(path)
        for name in names
        for path in sorted((root / name).rglob("*"))
        if path.is_file()
    }


def test_worlds_are_byte_identical_to_the_recorded_digests(tmp_path: Path) -> None:
    expected = json.loads(FIXTURE.read_text())
    generate(tmp_path, expected["worlds"])
    got, want = digests(tmp_path, list(expected["worlds"])), expected["digests"]
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing, f"{len(missing)} recorded files were not written, first {missing[0]}"
    assert not extra, f"{len(extra)} files written that were not recorded, first {extra[0]}"
    differing = [path for path in sorted(want) if got[path] != want[path]]
    assert not differing, f"{len(differing)} of {len(want)} files differ, first {differing[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=f"record the worlds' digests into {FIXTURE}")
    parser.add_argument("--root", required=True, help="an empty folder to generate into")
    parser.add_argument("--package", default=PACKAGE, help="the package whose world modules generate")
    parser.add_argument("--write", action="store_true", help="write the fixture (else print it)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    generate(root, WORLDS, args.package)
    fixture = {"recorded_with": args.package, "worlds": WORLDS, "digests": digests(root, list(WORLDS))}
    text = json.dumps(fixture, indent=1, sort_keys=True) + "\n"
    if args.write:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(text)
        print(f"{len(fixture['digests'])} digests written to {FIXTURE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

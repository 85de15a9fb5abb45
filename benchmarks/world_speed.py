"""Rendering speed of the synthetic driving world, per core, at 96x320 (BENCHMARKS.md, "World generation").

Runs everything in one process on one thread, interleaving the contenders so that a busy machine slows
them alike; reports medians over repetitions and the ratios measured side by side:

* ``view``: one camera view (RGB, depth, labels) of the skeleton's renderer (``driving-v1``, loaded
  from git revision ``--old-rev``) and of the current one (``driving-v2``), same size, same frame count;
* ``kitti frame``: everything the world makes per KITTI frame (left and right views, a 360-degree
  lidar scan, flow, dynamic mask), rendered only, and rendered plus written in KITTI's layout.

    .venv/bin/python benchmarks/world_speed.py                  # the table in BENCHMARKS.md
    .venv/bin/python benchmarks/world_speed.py --threshold      # the SMALL_RECT sweep of raycast.py
    .venv/bin/python benchmarks/world_speed.py --ops            # numpy: (N,3) broadcasting vs 1-D arrays
"""

# ruff: noqa: E402 - the thread limits must be set before numpy is imported

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # per core: numpy must not use a second thread behind our back

import argparse
import importlib.util
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, FRAMES, DRIVES = 96, 320, 24, 3


# Where the driving world's module lived: geosem/worlds since the worlds left geosem/sources.
_DRIVING_PATHS = ("pipeline_src/geosem/worlds/driving.py", "pipeline_src/geosem/sources/synthetic/driving.py")


def _old_renderer(rev: str):  # a module loaded from git
    error: subprocess.CalledProcessError | None = None
    for candidate in _DRIVING_PATHS:
        try:
            source = subprocess.run(
                ["git", "show", f"{rev}:{candidate}"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
            break
        except subprocess.CalledProcessError as missing:
            error = missing
    else:
        assert error is not None
        raise error
    path = Path(tempfile.mkdtemp()) / "driving_v1.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("driving_v1", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["driving_v1"] = module
    spec.loader.exec_module(module)
    return module


def _time(function: Callable[[], None]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main_table(rev: str, repeats: int) -> None:
    from geosem.worlds.driving import DrivingWorldConfig, drive_ids
    from geosem.worlds.driving_frames import DriveRenderer
    from geosem.worlds.kitti_writer import write_drive

    new_config = DrivingWorldConfig(
        drives=DRIVES - 1, heldout_drives=1, frames=FRAMES, semantics_frames=1, height=HEIGHT, width=WIDTH
    )
    drives = drive_ids(new_config)
    frames = DRIVES * FRAMES

    def new_view() -> None:
        for drive in drives:
            r = DriveRenderer(new_config, drive)
            for t in range(FRAMES):
                prims = r.scene.primitives_at(t / new_config.fps)
                r.camera(prims, r.pose(t), prims.corners())

    def new_kitti_frame() -> None:
        for drive in drives:
            r = DriveRenderer(new_config, drive)
            for t in range(FRAMES):
                r.frame(t)

    out = Path(tempfile.mkdtemp())

    def new_kitti_written() -> None:
        for drive in drives:
            write_drive(new_config, drive, out)

    contenders: dict[str, Callable[[], None]] = {}
    try:
        old = _old_renderer(rev)
        old_config = old.DrivingWorldConfig(sequences=DRIVES, frames=FRAMES, height=HEIGHT, width=WIDTH)

        def old_view() -> None:
            for index in range(DRIVES):
                old.render_sequence(old_config, index)

        contenders["v1 view (skeleton)"] = old_view
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        print(f"(no v1 renderer from git revision {rev}: {error})")
    contenders["v2 view"] = new_view
    contenders["v2 KITTI frame, rendered"] = new_kitti_frame
    contenders["v2 KITTI frame, rendered + written"] = new_kitti_written

    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    load_before = os.getloadavg()[0]
    for function in contenders.values():
        function()  # warm-up: imports, caches
    for _ in range(repeats):
        for name, function in contenders.items():
            seconds[name].append(_time(function))
    shutil.rmtree(out, ignore_errors=True)

    machine = f"{_cpu_model()}, Python {platform.python_version()}, numpy {np.__version__}, one thread"
    print(f"\n{machine}; {frames} frames ({DRIVES} drives x {FRAMES}) at {HEIGHT}x{WIDTH}, ", end="")
    load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    print(f"median of {repeats} interleaved repetitions; {load}")
    print("(on a machine with 2 cores, a load average above 1 means other processes shared them)\n")
    print("| renderer | ms / frame | frames / s per core | vs v1 view |")
    print("|---|---|---|---|")
    base = statistics.median(seconds["v1 view (skeleton)"]) if "v1 view (skeleton)" in seconds else None
    for name, values in seconds.items():
        median = statistics.median(values)
        ratio = f"{base / median:.2f}x" if base else "-"
        print(f"| {name} | {1e3 * median / frames:.1f} | {frames / median:.1f} | {ratio} |")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def threshold_sweep(repeats: int) -> None:
    from geosem.worlds import raycast as rc
    from geosem.worlds.driving import DrivingWorldConfig, drive_ids
    from geosem.worlds.driving_frames import DriveRenderer

    config = DrivingWorldConfig(
        drives=2, heldout_drives=1, frames=FRAMES, semantics_frames=1, height=HEIGHT, width=WIDTH
    )
    views = []
    for drive in drive_ids(config):
        r = DriveRenderer(config, drive)
        for t in range(0, FRAMES, 4):
            prims = r.scene.primitives_at(t / config.fps)
            pose = r.pose(t)
            grid = rc.RayGrid.rotated(r.rays, pose[:3, :3])
            rects = rc.pinhole_rects(
                prims.corners(), pose[:3, 3], pose[:3, :3], r.rig.intrinsics, HEIGHT, WIDTH
            )
            views.append((rc.local_frames(prims, pose[:3, 3]), rects, grid))
    print("| SMALL_RECT | ms per view (primitives only) |\n|---|---|")
    for threshold in (200, 400, 800, 1500, 3000, 6000):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for frames, rects, grid in views:
                rc.cast_primitives(
                    frames, rects, grid, rc.empty_keys(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH), threshold
                )
            times.append((time.perf_counter() - start) / len(views))
        print(f"| {threshold} | {1e3 * statistics.median(times):.2f} |")


def ops() -> None:
    rng = np.random.default_rng(0)
    n = HEIGHT * WIDTH
    a, b = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
    a3 = rng.random((n, 3)).astype(np.float32)
    table = rng.random((300, 15)).astype(np.float32)
    idx = rng.integers(0, 300, n)

    def per(function: Callable[[], object], repeats: int = 200) -> float:
        function()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        return 1e6 * (time.perf_counter() - start) / repeats

    print(f"| operation on {n} float32 | us |\n|---|---|")
    print(f"| 1-D multiply | {per(lambda: a * b):.0f} |")
    print(f"| (N,3) * (N,1) broadcast | {per(lambda: a3 * a[:, None]):.0f} |")
    print(f"| 3 x 1-D multiply | {per(lambda: (a * b, a * b, a * b)):.0f} |")
    rows = np.take(table, idx, axis=0)
    print(f"| strided column of a gathered table, multiply | {per(lambda: rows[:, 7] * a):.0f} |")
    column = np.ascontiguousarray(table[:, 7])
    print(f"| gather of a 1-D column, multiply | {per(lambda: column[idx] * a):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old-rev", default="9c98feb", help="git revision holding the v1 renderer")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threshold", action="store_true", help="sweep raycast.SMALL_RECT")
    parser.add_argument("--ops", action="store_true", help="numpy layout micro-benchmark")
    args = parser.parse_args()
    if args.threshold:
        threshold_sweep(args.repeats)
    elif args.ops:
        ops()
    else:
        main_table(args.old_rev, args.repeats)


if __name__ == "__main__":
    main()

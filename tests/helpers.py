"""What several test modules share: paths, configs, work directories, Snakemake runs, run snapshots,
fake finished runs and the task tables. Tests import from here, never from each other."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SNAKEMAKE_TIMEOUT = 900


# --- configs -------------------------------------------------------------------------------------------


def validated_config(**overrides: Any) -> dict[str, Any]:
    """config/config.yaml with ``overrides`` (top-level keys), validated and defaults filled, as the
    workflow sees it; study files from the repository unless ``study_dir`` says otherwise."""
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["study_dir"] = str(REPO / "config" / "studies")
    config.update(overrides)
    validate(config, str(CONFIG_SCHEMA))
    return config


# --- subprocesses --------------------------------------------------------------------------------------


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for subprocesses: the `geosem` and `snakemake` of the interpreter running the
    tests come first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


@contextmanager
def mounted_tmpfs(mountpoint: Path, size_bytes: int) -> Iterator[Path]:
    """A real small filesystem (tmpfs, root only) at ``mountpoint`` for disk-full faults, unmounted on
    exit. Fails, never skips, where it cannot be mounted: the fault cannot be shown without it."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    size = max(4096, size_bytes // 4096 * 4096)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        raise AssertionError(
            f"the disk-full tests need a small tmpfs: `mount -t tmpfs` at {mountpoint} failed "
            f"({mount.stderr.strip()}); run them as root or in a container with CAP_SYS_ADMIN"
        )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def make_workdir(root: Path, dvc: bool = True) -> Path:
    """A copy of the workflow (Snakefile, rules, configs, envs, dvc.yaml) with the tiny test config, as a
    git + DVC repository like a user's checkout with a local DVC remote beside it."""
    workdir = root / "geosem"
    workdir.mkdir()
    for name in ("Snakefile", "workflow", "config", "envs", "dvc.yaml"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, workdir / name)
        else:
            shutil.copy2(source, workdir / name)
    shutil.copy2(REPO / "tests" / "config" / "tiny.yaml", workdir / "config" / "tiny.yaml")
    shutil.copy2(
        REPO / "tests" / "config" / "studies" / "tiny.yaml", workdir / "config" / "studies" / "tiny.yaml"
    )
    if not dvc:
        return workdir
    shutil.copy2(REPO / ".gitignore", workdir / ".gitignore")
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@geosem"],
        ["git", "config", "user.name", "test"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(root / "dvc-store")],
    ):
        subprocess.run(command, cwd=workdir, check=True, env=cli_env(), capture_output=True)
    shutil.copy2(REPO / ".dvcignore", workdir / ".dvcignore")
    return workdir


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``snakemake --cores 2 --configfile config/tiny.yaml ARGS`` in ``workdir``; on failure the error
    carries Snakemake's output and the tail of every job log."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/tiny.yaml", *args],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=SNAKEMAKE_TIMEOUT,
    )
    if check and result.returncode != 0:
        logs = "\n".join(
            f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((workdir / "logs").rglob("*.log"))
        )
        raise AssertionError(
            f"snakemake {args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}\n{logs}"
        )
    return result


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a (dry) run."""
    counts: dict[str, int] = {}
    match = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", output, re.S)
    if match is None:
        return counts
    for line in match.group(1).splitlines():
        name, count = line.split()
        counts[name] = int(count)
    return counts


# --- the tiny world ------------------------------------------------------------------------------------


def _tiny_world() -> Any:
    from geosem.worlds.driving import DrivingWorldConfig

    return DrivingWorldConfig(
        seed=3, drives=2, heldout_drives=1, frames=4, semantics_frames=4, height=64, width=96
    )


# The unit tests' world (tests/conftest.py renders it once per session): 2 training drives x 4 frames
# and 4 labelled frames of 1 held-out drive, rendered at 64x96.
TINY_WORLD = _tiny_world()


# --- run snapshots -------------------------------------------------------------------------------------

# The sections of a tiny run, as the planner resolves them (every task parameter spelled out).
MODEL: dict[str, Any] = {"encoder": "resnet18", "decoder_channels": [8, 16, 32, 64, 128]}
LOOP: dict[str, Any] = {
    "steps": 2,
    "batch_size": 2,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "eval_every": 2,
    "checkpoint_every": 2,
}
EVALUATION: dict[str, Any] = {"batch_size": 4, "max_depth": 80.0}
COMPUTE: dict[str, Any] = {"num_workers": 0}
DEPTH_TASK: dict[str, Any] = {
    "name": "depth_supervised",
    "init": "depth_supervised",
    "min_depth": 0.1,
    "max_depth": 100.0,
    "initial_depth": 10.0,
    "hflip": True,
    "encoder_init": "random",
}
SEG_TASK: dict[str, Any] = {
    "name": "segmentation",
    "mode": "all",
    "hflip": True,
    "freeze": "full",
    "metric": "dataset",
    "classifier_kernel": 3,
}
# Pre-training inits as config entries (named as in config/config.yaml's pretrain.tasks): ``task`` names
# the task module where it is not the init's name; every encoder starts from scratch (no download).
PRETRAIN_TASKS: dict[str, dict[str, Any]] = {
    "depth_supervised": {"min_depth": 0.1, "max_depth": 100.0, "hflip": True},
    "depth_mono_rand": {"task": "depth_mono", "encoder_init": "random"},
    "depth_stereo_rand": {"task": "depth_stereo", "encoder_init": "random"},
    "depth_mono_stereo_rand": {"task": "depth_mono_stereo", "encoder_init": "random"},
    "depth_lidar": {"task": "depth_lidar", "min_depth": 0.1, "max_depth": 100.0},
    "depth_cropped": {"task": "depth_cropped", "crop": [64, 64]},
    "flow_rand": {"task": "flow", "smoothness": 2.0, "encoder_init": "random"},
    "mae_seed": {"task": "mae", "variant": "seed", "seed_density": [0.001, 0.01], "patch": 7},
    "mae_patch": {"task": "mae", "variant": "patch", "mask_ratio": 0.75, "patch": 8},
    "moco_v2": {"queue_size": 64, "mlp_hidden": 256, "view_size": [32, 32], "exclude_same_image": True},
    "dino": {"local_crops": 2, "out_dim": 256},
}


def pretrain_task(init: str, **overrides: Any) -> dict[str, Any]:
    """The snapshot ``task`` section of ``PRETRAIN_TASKS[init]`` (with ``overrides``) as the planner
    resolves it: ``name`` (the task module), ``init`` and every parameter, defaults filled in."""
    from geosem.studies.plan import pretrain_task_section

    entry = {**copy.deepcopy(PRETRAIN_TASKS[init]), **overrides}
    return pretrain_task_section({"pretrain": {"tasks": {init: entry}}}, init)


def data_section(shards: Path, **overrides: Any) -> dict[str, Any]:
    """The ``data`` section of a run on the shard set ``shards``: dataset, label space, classes and
    resolution from its manifest, the folder name as the variant (as the planner has it)."""
    from geosem.shards.manifest import read_manifest

    manifest = read_manifest(shards)
    data = {
        "dataset": manifest.dataset,
        "variant": Path(shards).name,
        "shards": str(shards),
        "height": manifest.parameters["height"],
        "width": manifest.parameters["width"],
        "label_space": manifest.label_space,
        "num_classes": len(manifest.classes),
        "train_split": "train",
        "test_split": "test",
        "test_stride": 1,
    }
    return {**data, **overrides}


def run_snapshot(
    shards: Path,
    kind: str,
    run_id: str,
    steps: int = 2,
    *,
    task: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    seed: int = 1,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    loop: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    compute: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A complete run snapshot of a tiny ``kind`` run of ``steps`` steps on ``shards``.

    ``task`` replaces the task section (default ``DEPTH_TASK`` for a pre-training, ``SEG_TASK`` for a
    fine-tune); ``model``, ``data``, ``loop``, ``evaluation`` and ``compute`` update the defaults key by
    key; a fine-tune starts from ``init`` (default random) and trains on 4 labelled images unless ``data``
    says otherwise; ``extra`` adds top-level keys (``protocol``). Every section is a fresh copy.
    """
    if kind not in ("pretrain", "finetune"):
        raise ValueError(f"kind must be pretrain or finetune, got {kind!r}")
    default_task = DEPTH_TASK if kind == "pretrain" else SEG_TASK
    snapshot: dict[str, Any] = {
        "run_id": run_id,
        "kind": kind,
        "seed": seed,
        "task": copy.deepcopy(task if task is not None else default_task),
        "model": {**copy.deepcopy(MODEL), **copy.deepcopy(model or {})},
        "data": data_section(shards, **({"train_size": 4} if kind == "finetune" else {}) | (data or {})),
        "loop": {**LOOP, "steps": steps, **(loop or {})},
        "evaluation": {**EVALUATION, **(evaluation or {})},
        "compute": {**COMPUTE, **(compute or {})},
        **copy.deepcopy(extra),
    }
    if kind == "finetune":
        snapshot["init"] = copy.deepcopy(init if init is not None else {"name": "random"})
    elif init is not None:
        raise ValueError("a pre-training has no init section")
    return snapshot


def pretrained_init(pretrain: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The ``init`` section of a fine-tune that starts from the pre-training snapshot ``pretrain`` whose
    weights are (or will be) ``checkpoint``, as the planner writes it."""
    task = pretrain["task"]
    return {
        "name": task.get("init", task["name"]),
        "task": task["name"],
        "run_id": pretrain["run_id"],
        "variant": pretrain["data"]["variant"],
        "height": pretrain["data"]["height"],
        "width": pretrain["data"]["width"],
        "checkpoint": str(checkpoint),
        "run": {"model": copy.deepcopy(pretrain["model"]), "task": copy.deepcopy(task)},
    }


def write_run(root: Path, snapshot: dict[str, Any]) -> Path:
    """Write ``snapshot`` to ``root/<kind>/<run_id>/run.yaml`` (the layout of runs/) and return the path."""
    from geosem.snapshot import write_snapshot

    path = root / snapshot["kind"] / snapshot["run_id"] / "run.yaml"
    write_snapshot(snapshot, path)
    return path


# --- fake finished runs --------------------------------------------------------------------------------


def fake_finetune_run(
    root: Path,
    init: str,
    seed: int,
    miou: float,
    pacc: float,
    variant: str = "64x192-v3",
    pre: str = "",
    encoder: str = "resnet18",
    mode: str = "all",
    pretrain_seed: int = 0,
) -> Path:
    """A finished fine-tune without training, for aggregation: its snapshot (resolutions in data and,
    for a pre-trained init of variant ``pre``, in init), metrics.json and a two-point curves.csv."""
    import pandas as pd
    from geosem.snapshot import ShardVariant, write_snapshot

    run_dir = root / f"seg-{init}-{mode}-{encoder}-{variant}-{pre}-s{seed}"
    fine = ShardVariant.parse(variant)
    init_section: dict[str, Any] = {"name": init}
    if pre or init not in ("random", "imagenet"):
        # A pre-trained init (one pre-training shared by the seeds), at ``pre`` or the fine-tune's variant.
        pre_variant = ShardVariant.parse(pre or variant)
        run_id = f"{init}-{encoder}-{pre or variant}-s{pretrain_seed}"
        init_section |= {"run_id": run_id, "variant": pre or variant}
        init_section |= {"height": pre_variant.height, "width": pre_variant.width}
    snapshot = {
        "run_id": run_dir.name,
        "kind": "finetune",
        "seed": seed,
        "init": init_section,
        "model": {"encoder": encoder},
        "task": {"name": "segmentation", "mode": mode},
        "data": {"train_size": 16, "variant": variant, "height": fine.height, "width": fine.width},
        "loop": {"lr": 0.0005},
        "evaluation": {},
        "compute": {},
        "protocol": "paper",
    }
    write_snapshot(snapshot, run_dir / "run.yaml")
    metrics = {"test_miou": miou, "test_pixel_accuracy": pacc, "train_samples": 16}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"step": [5, 10], "test_miou": [miou / 2, miou]}).to_csv(run_dir / "curves.csv", index=False)
    return run_dir


# --- training jobs as processes ------------------------------------------------------------------------


def job_command(kind: str, run: Path, *extra: str, threads: int = 1) -> list[str]:
    """``geosem -v <kind> --run RUN --threads N EXTRA``: one training job, as a workflow rule starts it."""
    return ["geosem", "-v", kind, "--run", str(run), "--threads", str(threads), *extra]


def start_job(
    kind: str,
    run: Path,
    *extra: str,
    threads: int = 1,
    env: dict[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[str]:
    """Start ``job_command(...)`` in the environment ``cli_env(env)``; stdout and stderr are pipes (text)
    unless ``popen`` says otherwise."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(job_command(kind, run, *extra, threads=threads), env=cli_env(env), **options)


# --- study tables --------------------------------------------------------------------------------------


def markdown_tables(markdown: str) -> list[list[list[str]]]:
    """The tables of a markdown text, each a list of rows of stripped cells (delimiter rows included)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([cell.strip() for cell in line.strip("|").split("|")])
        previous = line
    return tables


# --- SLURM: the test cluster and Snakemake runs through it ---------------------------------------------
# Shared by tests/workflow/test_slurm.py and tests/workflow/test_slurm_faults.py; the cluster fixture
# (one cluster per session) is in tests/workflow/conftest.py. The section was appended as a whole, so its
# imports stay with it.

import signal  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

SLURM_PARTITION = "debug"  # the partition tools/slurm/up creates
SLURM_CONFIG = ("--configfile", "config/tiny.yaml", "config/slurm.yaml")
# Status checks every few seconds instead of the plugin's 40 s (which would add 40 s per wave of jobs).
SLURM_TEST_SETTINGS = ("--slurm-init-seconds-before-status-checks", "2")


@dataclass(frozen=True)
class SlurmCluster:
    """The single-node test cluster of tools/slurm/up; ``state`` holds the PID files of its daemons."""

    partition: str
    state: Path

    def _script(self, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(REPO / "tools" / "slurm" / name)],
            env={**os.environ, "GEOSEM_SLURM_STATE": str(self.state)},
            capture_output=True,
            text=True,
            timeout=600,
        )

    def up(self) -> subprocess.CompletedProcess[str]:
        """Start what is not running (all of it at first, a lost node's slurmd later) and wait until the
        node takes jobs; returncode 1 and the reason when it does not."""
        return self._script("up")

    def down(self) -> None:
        """Stop the daemons tools/slurm/up started, by their recorded PIDs."""
        self._script("down")


def slurm_env() -> dict[str, str]:
    """The environment of a Snakemake run through the test cluster: the test interpreter's tools first on
    PATH, the test partition in SBATCH_PARTITION (which profiles/slurm/config.yaml reads)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SBATCH_PARTITION"] = SLURM_PARTITION
    return env


def slurm_workdir(root: Path) -> Path:
    """``make_workdir`` with both profiles and the SLURM overlay config (tests/config/slurm.yaml)."""
    workdir = make_workdir(root)
    # Both profiles live under profiles/; `--profile slurm` at the root finds them through the `slurm` link,
    # exactly as in the repository.
    shutil.copytree(REPO / "profiles", workdir / "profiles")
    (workdir / "slurm").symlink_to(os.readlink(REPO / "slurm"))
    shutil.copy2(REPO / "tests" / "config" / "slurm.yaml", workdir / "config" / "slurm.yaml")
    return workdir


class Snakemake:
    """A `snakemake --profile slurm` run in the background, stopped with SIGINT if it overruns.

    SIGINT, not SIGTERM: on SIGINT Snakemake cancels its SLURM jobs and exits; on SIGTERM it waits for
    them to finish, and a run whose status polling broke would never end.
    """

    def __init__(
        self, workdir: Path, *args: str, timeout: float, config: tuple[str, ...] = SLURM_CONFIG
    ) -> None:
        self.workdir = workdir
        self.log_path = workdir.parent / f"snakemake-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "snakemake", "--profile", "slurm", *config, *SLURM_TEST_SETTINGS, *args],
            cwd=workdir,
            env=slurm_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # A shell without job control starts background commands with SIGINT ignored, and the
            # child would inherit that: give Snakemake the default so the SIGINT below reaches it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.deadline = time.monotonic() + timeout

    def running(self) -> bool:
        if self.process.poll() is not None:
            return False
        if time.monotonic() > self.deadline:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            raise AssertionError(f"snakemake overran its time limit; log:\n{self.output()[-6000:]}")
        return True

    def wait(self) -> int:
        while self.running():
            time.sleep(0.5)
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text()


def running_jobs(rule: str, wildcards: str = "") -> list[str]:
    """Ids of this rule's running jobs; the plugin's job comment is `rule_<rule>_wildcards_<values>`."""
    result = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    prefix = f"rule_{rule}_wildcards_{wildcards}"
    return [
        job_id
        for job_id, comment in (line.split(maxsplit=1) for line in result.stdout.splitlines())
        if comment.startswith(prefix)
    ]


def job_logs(workdir: Path, rule: str, wildcards: str) -> list[Path]:
    """This job's SLURM logs, one per submission, oldest first."""
    logs = (workdir / "logs" / "slurm" / f"rule_{rule}" / wildcards).glob("*.log")
    return sorted(logs, key=lambda log: int(log.stem))

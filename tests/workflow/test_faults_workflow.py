"""Workflow faults of the fault campaign (issue 17), provoked for real with Snakemake on the tiny config.

- Two Snakemake runs at once in one working directory: the second stops with Snakemake's lock message
  before any job and exits non-zero; the first finishes with the outputs of an undisturbed run.
- Snakemake and its running job SIGKILLed together (a lost login session): the lock and Snakemake's
  incomplete marks stay, and none of the killed job's outputs exists (each is renamed into place when
  complete), so none is half-written; after ``--unlock``, ``--rerun-incomplete`` reruns only the killed
  job, which resumes from its checkpoint and ends bit for bit as an undisturbed run.
- A typo or a wrong type in a study file: the run stops while Snakemake parses, naming the file and the key
  path, and no job runs.

Every run here builds one pre-training of the tiny config (its world, shard set and snapshot): one
undisturbed reference run, shared by the module, is what the disturbed runs must equal.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers import cli_env, job_counts, make_workdir, snakemake

pytestmark = pytest.mark.workflow

RUN = "runs/pretrain/depth_supervised-resnet18-synth_driving-64x96-v3-p4-s0"
TARGET = f"{RUN}/metrics.json"
SHARD_SET = "shards/synth_driving/64x96-v3-p4"
# What an undisturbed run and a disturbed one must share byte for byte.
COMPARED = [f"{RUN}/metrics.json", f"{RUN}/curves.csv", f"{RUN}/model.pt", f"{SHARD_SET}/manifest.json"]
PRETRAIN_OUTPUTS = {f"{RUN}/model.pt", f"{RUN}/metrics.json", f"{RUN}/curves.csv"}
STEPS = 16  # the tiny config's 3 steps end within a second of the first checkpoint: too short to kill in
LOCK_MESSAGE = "Error: Directory cannot be locked."  # snakemake.exceptions.LockException (Snakemake 9)


def _workdir(root: Path) -> Path:
    """The tiny workflow with a longer pre-training (checkpoints every 2 steps), without DVC."""
    workdir = make_workdir(root, dvc=False)
    config_path = workdir / "config" / "tiny.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["pretrain"].update(steps=STEPS, eval_every=STEPS, checkpoint_every=2)
    config_path.write_text(yaml.safe_dump(config))
    return workdir


def _start(workdir: Path, *args: str) -> tuple[subprocess.Popen[str], Path]:
    """``snakemake`` as tests.helpers.snakemake runs it, in the background, as the leader of a process
    group of its own (its jobs join it: Snakemake starts them without a new session), output to a file."""
    output = workdir / "snakemake.out"
    process = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/tiny.yaml", *args],
        cwd=workdir,
        env=cli_env(),
        stdout=output.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return process, output


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], output: Path, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"snakemake exited ({process.returncode}) before {what}:\n{output.read_text()}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after 300 s:\n{output.read_text()}")
        time.sleep(0.05)


def _live_members(group: int) -> list[int]:
    """The processes of process group ``group`` that still run (zombies do not: they are dead)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _locks(workdir: Path) -> list[Path]:
    folder = workdir / ".snakemake" / "locks"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _marked_incomplete(workdir: Path) -> set[str]:
    """The outputs Snakemake marked as being written: .snakemake/incomplete/ names them in base64."""
    folder = workdir / ".snakemake" / "incomplete"
    return {base64.b64decode(p.name).decode() for p in folder.iterdir()} if folder.is_dir() else set()


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def _verify(workdir: Path) -> None:
    verify = subprocess.run(
        [Path(sys.executable).parent / "geosem", "verify", SHARD_SET],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert verify.returncode == 0 and "16 samples match" in verify.stdout, verify.stdout + verify.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The compared files of an undisturbed run."""
    workdir = _workdir(tmp_path_factory.mktemp("reference"))
    snakemake(workdir, "-p", TARGET)
    return {name: (workdir / name).read_bytes() for name in COMPARED}


def _assert_like_reference(workdir: Path, reference: dict[str, bytes]) -> None:
    differing = [name for name in COMPARED if (workdir / name).read_bytes() != reference[name]]
    assert not differing, f"differ from the undisturbed run: {differing}"
    _verify(workdir)


def test_a_second_snakemake_in_the_same_directory_is_refused_and_the_first_finishes(
    reference: dict[str, bytes], tmp_path: Path
) -> None:
    workdir = _workdir(tmp_path)
    first, first_output = _start(workdir, "-p", TARGET)
    try:
        _wait_for(lambda: bool(_locks(workdir)), first, first_output, "Snakemake's locks")
        # Hold the first run (Snakemake and its job) still while the second starts, so that the second
        # meets it running however slow the machine: the lock, not the timing, must stop the second.
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            second = snakemake(workdir, "-p", TARGET, check=False)
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(timeout=600) == 0, first_output.read_text()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    output = _output(second)
    assert second.returncode != 0
    assert f"LockException:\n{LOCK_MESSAGE}" in output and str(workdir) in output, output
    assert "Select jobs to execute" not in output  # the second started nothing
    # The first run's outputs are an undisturbed run's, and it released its locks.
    _assert_like_reference(workdir, reference)
    assert not _locks(workdir)
    assert "Nothing to be done" in _output(snakemake(workdir, "-n", TARGET))


def test_a_sigkilled_run_is_unlocked_rerun_incomplete_and_equals_an_undisturbed_run(
    reference: dict[str, bytes], tmp_path: Path
) -> None:
    workdir = _workdir(tmp_path)
    run, output = _start(workdir, "-p", TARGET)
    try:
        # Kill once the pre-training has saved a checkpoint: mid-job, with training left to do.
        _wait_for(lambda: (workdir / RUN / "checkpoint.pt").exists(), run, output, "a checkpoint")
    finally:
        with contextlib.suppress(ProcessLookupError):  # (gone already if it failed early)
            os.killpg(run.pid, signal.SIGKILL)  # the whole session: Snakemake and its job, as a lost login
        run.wait()
    deadline = time.monotonic() + 30
    while _live_members(run.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _live_members(run.pid), "a job of the killed run still runs"
    assert not re.search(r"Finished jobid: \d+ \(Rule: pretrain\)", output.read_text())  # killed mid-job

    # What the kill leaves: Snakemake's lock, its marks on the killed job's outputs, none of those
    # outputs (each is written to a temporary file and renamed), and the job's checkpoint.
    assert _locks(workdir)
    assert _marked_incomplete(workdir) == PRETRAIN_OUTPUTS
    assert not [name for name in PRETRAIN_OUTPUTS if (workdir / name).exists()]
    assert (workdir / RUN / "checkpoint.pt").is_file()
    _verify(workdir)  # the shard set, finished before the kill, is whole

    # The user's first rerun meets the stale lock; --unlock removes it and nothing else.
    locked = snakemake(workdir, "-p", "--rerun-incomplete", TARGET, check=False)
    assert locked.returncode != 0 and LOCK_MESSAGE in _output(locked), _output(locked)
    assert "--unlock" in _output(locked)
    snakemake(workdir, "--unlock", TARGET)
    assert not _locks(workdir) and _marked_incomplete(workdir) == PRETRAIN_OUTPUTS
    # Only the killed job is planned again (the world and the shard set it read are complete), for outputs
    # that never reached their names.
    plan = snakemake(workdir, "-n", "--rerun-incomplete", TARGET)
    assert job_counts(_output(plan)) == {"pretrain": 1}, _output(plan)
    assert f"reason: Missing output files: {RUN}/metrics.json" in _output(plan)

    snakemake(workdir, "-p", "--rerun-incomplete", TARGET)
    log = (workdir / "logs" / "pretrain" / f"{Path(RUN).name}.log").read_text()
    assert f"resuming {RUN} from step" in log, log  # the killed job's steps were not lost
    assert not _marked_incomplete(workdir) and not (workdir / RUN / "checkpoint.pt").exists()
    _assert_like_reference(workdir, reference)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        # A typo: unknown keys are named one by one, with the closest known key where there is one.
        (
            {"fintune_steps": 10, "sed": [3]},
            ["fintune_steps: unknown key (known here: ", "sed: unknown key (did you mean 'seeds'?"],
        ),
        ({"seeds": "three"}, ["seeds: 'three' is not of type 'array'"]),
        ({"resolutions": [{"pretrain": [64, 96], "finetune": "big"}]}, ["resolutions[0].finetune: 'big'"]),
    ],
    ids=["typo", "wrong-type", "nested"],
)
def test_a_bad_study_file_is_named_with_its_key_before_any_job(
    tmp_path: Path, edit: dict[str, object], named: list[str]
) -> None:
    workdir = make_workdir(tmp_path, dvc=False)
    study = workdir / "config" / "studies" / "tiny.yaml"
    study.write_text(yaml.safe_dump({**yaml.safe_load(study.read_text()), **edit}))
    for args in (["-n"], ["-p"]):  # planning, and a real run
        result = snakemake(workdir, *args, check=False)
        output = _output(result)
        assert result.returncode != 0
        assert "StudyFileError" in output and "study file config/studies/tiny.yaml: " in output, output
        for problem in named:
            assert f"  config/studies/tiny.yaml: {problem}" in output, output
        assert "Building DAG of jobs" not in output  # stopped while parsing: no job could start
    assert not [name for name in ("raw", "shards", "runs", "logs") if (workdir / name).exists()]

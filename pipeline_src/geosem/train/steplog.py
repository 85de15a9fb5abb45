"""Per-step training logs through dvclive, written by the shared loop for every task.

Each run gets ``<run_dir>/dvclive/``: ``plots/metrics/<name>.tsv`` (one row per optimiser step for the
training loss, the learning rate and a task's own loss terms; one row per evaluation for the test
scores) and ``metrics.json`` (the latest values). ``dvc plots show runs/finetune/<id>/dvclive/plots`` draws
them, and since the loop writes them, a new task gets curves without code of its own.

dvclive's experiment tracking is switched off (``save_dvc_exp=False``, no dvc.yaml): Snakemake, not DVC,
runs the jobs, and many jobs run at once in one repository. Resume: rows after the checkpoint's step were
written by the killed attempt and are replayed by the resumed one, so they are cut first; the log then
holds each step once, as an uninterrupted run's does.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

DVCLIVE_DIR = "dvclive"


class StepLog:
    """Step-indexed scalars of one run; a no-op on ranks other than 0 of a data-parallel job."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool = True) -> None:
        self.enabled = enabled
        self.dir = Path(run_dir) / DVCLIVE_DIR
        self._live: Any = None
        if not enabled:
            return
        # dvclive logs "Logging to experiment ..." chatter at INFO; the run's own log is what matters.
        logging.getLogger("dvclive").setLevel(logging.WARNING)
        from dvclive import Live  # imports dvc (~1 s): only in training processes

        class RunLive(Live):
            # dvclive looks for the enclosing DVC repository to tie the log to a git commit, and when it
            # finds none it runs `dvc init` there, and it fails outright in a repository with no commit
            # yet. A run's log is a plain file of the run, so none of that applies.
            def _init_dvc(self) -> None:
                return None

        resume = start_step > 0 and self.dir.is_dir()
        if resume:
            truncate_after(self.dir, start_step)
        self._live = RunLive(dir=str(self.dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)

    def log(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        """Log the numeric ``values`` at ``step`` (lists and strings are left to metrics.json)."""
        if self._live is None:
            return
        self._live.step = step
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            self._live.log_metric(f"{prefix}{name}", float(value))

    def summary(self) -> None:
        if self._live is not None:
            self._live.make_summary()

    def close(self) -> None:
        if self._live is not None:
            self._live.make_summary()
            self._live.end()
            self._live = None


def truncate_after(log_dir: Path, step: int) -> None:
    """Drop the rows of every dvclive TSV under ``log_dir`` whose step is greater than ``step``."""
    for path in Path(log_dir).rglob("*.tsv"):
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        kept = [row for row in body if row and int(row[header.index("step")]) <= step]
        if len(kept) != len(body):
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
                writer.writerows([header, *kept])


def read_step_log(run_dir: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) rows of one logged scalar, e.g. ``train/loss``."""
    path = Path(run_dir) / DVCLIVE_DIR / "plots" / "metrics" / f"{name}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no step log named {name!r}")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    column = name.rsplit("/", 1)[-1]
    return [(int(row["step"]), float(row[column])) for row in rows]

"""The code stays ruff-clean and the workflow `snakemake --lint`-clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "pipeline_src", "tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_is_clean() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_library_never_imports_snakemake() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "pipeline_src").rglob("*.py")
        if "import snakemake" in path.read_text() or "from snakemake" in path.read_text()
    ]
    assert offenders == []

"""The code stays lint- and format-clean (the pre-commit hooks), the workflow `snakemake --lint`-clean,
and the repository self-contained."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, cli_env

pytestmark = pytest.mark.slow


def test_pre_commit_hooks_pass_on_every_file() -> None:
    """ruff, ruff-format and snakefmt, exactly as `pre-commit run --all-files` runs them before a commit."""
    result = subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "--all-files", "--show-diff-on-failure"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, env=cli_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_library_never_imports_snakemake() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "pipeline_src").rglob("*.py")
        if "import snakemake" in path.read_text() or "from snakemake" in path.read_text()
    ]
    assert offenders == []


def test_nothing_points_outside_the_repository() -> None:
    """Facts from elsewhere are written into docs/; no file refers to a folder beside the checkout."""
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = [
        name
        for name in tracked
        if (REPO / name).is_file()
        and name != "tests/test_lint.py"
        and any(marker in (REPO / name).read_text(errors="ignore") for marker in ("../shared", "reference/"))
    ]
    assert offenders == []


def test_readme_first_screen_is_short_and_says_how_to_add_things() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    assert any(line.startswith("## Adding a dataset, a task or a study") for line in readme[:150])
    assert len(readme) <= 150 or any(line.startswith("## Documentation") for line in readme[:150])

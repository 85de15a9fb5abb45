"""Fixtures of the workflow tests that more than one module uses. Helpers live in tests/helpers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import SLURM_PARTITION, SlurmCluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster (tools/slurm/up), started once for every SLURM test of the
    session; its daemons are stopped by PID afterwards (tools/slurm/down), even on failure. When SLURM
    cannot be installed or started the tests that use it fail with the reason, never skip."""
    cluster = SlurmCluster(SLURM_PARTITION, tmp_path_factory.mktemp("slurm-state"))
    try:
        up = cluster.up()
        if up.returncode != 0:
            pytest.fail(f"could not start a SLURM cluster for the SLURM tests:\n{up.stdout}{up.stderr}")
        yield cluster
    finally:
        cluster.down()

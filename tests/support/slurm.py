"""A one-node Slurm cluster for a test module: skipped where Slurm is not installed, a failure in CI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.tools.slurm_cluster import SlurmCluster, missing_binaries


def running_cluster(state_dir: Path) -> Iterator[SlurmCluster]:
    """Body of a module-scoped fixture: start the cluster under state_dir, yield it, stop it."""
    missing = missing_binaries()
    if missing:
        reason = f"Slurm not installed ({', '.join(missing)} missing): run deploy/slurm/cluster.sh install"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (.ci/run should have)")
        pytest.skip(reason)
    with SlurmCluster(state_dir) as cluster:
        yield cluster

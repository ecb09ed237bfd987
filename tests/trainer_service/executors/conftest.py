"""One real one-node Slurm cluster (deploy/slurm/cluster.sh) for all the slurm executor tests of a run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.tools.slurm_cluster import SlurmCluster
from tests.support.slurm import running_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    yield from running_cluster(tmp_path_factory.mktemp("slurm"))


@pytest.fixture(scope="session")
def two_node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """Two slurmd daemons on this host (multiple-slurmd): nodes <hostname>-1 and -2, both at 127.0.0.1."""
    yield from running_cluster(tmp_path_factory.mktemp("slurm2"), nodes=2)

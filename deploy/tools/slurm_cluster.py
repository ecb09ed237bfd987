"""A Slurm cluster on loopback (deploy/slurm/cluster.sh: one node, or several slurmd on this host) for tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from deploy.tools.imagerun import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "cluster.sh"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sacct")


def missing_binaries() -> list[str]:
    """Slurm and munge programs this machine lacks (empty when `cluster.sh install` has run)."""
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def free_port_run(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive free ports on loopback (one per slurmd)."""
    for _ in range(attempts):
        first = free_port()
        if first + count <= 65535 and all(_free(first + i) for i in range(1, count)):
            return first
    raise RuntimeError(f"found no {count} consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SlurmCluster:
    """Starts munged, slurmctld and `nodes` slurmd with state under `state_dir` on free ports; `env` points
    clients at it.

    Free ports (not Slurm's 6817/6818) let it run beside another test run's cluster or a system Slurm.
    """

    def __init__(self, state_dir: Path, nodes: int = 1) -> None:
        self.state_dir = state_dir
        self.conf = state_dir / "slurm.conf"
        self._script_env = {**os.environ, "CHARGPT_SLURM_DIR": str(state_dir),
                            "CHARGPT_SLURM_CTLD_PORT": str(free_port()),
                            "CHARGPT_SLURM_SLURMD_PORT": str(free_port_run(nodes)),
                            "CHARGPT_SLURM_NODES": str(nodes)}

    @property
    def env(self) -> dict[str, str]:
        """The environment for sbatch/srun/squeue/scancel/sacct (and for jobs' own srun calls)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _script(self, command: str) -> str:
        result = subprocess.run(["bash", str(SCRIPT), command], env=self._script_env, capture_output=True,
                                text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{SCRIPT.name} {command} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")

    def run(self, *command: str, timeout: float = 60) -> str:
        """A Slurm client command against this cluster; its stdout, or an error with its stderr."""
        result = subprocess.run(command, env=self.env, cwd=self.state_dir, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

"""The slurm executor's batch script and its reading of Slurm states, without a cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from chargpt.core.config import ModelConfig
from trainer_service.executors.slurm import batch_script, parse_state, requeue_cause, to_status
from trainer_service.settings import TrainerSettings
from trainer_service.training.api import TrainingPlan

JOB_DIR = Path("/shared/jobs/abc")


def plan(device: str = "cuda", num_nodes: int = 4, num_processes: int = 8) -> TrainingPlan:
    model = ModelConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return TrainingPlan(job_id="abc", model=model, max_steps=10, batch_size=num_nodes * num_processes,
                        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=0, weight_decay=0.1, grad_clip=1.0,
                        eval_interval=5, sample_interval=0, sample_length=10, seed=1, checkpoint_interval=5,
                        device=device, num_processes=num_processes, num_nodes=num_nodes)


def test_the_batch_script_asks_for_the_nodes_gpus_and_options_and_runs_torchrun_under_srun() -> None:
    settings = TrainerSettings(executor="slurm", slurm_partition="gpu", slurm_account="team",
                               slurm_time_limit="1-00:00:00", cluster_python="/opt/venv/bin/python")
    script = batch_script(plan(), JOB_DIR, settings)
    for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--account=team",
                      "--time=1-00:00:00", "--requeue", f"--output={JOB_DIR}/worker.log", "--open-mode=append"):
        assert f"#SBATCH {directive}\n" in script, directive
    launch = script.strip().splitlines()[-1]
    assert launch.startswith("srun --kill-on-bad-exit=1 /opt/venv/bin/python -m torch.distributed.run --nnodes=4 "
                             "--nproc_per_node=8 --rdzv_backend=c10d "
                             "--rdzv_endpoint=\"${head_addr:-$head_node}:$port\"")
    assert 'head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in script
    assert 'head_addr="$(sinfo -h -N -n "$head_node" -o %o' in script
    assert f"--events {JOB_DIR}/events.jsonl" in launch and "--db" not in launch
    assert subprocess.run(["bash", "-n"], input=script, text=True, check=False).returncode == 0


def test_cpu_jobs_ask_for_no_gpus() -> None:
    script = batch_script(plan("cpu", 1, 2), JOB_DIR, TrainerSettings(executor="slurm"))
    assert "--gpus-per-node" not in script and "--partition" not in script and "#SBATCH --nodes=1\n" in script


@pytest.mark.parametrize(("line", "phase", "code", "cancelled", "requeue", "run", "settled"), [
    ("PENDING|Resources||0", "pending", 0, False, False, 0, True),
    ("REQUEUED|BeginTime||1", "pending", 0, False, False, 1, True),
    ("RUNNING|None|node[1-2]|0", "running", 0, False, False, 0, True),
    ("RUNNING|None|node1|2", "running", 0, False, False, 2, True),
    ("COMPLETING|None|node1|1", "running", 0, False, False, 1, False),  # maybe the run a requeue is ending
    ("COMPLETED|None|node1|0", "ended", 0, False, False, 0, True),
    ("FAILED|NonZeroExitCode|node1|0", "ended", 1, False, False, 0, True),
    ("TIMEOUT|TimeLimit|node1|0", "ended", 1, False, False, 0, True),
    ("NODE_FAIL|NodeDown|node1|0", "ended", 1, False, False, 0, True),
    ("OUT_OF_MEMORY|OutOfMemory|node1|0", "ended", 1, False, False, 0, True),
    ("CANCELLED by 1000|0:15", "ended", 1, True, False, 0, True),  # sacct: no restart count
    ("PREEMPTED|None|node1|0", "ended", 1, False, True, 0, True),
])
def test_slurm_states_map_to_job_phases(line: str, phase: str, code: int, cancelled: bool, requeue: bool, run: int,
                                        settled: bool) -> None:
    status = to_status(*parse_state(line))
    assert (status.phase, status.code, status.cancelled, status.requeue) == (phase, code, cancelled, requeue)
    assert (status.state, status.run, status.settled) == (line.split("|")[0].split(" ")[0], run, settled)


@pytest.mark.parametrize(("history", "cause"), [
    (["PREEMPTED|0:0"], "preempted"),  # job completion log: the preempted run
    (["PENDING|0:0"], "requeued"),  # job completion log: scontrol requeue records the run as PENDING
    (["PREEMPTED|0:0", "COMPLETED|0:0", "REQUEUED|0:0", "PENDING|0:0"], "requeued"),  # sacct -D: the last one
    (["PREEMPTED|0:0", "PENDING|0:0"], "preempted"),
    ([], "requeued"),
])
def test_the_requeue_cause_is_the_last_run_slurm_recorded_as_ended(history: list[str], cause: str) -> None:
    assert requeue_cause([parse_state(line)[0] for line in history]) == cause

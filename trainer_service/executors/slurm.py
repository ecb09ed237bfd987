"""The slurm executor: each job is an sbatch script that runs torchrun on every node through srun."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

from trainer_service.executors.base import RunningJob
from trainer_service.executors.cluster import ClusterExecutor, ClusterStatus
from trainer_service.executors.local import worker_env
from trainer_service.executors.placement import DEFAULT_PLACEMENT, Placement
from trainer_service.jobs.layout import EVENTS_FILE, LOG_FILE, OUTCOME_FILE, RUNS_FILE, SLURM_SCRIPT_FILE
from trainer_service.settings import TrainerSettings
from trainer_service.training.api import TrainingPlan

COMMAND_TIMEOUT = 60.0
# Slurm job states (squeue %T, sacct State) by what they mean for the job.
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED", "RESIZING"})


def batch_script(plan: TrainingPlan, job_dir: Path, settings: TrainerSettings,
                 placement: Placement = DEFAULT_PLACEMENT) -> str:
    """The sbatch script: one srun task per node, each a torchrun agent; rendezvous on the first node."""
    q = shlex.quote
    directives = [f"--job-name=chargpt-{plan.job_id}", f"--nodes={plan.num_nodes}", "--ntasks-per-node=1",
                  f"--cpus-per-task={plan.num_processes}", f"--output={job_dir / LOG_FILE}", "--open-mode=append",
                  f"--chdir={job_dir}", "--requeue"]
    gpus = settings.slurm_gpus_per_node
    if gpus is None and plan.device == "cuda":
        gpus = plan.num_processes
    if gpus:
        directives.append(f"--gpus-per-node={gpus}")
    nice = placement.slurm_nice(settings.slurm_nice_per_priority)
    directives += [f"--comment=chargpt tenant {placement.tenant}", *([f"--nice={nice}"] if nice else [])]
    for option, value in (("partition", settings.slurm_partition), ("account", settings.slurm_account),
                          ("time", settings.slurm_time_limit), ("qos", settings.slurm_qos.get(placement.band))):
        if value:
            directives.append(f"--{option}={value}")
    torchrun = settings.slurm_torchrun or f"{q(settings.cluster_python)} -m torch.distributed.run"
    worker = ["-m", "trainer_service.jobs.worker", "--job-dir", str(job_dir), "--events", str(job_dir / EVENTS_FILE),
              "--engine", settings.engine, "--lock-timeout", str(settings.worker_stop_timeout_seconds + 30),
              "--stop-deadline", str(settings.worker_stop_timeout_seconds + 15)]
    return "\n".join([
        "#!/bin/bash",
        f"# chargpt training job {plan.job_id}, written by the trainer's slurm executor.",
        *(f"#SBATCH {q(d)}" for d in directives),
        "set -euo pipefail",
        "# A requeued run must not find the previous run's outcome (it resumes from the latest checkpoint).",
        f"rm -f {q(str(job_dir / OUTCOME_FILE))}",
        "# Where this run's events begin: the trainer notes a requeue there, even one it never saw pending.",
        f"events_size=$(stat -c %s {q(str(job_dir / EVENTS_FILE))} 2>/dev/null || echo 0)",
        f"echo \"${{SLURM_RESTART_COUNT:-0}} $events_size\" >> {q(str(job_dir / RUNS_FILE))}",
        "# The rendezvous on the first node, at its NodeAddr: the address Slurm itself reaches it on, which is",
        "# its name unless the cluster says otherwise (several slurmd on one host share one address).",
        'head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'head_addr="$(sinfo -h -N -n "$head_node" -o %o 2>/dev/null | head -n 1 || true)"',
        f"port=$(({settings.slurm_rendezvous_port} + SLURM_JOB_ID % 1000))",
        f"{q(settings.slurm_srun)} --kill-on-bad-exit=1 {torchrun} --nnodes={plan.num_nodes} "
        f"--nproc_per_node={plan.num_processes} --rdzv_backend=c10d "
        f"--rdzv_endpoint=\"${{head_addr:-$head_node}}:$port\" --rdzv_id=\"$SLURM_JOB_ID\" "
        f"{' '.join(q(a) for a in worker)}",
        ""])


# squeue's fields, unpadded (size 0) and separated by "|"; the node list is empty while the job is pending.
SQUEUE_FORMAT = "State:0|,Reason:0|,NodeList:0|,RestartCnt:0"


def parse_state(text: str) -> tuple[str, str, str, int]:
    """`STATE|reason|nodes|restarts` (squeue) or `STATE by 1000|exit` (sacct) -> (STATE, reason, nodes, restarts)."""
    fields = [*(text.strip().splitlines() or [""])[-1].split("|"), "", "", ""]
    state = fields[0].split(" ")[0].rstrip("+")
    return state, fields[1], fields[2], int(fields[3]) if fields[3].strip().isdigit() else 0


def to_status(state: str, reason: str, nodes: str, restarts: int = 0) -> ClusterStatus:
    """A Slurm state as a job phase; PREEMPTED is final only when Slurm did not requeue it itself.

    `restarts` is Slurm's RestartCnt. A requeued job counts up at once, while the ending run is still COMPLETING,
    so COMPLETING is not yet the new run (settled=False).
    """
    if state in PENDING:
        return ClusterStatus("pending", state, reason, run=restarts)
    if state in RUNNING:
        return ClusterStatus("running", state, reason, where=nodes, run=restarts, settled=state != "COMPLETING")
    if state == "COMPLETED":
        return ClusterStatus("ended", state, reason)
    return ClusterStatus("ended", state, reason, code=1, cancelled=state == "CANCELLED",
                         requeue=state == "PREEMPTED")


def requeue_cause(states: list[str]) -> str:
    """"preempted" when the last run Slurm recorded as ended was PREEMPTED, else "requeued"."""
    ended = [s for s in states if s not in PENDING and s not in RUNNING]
    return "preempted" if ended and ended[-1] == "PREEMPTED" else "requeued"


class SlurmExecutor(ClusterExecutor):
    """sbatch to submit, squeue (then sacct) to poll, scancel to stop; the Slurm job id is kept in the store."""

    name, cluster = "slurm", "Slurm"

    def _bin(self, name: str) -> str:
        return os.path.join(self.settings.slurm_bin_dir, name) if self.settings.slurm_bin_dir else name

    async def _run(self, *command: str, stdin: str | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            self._bin(command[0]), *command[1:], stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=worker_env(self.settings))
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), COMMAND_TIMEOUT)
        except TimeoutError:
            process.kill()
            raise RuntimeError(f"{command[0]} did not answer in {COMMAND_TIMEOUT:.0f}s") from None
        return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def submit(self, run: RunningJob) -> str:
        script = batch_script(run.plan, run.job_dir, self.settings, run.placement)
        (run.job_dir / SLURM_SCRIPT_FILE).write_text(script, encoding="utf-8")
        extra = shlex.split(self.settings.slurm_extra_options)
        code, out, err = await self._run("sbatch", "--parsable", *extra, str(run.job_dir / SLURM_SCRIPT_FILE))
        if code != 0:
            raise RuntimeError(f"sbatch exited {code}: {err.strip() or out.strip()}")
        return out.strip().split(";")[0]  # "id" or "id;cluster"

    async def status(self, run: RunningJob) -> ClusterStatus | None:
        """squeue while the controller remembers the job (MinJobAge after it ends), then sacct."""
        code, out, _ = await self._run("squeue", "-h", "-t", "all", "-j", run.handle, "-O", SQUEUE_FORMAT)
        if code == 0 and out.strip():
            return to_status(*parse_state(out))
        history = await self._history(run)
        if not history:
            return None
        state, exit_code, _, _ = parse_state(history[-1])
        return to_status(state, f"exit code {exit_code}" if state != "COMPLETED" else "", "")

    async def _history(self, run: RunningJob) -> list[str]:
        """`STATE|exit code` of each run of the job Slurm recorded (a requeued job has one line per run):
        sacct from the accounting database, else the job completion log (jobcomp/filetxt, `sacct -c`)."""
        code, out, _ = await self._run("sacct", "-n", "-P", "-X", "-D", "-j", run.handle, "-o", "State,ExitCode")
        if code != 0:
            code, out, _ = await self._run("sacct", "-c", "-n", "-P", "-j", run.handle, "-o", "State,ExitCode")
        return out.strip().splitlines() if code == 0 else []

    async def requeue_cause(self, run: RunningJob) -> str:
        """How the previous run ended: PREEMPTED (preemption with PreemptMode=REQUEUE) or anything else
        (`scontrol requeue`, a node failure with --requeue): the last end state Slurm recorded for the job."""
        return requeue_cause([parse_state(line)[0] for line in await self._history(run)])

    async def cancel(self, run: RunningJob, force: bool) -> None:
        """SIGTERM to the job's steps (torchrun passes it to the ranks, which checkpoint); scancel when forced."""
        status = await self.status(run)
        if status is None or status.phase == "ended":
            return
        graceful = not force and status.phase == "running"
        command = ["scancel", "--signal=TERM", run.handle] if graceful else ["scancel", run.handle]
        code, _, err = await self._run(*command)
        if code != 0:
            raise RuntimeError(f"scancel exited {code}: {err.strip()}")

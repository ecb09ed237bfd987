"""Trainer settings: flags or CHARGPT_TRAINER_* environment variables."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from chargpt.server.settings import ServerSettings

DEFAULT_ENGINE = "trainer_service.training.loop:run_training"


class TrainerSettings(ServerSettings):
    """chargpt trainer service."""

    model_config = SettingsConfigDict(env_prefix="CHARGPT_TRAINER_")

    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    data_dir: Path = Field(default=Path("./chargpt-data/trainer"),
                           description="corpora, jobs database and checkpoints live here")
    device: str = Field(default="auto", description="default training device: auto, cpu, cuda, cuda:N, mps")
    max_upload_bytes: int = Field(default=100 * 1024 * 1024, ge=1,
                                  description="largest corpus upload in bytes (default 100 MB)")
    max_import_bytes: int = Field(default=4 << 30, ge=1, description="largest model import (ImportModel), all its "
                                  "files together, in bytes (default 4 GiB: a nanoGPT ckpt.pt holds optimizer state)")
    max_jobs_per_device: int = Field(default=1, ge=1, description="training jobs running at once per device")
    max_processes_per_job: int = Field(default=64, ge=1, description="upper bound for resources.num_processes")
    worker_stop_timeout_seconds: float = Field(
        default=60.0, gt=0, description="after SIGTERM, how long a worker may take to checkpoint before SIGKILL")
    event_poll_seconds: float = Field(default=0.25, gt=0,
                                      description="how often worker-written events are picked up")
    builtin_corpora: bool = Field(default=True, description="materialise the built-in corpora at start-up")
    engine: str = Field(default=DEFAULT_ENGINE,
                        description="module:function the worker trains with (tests inject a fake engine)")
    tensorboard: bool = Field(default=True, description="jobs write TensorBoard event files under their job "
                                                        "directory (tensorboard --logdir <data_dir>/jobs)")
    calibration_dir: Path | None = Field(default=None, description="where this host's measured fp32/bf16 "
                                         "timings are cached (precision and size auto); default: DATA_DIR/calibration")
    recalibrate: bool = Field(default=False, description="forget the cached timings at start-up and measure again")
    worker_python: str | None = Field(default=None, description="interpreter for workers; default: this one")
    jobs_dir: Path | None = Field(default=None, description="job directories (plans, event logs, checkpoints); "
                                  "default data_dir/jobs. slurm/kubernetes: storage the nodes mount at this path")
    executor: Literal["local", "slurm", "kubernetes"] = Field(
        default="local", description="where jobs run: this node (local), a Slurm cluster or a Kubernetes cluster")
    max_nodes_per_job: int = Field(default=64, ge=1, description="upper bound for resources.num_nodes "
                                   "(slurm/kubernetes executors; local runs one node)")
    cluster_poll_seconds: float = Field(default=5.0, gt=0,
                                        description="how often the slurm/kubernetes executor asks the cluster")
    cluster_python: str = Field(default="python3", description="interpreter on the compute nodes or in the image "
                                "(slurm/kubernetes executors)")
    # ---- executor=slurm (the job directory under data_dir must be on storage the nodes mount at the same path)
    slurm_partition: str = Field(default="", description="sbatch --partition ('' = the cluster's default)")
    slurm_account: str = Field(default="", description="sbatch --account ('' = the user's default)")
    slurm_time_limit: str = Field(default="", description="sbatch --time, e.g. 1-00:00:00 ('' = the partition's)")
    slurm_gpus_per_node: int | None = Field(default=None, ge=0, description="sbatch --gpus-per-node; default: "
                                            "num_processes for cuda jobs, none otherwise")
    slurm_nice_per_priority: int = Field(default=100, ge=0, description="sbatch --nice per point of a job's "
                                         "priority above 0 (lower-priority jobs yield); 0 = no --nice")
    slurm_qos: dict[Literal["high", "normal", "low"], str] = Field(
        default_factory=dict, description="sbatch --qos by priority band (JSON): high = priority < 0, normal = 0, "
        'low = > 0, e.g. {"high": "urgent"}')
    slurm_extra_options: str = Field(default="", description="more sbatch options, shell-quoted: '--qos=high'")
    slurm_bin_dir: str = Field(default="", description="directory of sbatch/squeue/scancel/sacct ('' = PATH)")
    slurm_srun: str = Field(default="srun", description="srun on the compute nodes")
    slurm_torchrun: str = Field(default="", description="torchrun on the compute nodes; '' = "
                                "`<cluster_python> -m torch.distributed.run`")
    slurm_rendezvous_port: int = Field(default=29500, ge=1024, le=64535,
                                       description="rendezvous port base; a job uses base + slurm job id % 1000")
    # ---- executor=kubernetes
    kubernetes_namespace: str = Field(default="chargpt", description="namespace of the training Jobs")
    kubernetes_image: str = Field(default="chargpt-trainer:gpu", description="image with chargpt installed")
    kubernetes_claim_name: str = Field(default="chargpt-shared", description="ReadWriteMany claim mounted by the "
                                      "trainer and the job pods at the same path (data_dir must be on it)")
    kubernetes_mount_path: str = Field(default="/data", description="where the claim is mounted, trainer and pods")
    kubernetes_node_selector: dict[str, str] = Field(default_factory=dict, description="pod nodeSelector (JSON)")
    kubernetes_tolerations: list[dict[str, Any]] = Field(default_factory=list,
                                                         description="pod tolerations (JSON list)")
    kubernetes_gpu_resource: str = Field(default="nvidia.com/gpu", description="resource one GPU is counted in")
    kubernetes_cpu_request: str = Field(default="2", description="CPU request per pod")
    kubernetes_memory_request: str = Field(default="8Gi", description="memory request per pod")
    kubernetes_memory_limit: str = Field(default="32Gi", description="memory limit per pod")
    kubernetes_queue_name: str = Field(default="", description="Kueue LocalQueue (label "
                                       "kueue.x-k8s.io/queue-name); '' = no Kueue")
    kubernetes_queue_per_tenant: bool = Field(default=False, description="each tenant's jobs go to the LocalQueue "
                                              "<kubernetes_queue_name>-<tenant> (Kueue shares fairly between them)")
    kubernetes_priority_classes: dict[Literal["high", "normal", "low"], str] = Field(
        default_factory=dict, description="pod priorityClassName by priority band (JSON): high = priority < 0, "
        "normal = 0, low = > 0; a TrainJob gets Kueue's priority-class label instead (a WorkloadPriorityClass)")
    kubernetes_service_account: str = Field(default="", description="service account of the job pods")
    kubernetes_workload: Literal["auto", "job", "trainjob"] = Field(
        default="auto", description="what each job becomes: an Indexed Job + headless Service (job), a Kubeflow "
        "Trainer TrainJob (trainjob), or a TrainJob when the cluster serves trainer.kubeflow.org (auto)")
    kubernetes_training_runtime: str = Field(
        default="torch-distributed", min_length=1, max_length=253,
        description="ClusterTrainingRuntime the TrainJobs run on (its replicated job and container named 'node')")

    @field_validator("kubernetes_node_selector", "kubernetes_tolerations", "kubernetes_priority_classes", "slurm_qos",
                     mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        """Flags arrive as text: JSON, as in the environment."""
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("slurm_extra_options")
    @classmethod
    def _shell_words(cls, value: str) -> str:
        shlex.split(value)  # raises ValueError on unbalanced quotes
        return value

    def resolved_calibration_dir(self) -> Path:
        return self.calibration_dir or self.data_dir / "calibration"

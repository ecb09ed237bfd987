"""Inference settings: flags or CHARGPT_INFERENCE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from chargpt.server.settings import ServerSettings
from inference_service.fast_decode import DEFAULT_ATTENTION

INT32_MAX = 2**31 - 1  # GetModel reports batch sizes as int32


class InferenceSettings(ServerSettings):
    """chargpt inference service."""

    model_config = SettingsConfigDict(env_prefix="CHARGPT_INFERENCE_")

    port: int = Field(default=50052, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    http_port: int | None = Field(default=None, ge=0, le=65535, description="OpenAI-compatible HTTP API port "
                                  "(same models, limits, auth and TLS as gRPC); unset disables it; 0 picks one")
    http_host: str | None = Field(default=None, description="interface for the HTTP API; default: host")
    models_dir: Path = Field(default=Path("./chargpt-data/models"),
                             description="root of loadable checkpoint directories")
    trainer_address: str | None = Field(default=None,
                                        description="trainer host:port for loading a job's checkpoint")
    trainer_auth_token: str | None = Field(default=None, description="bearer token for the trainer, if it needs one")
    trainer_tls_ca_file: Path | None = Field(default=None,
                                             description="talk TLS to the trainer, verifying it with these roots")
    trainer_tls_cert_file: Path | None = Field(default=None, description="client certificate for a mutual-TLS trainer")
    trainer_tls_key_file: Path | None = Field(default=None, description="client key for a mutual-TLS trainer")
    device: str = Field(default="auto", description="default device for models: auto, cpu, cuda, cuda:N, mps")
    dtype: str = Field(default="auto", description="default compute dtype: auto, float32, bfloat16, float16")
    preload: str = Field(default="", description="models to load at start-up, comma-separated: name=path "
                         "or name=trainer:JOB[/best|/latest]")
    max_models: int = Field(default=8, ge=1, description="models held at once")
    max_new_tokens_limit: int = Field(default=4096, ge=1, description="largest max_new_tokens accepted")
    max_batch_size: int | None = Field(default=None, ge=1, description="sequences decoded together per model; "
                                       "default: as many as the KV-cache budget holds, at most 256")
    max_kv_cache_bytes: int | None = Field(default=None, ge=1 << 20, description="KV cache memory per model; "
                                           "default: kv_cache_memory_fraction of the memory available at load")
    kv_cache_memory_fraction: float = Field(default=0.3, gt=0.0, le=0.9, description="share of the memory "
                                            "available when a model loads (host RAM within the cgroup limit, or "
                                            "free GPU memory) that its KV cache may take")
    kv_cache_dtype: str = Field(default="auto", pattern="^(auto|float32|bfloat16|float16)$",
                                description="KV cache dtype: auto (the model's) or narrower to speed up big batches")
    decode_attention: Literal["sdpa", "matmul"] = Field(default=DEFAULT_ATTENTION, description="decode "
                                                       "attention kernel: torch's SDPA or the written-out matmul "
                                                       "path (bench/decode_attention.py compares them)")
    decode_runner: Literal["auto", "torch", "ggml"] = Field(default="auto", description="what turns decode "
                                                              "batches into logits: auto (small batches on llama."
                                                              "cpp's ggml up to the size where the calibration "
                                                              "measured it faster, larger ones on torch), torch, "
                                                              "or ggml for every batch; ggml's numbers differ from "
                                                              "torch's (tanh GELU) and need llama-cpp-python")
    window_slide: int = Field(default=0, ge=0, description="characters dropped when a sequence fills the context "
                              "window; 0: block_size/4; 1: the notebook's exact crop-every-step (slowest)")
    unload_wait_seconds: float = Field(default=5.0, ge=0.0, description="how long UnloadModel waits for in-flight "
                                       "requests before it returns (never past the caller's deadline); requests "
                                       "still running then finish, and the model is freed after the last")
    max_queue: int = Field(default=256, ge=0, description="requests waiting for a batch slot per model")
    stream_interval_ms: float = Field(default=0.0, ge=0.0, le=1000.0, description="least time between two stream "
                                      "messages of a request after its first (0: every decode step); its end is "
                                      "sent at once. Fewer messages leave more CPU to decoding")
    max_score_chars: int = Field(default=1_000_000, ge=2, description="longest text Score accepts")
    score_batch_tokens: int = Field(default=2048, ge=1, description="tokens per Score forward pass (whole "
                                    "context windows, at least one); larger passes run out of cache")
    keep_freed_memory: bool = Field(default=True, description="keep freed tensor memory in the process for reuse "
                                    "(glibc); faster forward passes, but memory stays at its peak")
    max_attention_bytes: int = Field(default=64 * 1024 * 1024, ge=1024,
                                     description="largest GetAttention tensor (also capped by max_message_bytes)")
    torch_threads: int | None = Field(default=None, ge=1, description="torch threads; default: the cores, at most 8")
    parallel_decode_from: int | None = Field(default=None, ge=1, le=INT32_MAX, description="decode batches at least "
                                             "this big use every torch thread, smaller ones one (less fork/join "
                                             "overhead); default: measured per host and model on CPU, else 24")
    split_decode_from: int | None = Field(default=None, ge=0, le=INT32_MAX, description="decode batches at least "
                                          "this big run as one row group per torch thread, each on one thread, at "
                                          "once; 0: never; default: measured per host and model on CPU, else never")
    calibration_dir: Path = Field(default=Path("./chargpt-data/calibration"), description="where this host's "
                                  "measured decode timings are cached (dtype auto and the thread policy)")
    recalibrate: bool = Field(default=False, description="forget the cached decode timings at start-up and "
                              "measure again as each model loads")
    download_chunk_bytes: int = Field(default=1 << 20, ge=1024, le=4 << 20,
                                      description="chunk size asked of the trainer's DownloadCheckpoint")

    def resolved_calibration_dir(self) -> Path:
        return self.calibration_dir

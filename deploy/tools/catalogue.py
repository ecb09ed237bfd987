"""The metric families the services expose, as dashboards and alerts rely on them (documented in deploy/README.md)."""

from __future__ import annotations

TRAINER = {
    "chargpt_trainer_jobs": "gauge",
    "chargpt_trainer_steps_total": "counter",
    "chargpt_trainer_tokens_total": "counter",
    "chargpt_trainer_train_loss": "gauge",
    "chargpt_trainer_val_loss": "gauge",
    "chargpt_trainer_tokens_per_second": "gauge",
    "chargpt_trainer_checkpoint_write_seconds": "histogram",
    "chargpt_trainer_corpus_bytes": "gauge",
    "chargpt_trainer_jobs_finished_total": "counter",
    "chargpt_trainer_jobs_by_executor": "gauge",
    "chargpt_trainer_cluster_queue_wait_seconds": "histogram",
    "chargpt_trainer_rpcs_total": "counter",
}

INFERENCE = {
    "chargpt_inference_time_to_first_token_seconds": "histogram",
    "chargpt_inference_inter_token_latency_seconds": "histogram",
    "chargpt_inference_request_queue_time_seconds": "histogram",
    "chargpt_inference_e2e_request_latency_seconds": "histogram",
    "chargpt_inference_batch_size": "histogram",
    "chargpt_inference_model_load_seconds": "histogram",
    "chargpt_inference_prompt_tokens_total": "counter",
    "chargpt_inference_generation_tokens_total": "counter",
    "chargpt_inference_request_success_total": "counter",
    "chargpt_inference_request_failure_total": "counter",
    "chargpt_inference_score_requests_total": "counter",
    "chargpt_inference_attention_requests_total": "counter",
    "chargpt_inference_requests_running": "gauge",
    "chargpt_inference_requests_waiting": "gauge",
    "chargpt_inference_models_loaded": "gauge",
    "chargpt_inference_rpcs_total": "counter",
    "chargpt_inference_http_requests_total": "counter",
}

ALL = {**TRAINER, **INFERENCE}


def exposition_families(text: str) -> dict[str, str]:
    """{family: type} from `# TYPE` lines of a /metrics page (prometheus_client names counters without _total)."""
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name + "_total" if kind == "counter" and not name.endswith("_total") else name] = kind
    return families

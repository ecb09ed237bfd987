"""Writes deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/alerts.yml (one source for the alert rules).

    python -m deploy.tools.prometheusrule   # after editing alerts.yml; tests fail while the two differ
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[1]
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
TARGET = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"
HEADER = ("# GENERATED from deploy/prometheus/alerts.yml by `python -m deploy.tools.prometheusrule`; do not edit.\n"
          "# prometheus-operator loads these alert rules; your Prometheus' ruleSelector may require an extra label.\n")


class _Literal(str):
    """Multi-line PromQL stays a readable block scalar."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


def prometheus_rule() -> dict[str, Any]:
    groups = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
    for group in groups:
        for rule in group["rules"]:
            if "\n" in rule["expr"]:
                rule["expr"] = _Literal(rule["expr"])
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "chargpt", "labels": {"app.kubernetes.io/part-of": "chargpt"}},
            "spec": {"groups": groups}}


class _Dumper(yaml.SafeDumper):
    """SafeDumper plus block scalars for multi-line PromQL (a subclass, so yaml.SafeDumper stays untouched)."""


_Dumper.add_representer(_Literal, _literal)


def render() -> str:
    return HEADER + str(yaml.dump(prometheus_rule(), Dumper=_Dumper, sort_keys=False, width=120))


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")

"""Reading the Grafana dashboard: its PromQL, with Grafana's variables replaced so Prometheus can run it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# What Grafana substitutes before sending a query; any value of the right kind keeps the PromQL valid.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$model": ".*", "$job_id": ".*"}
METRIC_NAME = re.compile(r"\b(chargpt_[a-z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every target of every panel."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = str(target["expr"])
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            yield str(panel.get("title", "")), expr


def metric_names(expr: str) -> set[str]:
    """chargpt metric families an expression reads (histogram series suffixes stripped)."""
    names = set()
    for name in METRIC_NAME.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


def promql_as_rules(dashboard: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus rule file with one recording rule per query, so `promtool check rules` parses them all."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries(dashboard))]
    return {"groups": [{"name": "dashboard", "rules": rules}]}

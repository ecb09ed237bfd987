"""A pytest plugin: every skipped test that is not a GPU test is listed at the end, and in CI (CI=true) fails the run.

A skip that hides a missing install (Slurm, Prometheus, a Python package) would otherwise let the suite pass without
running what it skipped; GPU tests are the one kind CI may skip, since CI never has a GPU.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


class SkipPolicy:
    """Collects the non-GPU skips of one run and reports them (failing the run in CI)."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A skip from a marker, a fixture or the test body, unless the test carries the gpu marker."""
        if report.skipped and "gpu" not in report.keywords and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.skipped:
            verdict = "fails the run in CI" if in_ci() else "would fail the run in CI (CI=true)"
            terminalreporter.section(f"{len(self.skipped)} non-GPU test(s) skipped: this {verdict}", red=True)
            for nodeid, reason in self.skipped:
                terminalreporter.write_line(f"{nodeid}: {reason}")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if in_ci() and self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(), "chargpt-skip-policy")

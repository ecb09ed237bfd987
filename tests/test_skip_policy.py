"""The suite's skip policy: a non-GPU skip is reported, and fails the run in CI; a GPU test's skip never does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = '''
import pytest

@pytest.mark.gpu
def test_on_a_gpu():
    pytest.skip("needs a CUDA device")

def test_passes():
    pass
'''
MISSING_TOOL = '''
def test_needs_a_tool():
    import pytest
    pytest.skip("prometheus binary not installed")
'''


def run_pytest(directory: Path, body: str, ci: bool) -> subprocess.CompletedProcess[str]:
    (directory / "test_sample.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "true" if ci else ""}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.skip_policy", "-p", "no:cacheprovider",
               "--strict-markers", "-o", "markers=gpu: needs a GPU", str(directory)]
    return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("ci", [True, False])
def test_a_gpu_tests_skip_passes_the_run(tmp_path: Path, ci: bool) -> None:
    result = run_pytest(tmp_path, SAMPLE, ci)
    assert result.returncode == 0, result.stdout
    assert "non-GPU" not in result.stdout


def test_a_non_gpu_skip_fails_the_run_in_ci_naming_the_test(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SAMPLE + MISSING_TOOL, ci=True)
    assert result.returncode == 1, result.stdout
    assert "1 non-GPU test(s) skipped: this fails the run in CI" in result.stdout
    assert "test_sample.py::test_needs_a_tool: prometheus binary not installed" in result.stdout


def test_outside_ci_a_non_gpu_skip_is_reported_but_passes(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, SAMPLE + MISSING_TOOL, ci=False)
    assert result.returncode == 0, result.stdout
    assert "would fail the run in CI" in result.stdout

"""The tenants file: defaults plus overrides, validated with the bad key named, re-read when it changes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chargpt.errors import QuotaExceededError, ResourceExhaustedError
from chargpt.server.tenancy.policy import TenantLimits, TenantPolicy, read_tenants_file

TENANTS = """
[defaults]
running_jobs = 1
queued_jobs = 10
generated_chars_per_minute = 6000

[tenants.acme]
running_jobs = 4
concurrent_streams = 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path: Path) -> None:
    policy = TenantPolicy(_write(tmp_path, TENANTS))
    acme, other = policy.limits("acme"), policy.limits("globex")
    assert (acme.running_jobs, acme.queued_jobs, acme.concurrent_streams) == (4, 10, 2)
    assert acme.generated_chars_per_minute == 6000  # not overridden: the default applies
    assert (other.running_jobs, other.queued_jobs, other.concurrent_streams) == (1, 10, None)
    assert other.corpus_bytes is None and other.loaded_models is None  # unset: unlimited


def test_overrides_are_converted_like_the_defaults(tmp_path: Path) -> None:
    config = read_tenants_file(_write(tmp_path, '[defaults]\nrunning_jobs = "2"\n[tenants.acme]\nrunning_jobs = "4"\n'
                                                'training_seconds_per_day = 60\n'))
    acme = config.limits("acme")
    assert acme.running_jobs == 4 and config.limits("globex").running_jobs == 2
    assert isinstance(acme.training_seconds_per_day, float)
    with pytest.raises(QuotaExceededError):
        acme.check("acme", "running_jobs", used=4)


def test_no_tenants_file_limits_nothing() -> None:
    limits = TenantPolicy(None).limits("anyone")
    assert limits == TenantLimits()
    assert all(value is None for value in limits.model_dump().values())
    limits.check("anyone", "queued_jobs", used=10**9)  # never raises


@pytest.mark.parametrize(("text", "named"), [
    ("[defaults]\nrunning_job = 1\n", "running_job"),
    ("[defaults]\nqueued_jobs = -1\n", "queued_jobs"),
    ("[tenants.acme]\nloaded_model = 2\n", "loaded_model"),
    ("[tenants.acme]\ncorpus_bytes = 'lots'\n", "corpus_bytes"),
    ("[tenants.Not_Valid]\nrunning_jobs = 1\n", "tenant"),
    ("[limits]\nrunning_jobs = 1\n", "limits"),
    ("[defaults\n", "tenants.toml"),
])
def test_bad_files_name_the_bad_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named) as err:
        read_tenants_file(_write(tmp_path, text))
    assert str(tmp_path / "tenants.toml") in str(err.value)


def test_check_raises_a_quota_error_naming_the_quota() -> None:
    limits = TenantLimits(queued_jobs=2, training_seconds_per_day=3600)
    limits.check("acme", "queued_jobs", used=1)
    with pytest.raises(QuotaExceededError) as err:
        limits.check("acme", "queued_jobs", used=2)
    assert isinstance(err.value, ResourceExhaustedError)
    assert (err.value.tenant, err.value.quota) == ("acme", "queued_jobs")
    assert "2 used of 2" in err.value.description and "queued_jobs" in str(err.value)
    with pytest.raises(QuotaExceededError, match=r"3,599.5 used of 3,600"):
        limits.check("acme", "training_seconds_per_day", used=3599.5, adding=1)


def test_a_changed_file_applies_without_a_restart(tmp_path: Path) -> None:
    path = _write(tmp_path, TENANTS)
    policy = TenantPolicy(path, reload_seconds=0.05)
    assert policy.limits("globex").running_jobs == 1
    path.write_text(TENANTS.replace("running_jobs = 1", "running_jobs = 3"))
    time.sleep(0.1)
    assert policy.limits("globex").running_jobs == 3
    path.write_text("[defaults]\nrunning_jobs = 'oops'\n")  # a broken edit keeps the last good limits
    time.sleep(0.1)
    assert policy.limits("globex").running_jobs == 3


def test_an_unknown_limit_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="priority"):
        read_tenants_file(_write(tmp_path, "[tenants.acme]\npriority = -1\n"))

"""Settings: defaults, environment variables with each service's prefix, flags over environment."""

from pathlib import Path

import pytest

from inference_service.settings import InferenceSettings
from trainer_service.settings import TrainerSettings


def test_defaults() -> None:
    assert TrainerSettings().port == 50051
    assert InferenceSettings().port == 50052


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARGPT_TRAINER_PORT", "6000")
    monkeypatch.setenv("CHARGPT_TRAINER_DATA_DIR", "/tmp/env-data")
    monkeypatch.setenv("CHARGPT_INFERENCE_MODELS_DIR", "/tmp/models")
    assert TrainerSettings().port == 6000
    assert TrainerSettings.from_args(["--port", "7000", "--metrics-port", "9100"]).port == 7000
    settings = TrainerSettings.from_args(["--host", "0.0.0.0"])
    assert settings.data_dir == Path("/tmp/env-data") and settings.host == "0.0.0.0"
    assert InferenceSettings.from_args([]).models_dir == Path("/tmp/models")


def test_bad_flag_value_is_a_usage_error_naming_the_flag(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        TrainerSettings.from_args(["--port", "70000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--port (or CHARGPT_TRAINER_PORT): input should be less than or equal to 65535 (got '70000')" in err
    assert "Traceback" not in err
    monkeypatch.setenv("CHARGPT_INFERENCE_STREAM_INTERVAL_MS", "-5")
    with pytest.raises(SystemExit):
        InferenceSettings.from_args([])
    assert "--stream-interval-ms (or CHARGPT_INFERENCE_STREAM_INTERVAL_MS)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # GetModel reports it as int32
        InferenceSettings.from_args(["--parallel-decode-from", "2147483648"])
    assert "--parallel-decode-from (or CHARGPT_INFERENCE_PARALLEL_DECODE_FROM): input should be less than or " \
           "equal to 2147483647" in capsys.readouterr().err


@pytest.mark.parametrize("settings_type", [TrainerSettings, InferenceSettings])
def test_help_lists_every_setting(settings_type: type[TrainerSettings] | type[InferenceSettings],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """--help renders (a description with a literal % once crashed argparse) and names every setting."""
    with pytest.raises(SystemExit) as exit_info:
        settings_type.from_args(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for name in settings_type.model_fields:
        assert "--" + name.replace("_", "-") in shown, name

"""Settings come from the add-on's options file and the environment, environment first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from inference_server.config import SECURITY_CLASSES, Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("DATABASE_URL", "MQTT_URL", "HSI_DATABASE_URL", "HSI_MQTT_URL", "HSI_DATA_DIR", "TZ"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HSI_OPTIONS_FILE", str(tmp_path / "absent.json"))


def test_defaults_use_embedded_services_and_security_classes() -> None:
    settings = Settings()
    assert settings.database_url is None and settings.mqtt_url is None
    assert settings.cameras_path == Path("hsi-data/cameras")
    assert settings.detect_classes == list(SECURITY_CLASSES)
    assert (settings.risk_medium, settings.risk_high, settings.risk_critical) == (30, 60, 85)


def test_addon_options_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = tmp_path / "options.json"
    options.write_text(
        json.dumps(
            {
                "cameras_dir": "/share/hsi/cameras",
                "detector_confidence": 0.55,
                "log_level": "DEBUG",
                "mqtt_url": "",
                "unknown_option": 1,
            }
        )
    )
    monkeypatch.setenv("HSI_OPTIONS_FILE", str(options))
    monkeypatch.setenv("HSI_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db/hsi")
    monkeypatch.setenv("HSI_DETECT_CLASSES", "person, car")
    settings = Settings()
    assert settings.cameras_path == Path("/share/hsi/cameras")
    assert settings.detector_confidence == 0.55
    assert settings.log_level == "WARNING"
    assert settings.database_url == "postgresql://u:p@db/hsi"
    assert settings.mqtt_url is None  # an empty option means "not set"
    assert settings.detect_classes == ["person", "car"]


def test_inconsistent_risk_thresholds_are_refused() -> None:
    with pytest.raises(ValidationError, match="risk_medium < risk_high < risk_critical"):
        Settings(risk_medium=70, risk_high=60)


def test_options_file_must_hold_an_object(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = tmp_path / "options.json"
    options.write_text("[1, 2]")
    monkeypatch.setenv("HSI_OPTIONS_FILE", str(options))
    with pytest.raises(ValueError, match="JSON object"):
        Settings()


def test_fast_path_and_nested_llm_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSI_FAST_PATH", "person:0.8, car:0.95")
    monkeypatch.setenv("HSI_LLM__BACKEND", "openai")
    monkeypatch.setenv("HSI_LLM__BASE_URL", "http://ollama:11434")
    monkeypatch.setenv("HSI_LLM__MAX_ADJUST", "10")
    settings = Settings()
    assert settings.fast_path == {"person": 0.8, "car": 0.95}
    assert settings.llm is not None
    assert (settings.llm.backend, settings.llm.base_url, settings.llm.max_adjust) == (
        "openai",
        "http://ollama:11434",
        10,
    )


def test_fast_path_entries_need_a_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSI_FAST_PATH", "person")
    with pytest.raises(ValueError, match="label:confidence"):
        Settings()

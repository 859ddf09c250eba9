"""Fixtures for the integration's tests (Home Assistant's harness, pytest-homeassistant-custom-component)."""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mqtt"


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> Generator[None]:
    """Load custom_components/ in every test."""
    yield


def sample(name: str) -> dict[str, Any]:
    """An MQTT payload the server's own models produced (tests/fixtures/mqtt, checked server-side)."""
    loaded = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded

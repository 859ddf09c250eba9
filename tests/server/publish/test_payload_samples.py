"""The MQTT payload samples the integration's tests are fed (tests/fixtures/mqtt) are valid
payloads of the server's own models: if a model changes, these samples must change with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from inference_server.schemas import CameraState, Discovery, EventMessage, SystemStatus, TamperState

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "mqtt"


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("event_new.json", EventMessage),
        ("event_update.json", EventMessage),
        ("event_update_vision.json", EventMessage),
        ("event_end.json", EventMessage),
        ("camera_state.json", CameraState),
        ("discovery.json", Discovery),
        ("status.json", SystemStatus),
        ("tamper.json", TamperState),
    ],
)
def test_sample_is_what_the_server_publishes(name: str, model: type[BaseModel]) -> None:
    text = (SAMPLES / name).read_text(encoding="utf-8")
    parsed = model.model_validate_json(text)
    # Round trip: the sample holds every field the server sends, and nothing it does not.
    assert model.model_validate_json(parsed.model_dump_json()) == parsed
    assert set(parsed.model_dump(mode="json")) == set(__import__("json").loads(text))


def test_update_sample_continues_the_new_sample() -> None:
    new = EventMessage.model_validate_json((SAMPLES / "event_new.json").read_text())
    update = EventMessage.model_validate_json((SAMPLES / "event_update.json").read_text())
    assert (new.type, update.type) == ("new", "update") and new.id == update.id
    assert (new.analysis_source, update.analysis_source) == ("rules", "llm")

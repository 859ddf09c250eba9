"""The demo a new user runs first: real images in, events out, on the embedded defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_server.demo import run_demo


async def test_demo_reports_detections_events_mqtt_and_rest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_demo(tmp_path / "demo") == 0
    out = capsys.readouterr().out
    assert "4 people at Front Door at 02:10 (night)" in out
    assert "risk 75 HIGH (rules)" in out
    assert "1 person at Garden at 12:00" in out and "LOW (rules)" in out  # the cat, rated low
    assert out.count("no event (nothing to report)") == 2  # coffee.png and rocket.jpg
    assert "hsi/events: {" in out and "hsi/cameras/front_door/state: {" in out
    assert "hsi/cameras/front_door/snapshot: <JPEG" in out
    assert "→ 200" in out and '"analysis_source": "rules"' in out
    assert "Done: 6 images, 4 events, 0 quarantined." in out

"""The demo a new user runs first: real images in, events out, on the embedded defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inference_server.demo import run_demo


async def test_demo_reports_detections_events_context_phases_mqtt_and_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_demo(tmp_path / "demo") == 0
    out = capsys.readouterr().out
    # Four people at 02:10 without context: high, but one image is not enough for critical.
    assert "rules: risk 84 HIGH — 4 people at Front Door at 02:10 (night) (not corroborated enough for critical)" in out
    assert "rules: risk 28 LOW — 1 person at Garden at 12:00" in out  # the cat, rated low
    assert out.count("no event (nothing to report)") == 2  # coffee.png and rocket.jpg
    # The same picture in two situations: clearly different scores, explained, with both phases timed.
    news = [int(m) for m in re.findall(r"\bnew after +\d+ ms: risk (\d+) \w+ \(rules\)", out)]
    assert len(news) == 2 and news[0] >= 60 and news[1] <= news[0] - 40
    # Context multiplies the evidence: the points scale with what was seen (docs/risk.md).
    assert re.search(r"\+\d+  alarm armed away", out) and re.search(r"-\d+  alarm disarmed", out)
    assert len(re.findall(r"update after +\d+ ms: risk \d+ \w+ \((llm|rules)\)", out)) == 2
    assert "hsi/events: {" in out and "hsi/cameras/front_door/state: {" in out
    assert "hsi/cameras/front_door/snapshot: <JPEG" in out
    assert "→ 200" in out and '"camera_id": "front_door"' in out
    assert "Done: 6 images, 4 events, 0 quarantined." in out

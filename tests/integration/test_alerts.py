"""When an event alerts: the bus event data AlertTracker makes of each ``hsi/events`` message."""

from __future__ import annotations

from typing import Any

from custom_components.home_security_intelligence.alerts import MAX_EVENTS, AlertTracker

from .conftest import sample


def _message(kind: str, event_id: str, level: str | None = "high") -> dict[str, Any]:
    return {**sample("event_new.json"), "type": kind, "id": event_id, "risk_level": level}


def test_a_level_change_is_reported_on_new_and_on_an_update_that_changes_it() -> None:
    alerts = AlertTracker()
    new = alerts.bus_event(_message("new", "e1", "medium"), "back_door", "Back door", 100.0)
    assert new["alert"] and new["level_changed"] and new["previous_risk_level"] is None
    same = alerts.bus_event(_message("update", "e1", "medium"), "back_door", "Back door", 101.0)
    assert not same["alert"] and not same["level_changed"] and same["previous_risk_level"] == "medium"
    raised = alerts.bus_event(_message("update", "e1", "critical"), "back_door", "Back door", 102.0)
    assert raised["alert"] and raised["level_changed"] and raised["previous_risk_level"] == "medium"
    end = alerts.bus_event(_message("end", "e1", "critical"), "back_door", "Back door", 103.0)
    assert not end["alert"] and not end["level_changed"] and end["previous_risk_level"] == "critical"
    # An unknown type changes nothing either.
    other = alerts.bus_event(_message("heartbeat", "e1"), "back_door", "Back door", 104.0)
    assert not other["alert"] and not other["level_changed"] and other["previous_risk_level"] == "critical"


def test_the_llm_update_after_the_end_does_not_alert_again() -> None:
    """Issue 15: a batch-closed event's "end" comes before the LLM's "update" of the same level."""
    alerts = AlertTracker()
    assert alerts.bus_event(_message("new", "e1", "high"), "back_door", "Back door", 100.0)["alert"]
    alerts.bus_event(_message("end", "e1", "high"), "back_door", "Back door", 101.0)
    update = alerts.bus_event(_message("update", "e1", "high"), "back_door", "Back door", 105.0)
    assert not update["alert"] and not update["level_changed"] and update["previous_risk_level"] == "high"
    # A real rise after the end still alerts, once.
    rise = alerts.bus_event(_message("update", "e1", "critical"), "back_door", "Back door", 106.0)
    assert rise["alert"] and rise["level_changed"] and rise["previous_risk_level"] == "high"
    again = alerts.bus_event(_message("update", "e1", "critical"), "back_door", "Back door", 107.0)
    assert not again["alert"]


def test_a_review_or_a_failed_llm_phase_never_alerts() -> None:
    alerts = AlertTracker()
    alerts.bus_event(_message("new", "e1", "medium"), "back_door", "Back door", 100.0)
    # The LLM timed out: the server repeats the rules' judgement with "alert": false.
    failed = alerts.bus_event({**_message("update", "e1", "medium"), "alert": False}, "back_door", "Back door", 110.0)
    assert not failed["alert"]
    # A review 14 minutes later, even one unknown to the tracker (HA restarted), alerts nobody
    # and does not restart the camera's quiet period.
    for event_id in ("e1", "e2"):
        review = {**_message("update", event_id, "high"), "alert": False, "reviewed": True}
        assert not alerts.bus_event(review, "back_door", "Back door", 940.0)["alert"]
    later = alerts.bus_event(_message("new", "e3", "high"), "back_door", "Back door", 950.0)
    assert later["alert"] and later["seconds_since_previous_at_level"]["medium"] == 850.0
    assert later["seconds_since_previous_at_level"]["high"] is None
    # A lower judgement never alerts; climbing back to a level already told neither.
    alerts.bus_event(_message("update", "e3", "low"), "back_door", "Back door", 951.0)
    assert not alerts.bus_event(_message("update", "e3", "high"), "back_door", "Back door", 952.0)["alert"]


def test_quiet_periods_count_per_camera_and_level_from_other_events() -> None:
    alerts = AlertTracker()
    first = alerts.bus_event(_message("new", "cat", "low"), "back_door", "Back door", 100.0)
    assert first["seconds_since_previous_event"] is None
    assert first["seconds_since_previous_at_level"] == {"low": None, "medium": None, "high": None, "critical": None}
    person = alerts.bus_event(_message("new", "person", "high"), "back_door", "Back door", 220.0)
    assert person["seconds_since_previous_event"] == 120.0
    assert person["seconds_since_previous_at_level"] == {"low": 120.0, "medium": None, "high": None, "critical": None}
    # The same event judged again counts from the events before it, not from itself.
    update = alerts.bus_event(_message("update", "person", "high"), "back_door", "Back door", 230.0)
    assert update["seconds_since_previous_event"] == 120.0
    assert update["seconds_since_previous_at_level"]["low"] == 130.0
    assert update["seconds_since_previous_at_level"]["high"] is None
    # Another camera has its own clock.
    garage = alerts.bus_event(_message("new", "car", "high"), "garage", "Garage", 240.0)
    assert garage["seconds_since_previous_event"] is None and garage["camera_id"] == "garage"
    assert set(garage["seconds_since_previous_at_level"].values()) == {None}


def test_the_least_recently_judged_event_is_forgotten_beyond_the_limit() -> None:
    alerts = AlertTracker()
    for n in range(MAX_EVENTS + 1):
        alerts.bus_event(_message("new", f"e{n}", "low"), "back_door", "Back door", float(n))
    # "e1"'s update is judged against its level; "e0" was forgotten and counts as a first one.
    kept = alerts.bus_event(_message("update", "e1", "low"), "back_door", "Back door", 2000.0)
    assert not kept["level_changed"] and kept["previous_risk_level"] == "low"
    forgotten = alerts.bus_event(_message("update", "e0", "low"), "back_door", "Back door", 2001.0)
    assert forgotten["level_changed"] and forgotten["previous_risk_level"] is None


def test_a_message_heard_again_byte_for_byte_is_a_repeat_and_any_other_is_not() -> None:
    """The server sends each message at least once (a crash before its mark, a broker's
    redelivery): the exact bytes of a message already handled for that event are a repeat; the
    same event's other messages, and the same bytes for another event, are not."""
    alerts = AlertTracker()
    new = b'{"type":"new","id":"e1","risk_level":"high"}'
    assert not alerts.repeated("e1", new)
    assert alerts.repeated("e1", new)
    assert alerts.repeated("e1", new.decode())  # as Home Assistant hands a text payload
    assert not alerts.repeated("e1", b'{"type":"end","id":"e1"}')
    assert not alerts.repeated("e2", new)
    for n in range(MAX_EVENTS):
        alerts.repeated(f"x{n}", new)
    assert not alerts.repeated("e1", new)  # forgotten beyond the limit: heard as new

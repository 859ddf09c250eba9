"""Full-text event search (migration 0007): the document holds the summary, the LLM's accepted
description, labels, zones and the camera's name; results rank best match first and page with a
cursor that never repeats or skips a row, in either order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from inference_server.domain import Assessment, Detection
from inference_server.schemas import CameraPatch
from inference_server.store import cameras, detections, events, images

T0 = datetime(2025, 6, 1, 22, 0, tzinfo=UTC)


async def _event(
    conn: asyncpg.Connection,
    summary: str,
    *,
    camera_id: str = "front",
    minutes: int = 0,
    score: int = 20,
    level: str = "low",
    objects: dict[str, int] | None = None,
    zone: str | None = None,
) -> uuid.UUID:
    event_id = uuid.uuid4()
    started = T0 + timedelta(minutes=minutes)
    image_id = await images.insert(
        conn,
        images.NewImage(
            camera_id=camera_id,
            sha256=event_id.bytes.ljust(32, b"\0"),
            path=f"{camera_id}/{event_id}.jpg",
            source="folder",
            original_name=f"{camera_id}/{event_id}.jpg",
            media_type="image/jpeg",
            width=640,
            height=480,
            size_bytes=1000,
            captured_at=started,
            captured_at_source="filename",
        ),
    )
    assert image_id is not None
    labels = objects or {"person": 1}
    if zone is not None:
        found = [Detection(label, 0.9, (0.1, 0.1, 0.5, 0.5)) for label in labels]
        await detections.insert_many(conn, image_id, camera_id, started, found, [(zone,)] * len(found))
    await events.insert(
        conn,
        event_id=event_id,
        camera_id=camera_id,
        image_id=image_id,
        batch_id=None,
        started_at=started,
        assessment=Assessment(score, level, summary, "why", [], "rules", "rules-v2", labels),  # type: ignore[arg-type]
        is_fast_path=False,
        snapshot_path=None,
        context=None,
        llm_pending=False,
    )
    return event_id


async def _search(conn: asyncpg.Connection, text: str, **kw: object) -> list[uuid.UUID]:
    page, _ = await events.list_page(conn, events.EventFilter(text=text, **kw), 50, None, "relevance")  # type: ignore[arg-type]
    return [e.id for e in page]


async def test_search_finds_summary_words_with_english_stemming(conn: asyncpg.Connection) -> None:
    walking = await _event(conn, "Person walking to the front door at night")
    await _event(conn, "Car parked on the driveway", objects={"car": 1})
    assert await _search(conn, "walks") == [walking]
    assert await _search(conn, "parked bicycle") == []  # every word must match


async def test_search_finds_labels_zones_and_camera_names(conn: asyncpg.Connection) -> None:
    dog = await _event(conn, "An animal in the garden", objects={"dog": 1}, zone="lawn")
    back = await _event(conn, "Someone", camera_id="back", zone="gate")
    assert await _search(conn, "dog") == [dog]
    assert await _search(conn, "lawn") == [dog]
    assert await _search(conn, "gate") == [back]
    assert await _search(conn, "back") == [back]  # the camera's name, "Back"


async def test_renaming_a_camera_reindexes_its_events(conn: asyncpg.Connection) -> None:
    event = await _event(conn, "Someone", camera_id="back")
    await cameras.patch(conn, "back", CameraPatch(name="Garage"))
    assert await _search(conn, "garage") == [event]
    assert await _search(conn, "back") == []


async def test_llm_description_is_searchable_once_it_is_the_events_judgement(conn: asyncpg.Connection) -> None:
    event = await _event(conn, "Person at the door")
    assert await _search(conn, "parcel") == []
    llm = Assessment(40, "medium", "Courier", "why", [], "llm", "qwen", {"person": 1}, description="Leaves a parcel")
    await events.finish_llm(conn, event, llm, failure=None)
    assert await _search(conn, "parcel") == [event]


async def test_best_match_ranks_first_and_filters_still_apply(conn: asyncpg.Connection) -> None:
    # "person" in the summary (weight B) and as the label (weight A) beats the label alone.
    label_only = await _event(conn, "Movement near the shed", minutes=1, objects={"person": 1})
    both = await _event(conn, "Person climbing the fence, person at the gate", minutes=0, score=70, level="high")
    assert await _search(conn, "person") == [both, label_only]
    assert await _search(conn, "person", level="high") == [both]
    assert await _search(conn, "person", since=T0 + timedelta(minutes=1)) == [label_only]


async def test_relevance_pages_never_repeat_or_skip(conn: asyncpg.Connection) -> None:
    # Equal ranks (same words) are ordered by time, so the cursor has ties to get right.
    made = {await _event(conn, "person at the door", minutes=i % 7) for i in range(12)}
    made |= {await _event(conn, "person person at the door", minutes=i) for i in range(5)}
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    flt = events.EventFilter(text="person door")
    while True:
        page, cursor = await events.list_page(conn, flt, 4, cursor, "relevance")
        seen += [e.id for e in page]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 17
    assert set(seen) == made
    whole, _ = await events.list_page(conn, flt, 50, None, "relevance")
    assert seen == [e.id for e in whole]


async def test_time_order_search_and_cursor_orders_do_not_mix(conn: asyncpg.Connection) -> None:
    older = await _event(conn, "person person person", minutes=0)
    newer = await _event(conn, "person", minutes=5)
    page, _ = await events.list_page(conn, events.EventFilter(text="person"), 10, None, "time")
    assert [e.id for e in page] == [newer, older]
    _, time_cursor = await events.list_page(conn, events.EventFilter(text="person"), 1, None, "time")
    _, rank_cursor = await events.list_page(conn, events.EventFilter(text="person"), 1, None, "relevance")
    assert time_cursor is not None and rank_cursor is not None
    with pytest.raises(events.BadCursor, match="relevance"):
        await events.list_page(conn, events.EventFilter(text="person"), 1, rank_cursor, "time")
    with pytest.raises(events.BadCursor, match="time"):
        await events.list_page(conn, events.EventFilter(text="person"), 1, time_cursor, "relevance")


async def test_text_of_stop_words_only_is_refused(conn: asyncpg.Connection) -> None:
    await _event(conn, "the person")
    with pytest.raises(events.EmptySearch):
        await events.list_page(conn, events.EventFilter(text="the of !!"), 10, None, "relevance")


async def test_summary_counts_by_level_camera_and_local_hour(conn: asyncpg.Connection) -> None:
    await _event(conn, "a", minutes=5, score=10)
    await _event(conn, "b", minutes=50, score=90, level="critical")
    await _event(conn, "c", camera_id="back", minutes=70, score=65, level="high")
    await _event(conn, "outside", minutes=-5)  # before the period
    summary = await events.summarize(conn, T0, T0 + timedelta(hours=9), None, "Europe/Paris", top=2)
    assert summary.total == 3
    assert summary.by_level.model_dump() == {"low": 1, "medium": 0, "high": 1, "critical": 1}
    assert [(c.camera_id, c.n, c.high_or_critical) for c in summary.by_camera] == [("front", 2, 1), ("back", 1, 1)]
    # 22:00 UTC is midnight in Paris in June: the hours start at local hour boundaries.
    assert [(h.hour.astimezone(UTC).hour, h.n, h.max_risk) for h in summary.by_hour] == [(22, 2, 90), (23, 1, 65)]
    assert [e.summary for e in summary.top] == ["b", "c"]
    front = await events.summarize(conn, T0, T0 + timedelta(hours=9), "back", "UTC")
    assert front.total == 1 and front.top[0].camera_name == "Back"


async def test_people_recognised_in_an_event_are_searchable_by_name(conn: asyncpg.Connection) -> None:
    event = await _event(conn, "Someone at the door", zone="porch")
    detection = await conn.fetchval(
        "SELECT d.id FROM detections d JOIN events e ON e.image_id = d.image_id WHERE e.id = $1", event
    )
    person = await conn.fetchval("INSERT INTO people (name) VALUES ('Anna') RETURNING id")
    assert await _search(conn, "anna") == []
    # Recognised after the event was written (the identity stage runs beside the batch).
    await conn.execute(
        "INSERT INTO detection_identities (detection_id, person_id, similarity, source) VALUES ($1, $2, 0.8, 'face')",
        detection,
        person,
    )
    assert await _search(conn, "anna") == [event]
    await conn.execute("UPDATE people SET name = 'Annabel' WHERE id = $1", person)
    assert await _search(conn, "annabel") == [event]
    await conn.execute("DELETE FROM people WHERE id = $1", person)  # forgotten: identities go too
    assert await _search(conn, "annabel") == []

"""store/events.py: an event is written by the rules, rescored, judged by the LLM, reviewed and
paged through newest first with a cursor that never repeats or skips a row."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bench.roundtrips import RoundTrips
from inference_server.comms.topics import Topics
from inference_server.domain import Assessment, Detection
from inference_server.pipeline.messages import event_message
from inference_server.schemas import EventPatch, GpuStatus, HouseholdContext, RiskFactor
from inference_server.status import StatusReporter
from inference_server.store import batches, detections, events, images

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _rules(score: int, level: str = "low", objects: dict[str, int] | None = None) -> Assessment:
    return Assessment(
        risk_score=score,
        risk_level=level,  # type: ignore[arg-type]
        summary=f"rules {score}",
        reasoning="rules reasoning",
        factors=[RiskFactor(name="person", points=score, detail="a person")],
        analysis_source="rules",
        model="rules-v2",
        objects=objects if objects is not None else {"person": 1},
    )


async def _image(conn: asyncpg.Connection, camera_id: str, name: str) -> int:
    image_id = await images.insert(
        conn,
        images.NewImage(
            camera_id=camera_id,
            sha256=name.encode().ljust(32, b"\0"),
            path=f"{camera_id}/{name}.jpg",
            source="folder",
            original_name=f"{camera_id}/{name}.jpg",
            media_type="image/jpeg",
            width=640,
            height=480,
            size_bytes=1000,
            captured_at=T0,
            captured_at_source="filename",
        ),
    )
    assert image_id is not None
    return image_id


async def _event(
    conn: asyncpg.Connection,
    *,
    camera_id: str = "front",
    started_at: datetime = T0,
    score: int = 20,
    level: str = "low",
    llm_pending: bool = False,
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    event_id = event_id or uuid.uuid4()
    image_id = await _image(conn, camera_id, str(event_id))
    await events.insert(
        conn,
        event_id=event_id,
        camera_id=camera_id,
        image_id=image_id,
        batch_id=None,
        started_at=started_at,
        assessment=_rules(score, level),
        is_fast_path=False,
        snapshot_path=f"snapshots/{event_id}.jpg",
        context=None,
        llm_pending=llm_pending,
    )
    return event_id


async def test_an_inserted_event_reads_back_with_its_camera_context_and_detections_strongest_first(
    conn: asyncpg.Connection,
) -> None:
    image_id = await _image(conn, "front", "one")
    await detections.insert_many(
        conn,
        image_id,
        "front",
        T0,
        [Detection("car", 0.6, (0.1, 0.1, 0.2, 0.2)), Detection("person", 0.9, (0.3, 0.3, 0.5, 0.9))],
        [(), ("porch",)],
    )
    event_id = uuid.uuid4()
    home = HouseholdContext(alarm_state="armed_away", people_home=[])
    await events.insert(
        conn,
        event_id=event_id,
        camera_id="front",
        image_id=image_id,
        batch_id=None,
        started_at=T0,
        assessment=_rules(55, "medium", {"person": 1, "car": 1}),
        is_fast_path=True,
        snapshot_path="snapshots/one.jpg",
        context=home,
        llm_pending=True,
    )

    event = await events.get(conn, event_id)

    assert event is not None
    assert (event.camera_id, event.camera_name, event.started_at, event.ended_at) == ("front", "Front", T0, None)
    assert (event.risk_score, event.risk_level, event.analysis_source, event.model) == (
        55,
        "medium",
        "rules",
        "rules-v2",
    )
    assert event.objects == {"person": 1, "car": 1} and event.is_fast_path and event.context == home
    assert event.risk_factors == [RiskFactor(name="person", points=55, detail="a person")]
    assert [(d.label, d.category, d.zone) for d in event.detections] == [
        ("person", "person", "porch"),
        ("car", "vehicle", None),
    ]
    assert await conn.fetchval("SELECT llm_state FROM events WHERE id = $1", event_id) == "pending"
    assert await events.get(conn, uuid.uuid4()) is None


async def test_rescoring_replaces_the_rules_judgement_and_reports_only_a_visible_change(
    conn: asyncpg.Connection,
) -> None:
    event_id = await _event(conn, score=20)
    newer_image = await _image(conn, "front", "newer")

    with RoundTrips() as trips:
        same = await events.rescore(conn, event_id, _rules(20), image_id=newer_image, snapshot_path="s/2.jpg")
        changed = await events.rescore(
            conn, event_id, _rules(60, "high"), image_id=newer_image, snapshot_path="s/3.jpg"
        )

    # The changed event read back by its update (stop 49: a statement more); asyncpg's look-ups of
    # the statement's types on first use are not the server's.
    assert sum(n for text, n in trips.by_statement.items() if "events" in text) == 2, trips.by_statement
    assert same is None and changed is not None
    event = await events.get(conn, event_id)
    assert changed == event  # what hsi/events announces is the event as stored
    assert (event.risk_score, event.risk_level, event.summary, event.image_id) == (60, "high", "rules 60", newer_image)
    assert await events.snapshot_path(conn, event_id) == (True, "s/3.jpg")
    assert await events.rescore(conn, uuid.uuid4(), _rules(1), image_id=newer_image, snapshot_path=None) is None


async def test_an_events_picture_moved_is_read_back_by_the_same_statement(conn: asyncpg.Connection) -> None:
    """A rescore that kept the event's picture and changed its judgement then moves the picture to
    the judged image (``BatchStage._rescore``): the event it announces is read by the statement
    that moves it (stop 50: the read was a statement of its own), with the judged image's
    detections, and equals what ``get`` reads."""
    event_id = await _event(conn, score=20)
    judged = await _image(conn, "front", "judged")
    await conn.execute(
        "INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2, detected_at)"
        " SELECT $1, 'front', 'dog', 'animal', 0.9, 0.1, 0.1, 0.2, 0.2, now()",
        judged,
    )

    with RoundTrips() as trips:
        moved = await events.set_picture(conn, event_id, judged, "s/judged.jpg")

    assert trips.count == 1, trips.by_statement
    event = await events.get(conn, event_id)
    assert moved is not None and moved == event
    assert event.image_id == judged and [d.label for d in event.detections] == ["dog"]
    assert await events.snapshot_path(conn, event_id) == (True, "s/judged.jpg")
    assert await events.set_picture(conn, uuid.uuid4(), judged, None) is None


async def test_once_the_llm_has_answered_rescoring_keeps_its_judgement_and_refreshes_only_the_rules_result(
    conn: asyncpg.Connection,
) -> None:
    event_id = await _event(conn, score=20, llm_pending=True)
    llm = Assessment(80, "critical", "llm says", "llm reasoning", [], "llm", "some.gguf", {"person": 1}, "p3")
    await events.finish_llm(conn, event_id, llm, failure=None)

    changed = await events.rescore(
        conn, event_id, _rules(30), image_id=await _image(conn, "front", "x"), snapshot_path=None
    )

    assert changed is None  # score, level and objects are the LLM's and the same
    event = await events.get(conn, event_id)
    assert event is not None
    assert (event.risk_score, event.risk_level, event.summary, event.analysis_source) == (
        80,
        "critical",
        "llm says",
        "llm",
    )
    row = await conn.fetchrow("SELECT llm_state, rules_result, llm_result FROM events WHERE id = $1", event_id)
    assert row["llm_state"] == "done" and row["rules_result"]["risk_score"] == 30
    assert row["llm_result"]["prompt_version"] == "p3"


async def test_a_failed_llm_leaves_the_rules_judgement_and_appends_the_reason(conn: asyncpg.Connection) -> None:
    event_id = await _event(conn, score=45, level="medium", llm_pending=True)

    await events.finish_llm(conn, event_id, None, failure="timeout")

    event = await events.get(conn, event_id)
    assert event is not None
    assert (event.risk_score, event.analysis_source) == (45, "rules")
    assert event.reasoning == "rules reasoning [LLM fallback: timeout]"
    row = await conn.fetchrow("SELECT llm_state, llm_result FROM events WHERE id = $1", event_id)
    assert (row["llm_state"], row["llm_result"]) == ("failed", {"error": "timeout"})


async def test_the_llm_claims_pending_events_oldest_first_once_each_and_reclaims_an_expired_lease(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    first = await _event(conn, llm_pending=True)
    second = await _event(conn, llm_pending=True)
    await _event(conn, llm_pending=False)  # skipped: never claimed
    assert await events.llm_waiting(pool) == 2

    claims = [await events.claim_llm(pool, lease) for lease in (300, -60, 300, 300)]
    assert [c.event_id if c is not None else None for c in claims] == [
        first,
        second,  # a lease already run out...
        second,  # ...is taken again
        None,
    ]
    assert await events.llm_waiting(pool) == 2  # running still counts as waiting
    assert claims[1] is not None and claims[2] is not None
    assert not await events.release_llm(pool, claims[1]), "the lease that ran out is someone else's claim now"
    assert await events.release_llm(pool, claims[2])
    again = await events.claim_llm(pool, 300)
    assert again is not None and again.event_id == second, "given back: claimable at once"


async def test_pages_run_newest_first_without_repeats_or_gaps_even_when_start_times_tie(
    conn: asyncpg.Connection,
) -> None:
    ids = [await _event(conn, started_at=T0 + timedelta(minutes=m)) for m in (0, 1, 1, 1, 2)]
    expected = sorted(
        zip([T0, *[T0 + timedelta(minutes=1)] * 3, T0 + timedelta(minutes=2)], ids, strict=True),
        reverse=True,
    )

    seen: list[uuid.UUID] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await events.list_page(conn, events.EventFilter(), 2, cursor)
        pages += 1
        seen += [e.id for e in page]
        if cursor is None:
            break

    assert pages == 3
    assert seen == [event_id for _, event_id in expected]


async def test_a_page_that_ends_exactly_at_the_last_row_has_no_next_cursor(conn: asyncpg.Connection) -> None:
    for m in range(2):
        await _event(conn, started_at=T0 + timedelta(minutes=m))

    page, cursor = await events.list_page(conn, events.EventFilter(), 2, None)

    assert len(page) == 2 and cursor is None


async def test_filters_select_by_camera_time_risk_level_and_review(conn: asyncpg.Connection) -> None:
    low = await _event(conn, camera_id="front", started_at=T0, score=10, level="low")
    high = await _event(conn, camera_id="front", started_at=T0 + timedelta(hours=1), score=70, level="high")
    back = await _event(conn, camera_id="back", started_at=T0 + timedelta(hours=2), score=90, level="critical")
    await events.patch(conn, high, EventPatch(reviewed=True))

    async def ids(**kwargs: object) -> list[uuid.UUID]:
        page, _ = await events.list_page(conn, events.EventFilter(**kwargs), 10, None)  # type: ignore[arg-type]
        return [e.id for e in page]

    assert await ids(camera_id="front") == [high, low]
    assert await ids(min_risk=70) == [back, high]
    assert await ids(level="low") == [low]
    assert await ids(reviewed=False) == [back, low]
    assert await ids(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2)) == [high]


async def test_a_cursor_not_made_by_the_server_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(events.BadCursor):
        await events.list_page(conn, events.EventFilter(), 10, "not-a-cursor!")
    when, event_id = events.decode_cursor(events.encode_cursor(T0, uuid.UUID(int=7)))
    assert (when, event_id) == (T0, uuid.UUID(int=7))


async def test_a_patch_changes_only_the_fields_sent_and_a_missing_event_gives_none(conn: asyncpg.Connection) -> None:
    event_id = await _event(conn)

    noted = await events.patch(conn, event_id, EventPatch(notes="the postman"))
    reviewed = await events.patch(conn, event_id, EventPatch(reviewed=True, feedback="false_alarm"))
    cleared = await events.patch(conn, event_id, EventPatch(notes=None))

    assert noted is not None and (noted.notes, noted.reviewed, noted.feedback) == ("the postman", False, None)
    assert reviewed is not None and (reviewed.notes, reviewed.reviewed, reviewed.feedback) == (
        "the postman",
        True,
        "false_alarm",
    )
    assert cleared is not None and (cleared.notes, cleared.reviewed, cleared.feedback) == (None, True, "false_alarm")
    assert await events.patch(conn, uuid.uuid4(), EventPatch(reviewed=True)) is None


async def test_lookups_find_the_latest_event_its_snapshot_batch_and_image_name(conn: asyncpg.Connection) -> None:
    assert await conn.fetchval(f"SELECT {events.LAST_EVENT_AT}") is None
    assert await events.latest_for_camera(conn, "front") is None
    older = await _event(conn, started_at=T0)
    newer = await _event(conn, started_at=T0 + timedelta(minutes=5))
    await _event(conn, camera_id="back", started_at=T0 + timedelta(minutes=9))
    await events.end(conn, newer, T0 + timedelta(minutes=6))

    assert await conn.fetchval(f"SELECT {events.LAST_EVENT_AT}") == T0 + timedelta(minutes=9)
    assert await events.latest_for_camera(conn, "front") == (newer, T0 + timedelta(minutes=5))
    assert await events.snapshot_path(conn, older) == (True, f"snapshots/{older}.jpg")
    assert await events.snapshot_path(conn, uuid.uuid4()) == (False, None)
    assert await events.batch_of(conn, older) is None
    assert await events.id_for_image_name(conn, f"front/{older}.jpg") == older
    assert await events.id_for_image_name(conn, "front/nothing.jpg") is None
    ended = await events.get(conn, newer)
    assert ended is not None and ended.ended_at == T0 + timedelta(minutes=6)


async def test_the_status_reads_the_queue_and_the_latest_event_in_one_statement(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """The status (published every 10 s, all day) read when the latest event started in a
    statement of its own after the queue's figures: one round trip more every time."""
    status = StatusReporter(pool, detector="onnx", reasoner="rules", mqtt_connected=lambda: True)
    assert (await status.current()).last_event_at is None
    await _event(conn, started_at=T0)
    await _event(conn, camera_id="back", started_at=T0 + timedelta(minutes=9))
    with RoundTrips() as trips:
        now = await status.current()
    assert now.last_event_at == T0 + timedelta(minutes=9)
    assert now.queue == {"queued": 0, "running": 0, "done": 0}
    assert trips.count == 1, trips.by_statement


async def test_the_status_without_a_gpu_wakes_no_thread_to_read_one(pool: asyncpg.Pool) -> None:
    """Every 10 s the status handed the GPU's reading to a thread, on a machine with no GPU too
    (the add-on's usual box): a thread woken for nothing. Now NVML is read only where a GPU is."""

    class Gpu:
        def __init__(self, available: bool) -> None:
            self.available = available
            self.read_on: list[str] = []

        def read(self) -> GpuStatus | None:
            self.read_on.append(threading.current_thread().name)
            return None

    none, one = Gpu(available=False), Gpu(available=True)
    for gpu in (none, one):
        status = StatusReporter(pool, detector="onnx", reasoner="rules", mqtt_connected=lambda: True, gpu=gpu)
        assert (await status.current()).gpu is None
    assert none.read_on == []
    assert len(one.read_on) == 1 and one.read_on[0] != threading.current_thread().name  # off the event loop


async def test_every_message_of_an_event_that_changed_is_other_bytes_than_the_ones_before(
    conn: asyncpg.Connection,
) -> None:
    """The integration drops a message of an event heard byte for byte before (a repeat: delivery
    is at least once). An event reviewed, un-reviewed and reviewed again says what it said the
    first time: without ``updated_at`` its third message was the first's bytes, and was dropped."""
    event_id = await _event(conn)
    sent: list[bytes] = []
    for reviewed in (True, False, True):
        async with conn.transaction():  # each change is a request of its own: its own now()
            await events.patch(conn, event_id, EventPatch(reviewed=reviewed))
            _, payload, _ = await event_message(conn, Topics("hsi"), event_id, "update")
        sent.append(payload)
    assert len(set(sent)) == 3
    assert [json.loads(p)["reviewed"] for p in sent] == [True, False, True]


@pytest.mark.parametrize("llm_pending", [False, True], ids=["rules only", "LLM queued"])
@pytest.mark.parametrize("from_clip", [False, True], ids=["picture", "clip frame"])
async def test_an_event_opened_for_its_batch_is_one_statement_that_links_it_and_reads_it_as_get_does(
    conn: asyncpg.Connection, pool: asyncpg.Pool, from_clip: bool, llm_pending: bool
) -> None:
    """The insert, the batch's link, the read of what ``hsi/events`` announces and the LLM
    worker's wake-up were four round trips (stop 49: one). What it returns is what ``get`` reads
    once it is committed, the clip's link included: the statement's own link of the batch is not
    visible to its read, so the clip is looked for in the batch it opens for."""
    image_id = await _image(conn, "front", "opened")
    await detections.insert_many(conn, image_id, "front", T0, [Detection("person", 0.9, (0.3, 0.3, 0.5, 0.9))], [()])
    if from_clip:
        clip_id = await conn.fetchval(
            "INSERT INTO clips (camera_id, sha256, path, media_type, codec, width, height, duration_s,"
            " frames_decoded, frames_sampled, size_bytes, started_at)"
            " VALUES ('front', '\\x00', 'front/clip.mp4', 'video/mp4', 'h264', 640, 480, 4, 120, 4, 1000, $1)"
            " RETURNING id",
            T0,
        )
        await conn.execute("UPDATE images SET clip_id = $1, clip_offset_s = 0 WHERE id = $2", clip_id, image_id)
    batch, _ = await batches.open_or_lock(conn, "front", T0)
    await batches.add_images(conn, batch, [image_id], T0)
    woken = asyncio.Event()

    def wake(*_: object) -> None:
        woken.set()

    async with pool.acquire() as listener:
        await listener.add_listener(events.LLM_CHANNEL, wake)
        async with conn.transaction():
            with RoundTrips() as trips:
                opened = await events.insert(
                    conn,
                    event_id=uuid.uuid4(),
                    camera_id="front",
                    image_id=image_id,
                    batch_id=batch.id,
                    started_at=T0,
                    assessment=_rules(70, "high"),
                    is_fast_path=True,
                    snapshot_path="snapshots/opened.jpg",
                    context=None,
                    llm_pending=llm_pending,
                )
        assert trips.count == 1, trips.by_statement
        if llm_pending:
            await asyncio.wait_for(woken.wait(), 10)
        else:
            await asyncio.sleep(0.2)
            assert not woken.is_set()
        await listener.remove_listener(events.LLM_CHANNEL, wake)
    assert opened == await events.get(conn, opened.id)
    assert opened.clip_url == (f"/api/v1/events/{opened.id}/clip" if from_clip else None)
    assert [d.label for d in opened.detections] == ["person"] and opened.camera_name == "Front"
    assert await conn.fetchval("SELECT event_id FROM batches WHERE id = $1", batch.id) == opened.id
    assert await conn.fetchval("SELECT llm_state FROM events WHERE id = $1", opened.id) == (
        "pending" if llm_pending else "skipped"
    )

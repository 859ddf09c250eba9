"""store/batches.py: one open batch per camera, its images and detections, and which are due to close."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bench.roundtrips import RoundTrips
from inference_server.domain import Detection, FeedbackCounts
from inference_server.schemas import CameraCreate, HouseholdContext
from inference_server.store import activity, batches, cameras, context, detections, events, images

from .conftest import add_event

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


async def _image(conn: asyncpg.Connection, name: str, captured_at: datetime, *labels: str) -> int:
    image_id = await images.insert(
        conn,
        images.NewImage(
            "front",
            name.encode(),
            f"front/{name}.jpg",
            "folder",
            None,
            "image/jpeg",
            64,
            48,
            10,
            captured_at,
            "filename",
        ),
    )
    assert image_id is not None
    dets = [Detection(label, 0.8, (0.1, 0.1, 0.5, 0.5)) for label in labels]
    await detections.insert_many(conn, image_id, "front", captured_at, dets)
    return image_id


async def test_a_camera_has_one_open_batch_which_locking_finds_until_it_is_closed(conn: asyncpg.Connection) -> None:
    assert await batches.lock_open(conn, "front") is None
    batch = await batches.open_new(conn, "front", T0)
    assert (batch.camera_id, batch.opened_at, batch.last_activity_at, batch.event_id) == ("front", T0, T0, None)

    async with conn.transaction():
        assert await batches.lock_open(conn, "front") == batch
    with pytest.raises(asyncpg.UniqueViolationError):
        await batches.open_new(conn, "front", T0)
    await batches.open_new(conn, "back", T0)
    assert await batches.open_count(conn) == 2

    await batches.close(conn, batch.id, T0 + timedelta(minutes=1))

    assert await batches.lock_open(conn, "front") is None
    assert await batches.open_count(conn) == 1
    assert (await batches.open_new(conn, "front", T0 + timedelta(minutes=2))).id != batch.id


async def test_adding_an_image_links_it_once_and_activity_time_only_moves_forward(conn: asyncpg.Connection) -> None:
    batch = await batches.open_new(conn, "front", T0)
    image_id = await _image(conn, "a", T0)

    later = await batches.add_images(conn, batch, [image_id], T0 + timedelta(seconds=30))
    again = await batches.add_images(conn, later, [image_id], T0 + timedelta(seconds=10))

    assert later.last_activity_at == T0 + timedelta(seconds=30)
    assert again.last_activity_at == T0 + timedelta(seconds=30)
    assert await conn.fetchval("SELECT count(*) FROM batch_images WHERE batch_id = $1", batch.id) == 1


async def test_the_event_opened_for_a_batch_is_read_back_as_its_event(conn: asyncpg.Connection) -> None:
    batch = await batches.open_new(conn, "front", T0)

    event_id = await add_event(conn, await _image(conn, "a", T0), 70, "high", batch_id=batch.id)

    got = await batches.get(conn, batch.id)
    assert got is not None and got.event_id == event_id
    assert await batches.get(conn, uuid.uuid4()) is None


async def test_batches_are_due_when_their_window_or_idle_time_has_run_out_oldest_first(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await cameras.create(pool, CameraCreate(id="side", name="Side"))
    window_over = await batches.open_new(conn, "front", T0 - timedelta(seconds=120))
    busy = await batches.add_images(conn, window_over, [await _image(conn, "w", T0)], T0)  # active, but too long open
    idle = await batches.open_new(conn, "back", T0 - timedelta(seconds=50))
    await batches.open_new(conn, "side", T0 - timedelta(seconds=10))  # neither: not due

    async with conn.transaction():
        due = await batches.lock_due(conn, T0, window_s=90, idle_s=30)

    assert [b.id for b in due] == [busy.id, idle.id]


async def test_a_due_batch_locked_by_another_transaction_is_skipped(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    first = await batches.open_new(conn, "front", T0 - timedelta(minutes=10))
    second = await batches.open_new(conn, "back", T0 - timedelta(minutes=5))

    async with pool.acquire() as other, other.transaction():
        assert [b.id for b in await batches.lock_due(other, T0, 60, 60, limit=1)] == [first.id]
        async with conn.transaction():
            assert [b.id for b in await batches.lock_due(conn, T0, 60, 60)] == [second.id]


async def test_a_batch_detections_come_in_capture_order_with_their_zones(conn: asyncpg.Connection) -> None:
    batch = await batches.open_new(conn, "front", T0)
    late = await _image(conn, "late", T0 + timedelta(seconds=5), "car")
    early = await images.insert(
        conn,
        images.NewImage("front", b"early", "front/early.jpg", "folder", None, "image/jpeg", 64, 48, 10, T0, "filename"),
    )
    assert early is not None
    await detections.insert_many(
        conn, early, "front", T0, [Detection("person", 0.9, (0.1, 0.2, 0.3, 0.4))], [("porch", "drive")]
    )
    await _image(conn, "elsewhere", T0, "dog")  # not in the batch
    for image_id in (late, early):
        batch = await batches.add_images(conn, batch, [image_id], T0)

    found = await batches.detections(conn, batch.id)

    assert [(d.image_id, d.label, d.zones, d.captured_at) for d in found] == [
        (early, "person", ("porch", "drive"), T0),
        (late, "car", (), T0 + timedelta(seconds=5)),
    ]
    assert found[0].bbox == (0.1, 0.2, 0.3, 0.4) and found[0].confidence == 0.9


async def _visits(conn: asyncpg.Connection, camera_id: str, exclude: uuid.UUID, since: datetime) -> int:
    past = await activity.history(conn, camera_id, T0, batch_id=exclude, visits_since=since, zone="", label="person")
    return past.recent_visits


async def test_recent_person_visits_count_other_batches_of_the_camera_with_a_person(conn: asyncpg.Connection) -> None:
    old = await batches.open_new(conn, "front", T0 - timedelta(hours=2))
    await batches.add_images(conn, old, [await _image(conn, "old", T0, "person")], T0)
    await batches.close(conn, old.id, T0)
    visit = await batches.open_new(conn, "front", T0 - timedelta(minutes=30))
    await batches.add_images(conn, visit, [await _image(conn, "visit", T0, "person", "car")], T0)
    await batches.close(conn, visit.id, T0)
    cat = await batches.open_new(conn, "front", T0 - timedelta(minutes=20))
    await batches.add_images(conn, cat, [await _image(conn, "cat", T0, "cat")], T0)
    await batches.close(conn, cat.id, T0)
    current = await batches.open_new(conn, "front", T0)
    await batches.add_images(conn, current, [await _image(conn, "now", T0, "person")], T0)

    since = T0 - timedelta(hours=1)
    assert await _visits(conn, "front", current.id, since) == 1
    assert await _visits(conn, "front", visit.id, since) == 1  # the current one counts then
    assert await _visits(conn, "back", current.id, since) == 0
    assert await _visits(conn, "front", current.id, T0 - timedelta(hours=3)) == 2  # the old one too


async def test_a_judgements_history_is_one_statement(conn: asyncpg.Connection) -> None:
    """activity.history: the baseline, the recent visits and the feedback a judgement weighs, in
    one round trip instead of four (issue 20)."""
    from bench.roundtrips import RoundTrips

    visit = await batches.open_new(conn, "front", T0 - timedelta(minutes=30))
    await batches.add_images(conn, visit, [await _image(conn, "visit", T0, "person")], T0)
    await batches.close(conn, visit.id, T0)
    current = await batches.open_new(conn, "front", T0)
    await batches.add_images(conn, current, [await _image(conn, "now", T0, "person")], T0)
    today, hour = T0.date(), T0.hour
    for back in range(1, activity.MIN_DAYS_LEARNED + 2):
        await activity.record_images(conn, "front", [(today - timedelta(days=back), hour, ["person"] * back)])
    await activity.record_images(conn, "front", [(today - timedelta(days=1), hour, ["car"])])
    await activity.add_feedback(conn, "front", "porch", "person", hour, "false_alarm")
    since = T0 - timedelta(hours=1)

    with RoundTrips() as trips:
        past = await activity.history(
            conn, "front", T0, batch_id=current.id, visits_since=since, zone="porch", label="person"
        )

    assert trips.count == 1
    days = activity.MIN_DAYS_LEARNED + 1
    # An image counts once per label: one image with a person each day, one with a car on one day.
    assert past.baseline == {"person": 1.0, "car": round(1 / days, 3)}
    assert past.recent_visits == 1
    assert past.feedback == FeedbackCounts(1, 0, 0)
    nothing = await activity.history(
        conn,
        "front",
        T0 - timedelta(days=30),
        batch_id=visit.id,
        visits_since=T0 + timedelta(hours=1),
        zone="",
        label="dog",
    )
    assert nothing == activity.History(None, 0, FeedbackCounts())


async def test_the_open_batch_is_locked_and_the_capture_times_context_read_in_one_statement(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """``lock_open_in_context`` is ``lock_open`` and ``context.for_capture`` in one round trip: the
    same batch, locked the same way, and the same context (none, in force, or the fallback)."""
    at = T0 + timedelta(minutes=5)
    assert await batches.lock_open_in_context(conn, "front", at) == batches.Locked(
        None, await context.for_capture(conn, at), None
    )
    batch = await batches.open_new(conn, "front", T0)
    await context.put(conn, HouseholdContext(alarm_state="armed_away"), "test", set_at=T0 + timedelta(minutes=10))
    for captured in (at, T0 + timedelta(minutes=20)):  # before the only context (its fallback), after it
        async with conn.transaction():
            with RoundTrips() as trips:
                locked = await batches.lock_open_in_context(conn, "front", captured)
            found, state = locked.batch, locked.household
            assert trips.count == 1 and locked.last_event is None
            assert found == batch
            assert state == await context.for_capture(conn, captured)
            assert state.context.alarm_state == "armed_away"
            # Locked as lock_open locks it: another transaction cannot take the row.
            async with pool.acquire() as other, other.transaction():
                await other.execute("SET LOCAL lock_timeout = '100ms'")
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await batches.lock_open(other, "front")
    await context.put(conn, HouseholdContext(alarm_state="disarmed"), "test", set_at=T0 + timedelta(minutes=30))
    event_id = await add_event(conn, await _image(conn, "seen", T0, "person"), 40, "medium")
    locked = await batches.lock_open_in_context(conn, "front", T0 + timedelta(minutes=40))
    assert locked.household.context.alarm_state == "disarmed" and locked.batch == batch
    assert locked.last_event == await events.latest_for_camera(conn, "front")
    assert locked.last_event is not None and locked.last_event[0] == event_id


def _joining(image_ids: list[int], now: datetime, window_s: float = 60, idle_s: float = 20) -> batches.Joining:
    event_max = timedelta(hours=1)
    return batches.Joining(
        image_ids, now, now - timedelta(seconds=window_s), now - timedelta(seconds=idle_s), now - event_max
    )


async def test_images_join_the_open_batch_in_the_locking_statement_unless_it_is_due(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """``lock_open_in_context`` with a ``Joining``: a batch not due is joined as ``add_images``
    joins it (links, activity time, a new version), in the one statement, still locked; a batch
    due by its window, its idle time or its chain's longest time (at the very moment too), or no
    batch, is left as it is for the caller to close or open."""
    at = T0 + timedelta(seconds=10)
    image = await _image(conn, "a", at, "person")
    assert (await batches.lock_open_in_context(conn, "front", at, _joining([image], at))).joined is None
    assert await conn.fetchval("SELECT count(*) FROM batch_images") == 0

    batch = await batches.open_new(conn, "front", T0)
    async with conn.transaction():
        with RoundTrips() as trips:
            locked = await batches.lock_open_in_context(conn, "front", at, _joining([image], at))
        assert trips.count == 1 and locked.batch == batch
        assert locked.joined is not None and locked.joined.version != batch.version
        assert replace(locked.joined, version=0) == replace(batch, last_activity_at=at, version=0)
        assert locked.joined == await batches.get(conn, batch.id)
        async with pool.acquire() as other, other.transaction():
            await other.execute("SET LOCAL lock_timeout = '100ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await batches.lock_open(other, "front")
    assert await conn.fetchval("SELECT array_agg(image_id) FROM batch_images WHERE batch_id = $1", batch.id) == [image]
    # An earlier capture does not move the activity time back (as add_images).
    again = await batches.lock_open_in_context(conn, "front", T0, _joining([image], T0 + timedelta(seconds=5)))
    assert again.joined is not None and again.joined.last_activity_at == at

    later = await _image(conn, "b", at, "person")
    due = {
        "window": _joining([later], T0 + timedelta(seconds=60), idle_s=600),  # exactly when the window ends
        "idle": _joining([later], at + timedelta(seconds=20)),
        "longest": batches.Joining([later], at, T0 - timedelta(hours=1), T0 - timedelta(hours=1), T0),
    }
    for why, joining in due.items():
        locked = await batches.lock_open_in_context(conn, "front", at, joining)
        assert locked.joined is None and locked.batch == await batches.get(conn, batch.id), why
    assert await conn.fetchval("SELECT count(*) FROM batch_images WHERE image_id = $1", later) == 0


@pytest.mark.parametrize("first_commits", [True, False])
async def test_two_processes_opening_a_cameras_batch_at_once_end_with_one(
    pool: asyncpg.Pool, conn: asyncpg.Connection, first_commits: bool
) -> None:
    """Two worker processes storing a camera's first images at the same moment both find no open
    batch. The second's open waited for the first's and then failed on the one-open-batch index
    (its images' jobs lost an attempt: the scale-out test saw "a job was claimed twice"). It now
    takes the batch the first opened once that commits, or opens its own if the first rolls back.
    (``conn``, with the cameras, is the first process's connection.)"""
    a = conn
    async with pool.acquire() as b:
        first_tx, second_tx = a.transaction(), b.transaction()
        await first_tx.start()
        first, opened_first = await batches.open_or_lock(a, "front", T0)
        await second_tx.start()
        second_open = asyncio.create_task(batches.open_or_lock(b, "front", T0 + timedelta(seconds=1)))
        await asyncio.sleep(0.3)
        assert not second_open.done()  # waits for the first transaction
        await (first_tx.commit() if first_commits else first_tx.rollback())
        second, opened_second = await second_open
        await second_tx.commit()
    assert opened_first
    if first_commits:
        assert not opened_second and second.id == first.id
    else:
        assert opened_second and second.id != first.id
    assert await batches.open_count(pool) == 1

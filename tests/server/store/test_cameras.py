"""store/cameras.py: a folder maps to one camera for good, REST cameras are created once, and
deleting a camera takes its rows with it and names the files to remove."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from inference_server.domain import Detection
from inference_server.schemas import CameraCreate, CameraPatch, Zone, ZoneList
from inference_server.store import batches, cameras, detections, images, quarantine

from .conftest import add_event

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn:
        yield conn


async def test_a_camera_id_is_created_once_and_records_list_in_id_order(conn: asyncpg.Connection) -> None:
    back = await cameras.create(conn, CameraCreate(id="back", name="Back yard", enabled=False))
    await cameras.create(conn, CameraCreate(id="alley", name="Alley"))

    assert back is not None and (back.id, back.name, back.folder, back.enabled, back.zones) == (
        "back",
        "Back yard",
        None,
        False,
        [],
    )
    assert await cameras.create(conn, CameraCreate(id="back", name="Other")) is None
    assert await cameras.get_record(conn, "back") == back
    assert await cameras.get_record(conn, "nowhere") is None
    assert [c.id for c in await cameras.list_records(conn)] == ["alley", "back"]
    assert [c.id for c in await cameras.list_all(conn)] == ["alley", "back"]
    assert await cameras.ids(conn) == {"alley", "back"}
    assert await cameras.get(conn, "back") == cameras.Camera("back", "Back yard", None, False)


async def test_a_patch_changes_only_the_fields_given_and_a_missing_camera_gives_none(conn: asyncpg.Connection) -> None:
    await cameras.create(conn, CameraCreate(id="front", name="Front"))

    renamed = await cameras.patch(conn, "front", CameraPatch(name="Front door"))
    disabled = await cameras.patch(conn, "front", CameraPatch(enabled=False))

    assert renamed is not None and (renamed.name, renamed.enabled) == ("Front door", True)
    assert disabled is not None and (disabled.name, disabled.enabled) == ("Front door", False)
    assert await cameras.patch(conn, "nowhere", CameraPatch(name="x")) is None


async def test_a_new_folder_is_registered_once_under_a_readable_name(conn: asyncpg.Connection) -> None:
    camera_id, registered = await cameras.id_for_folder(conn, "front_door", ["front_door"])
    camera, new = await cameras.ensure_for_folder(conn, camera_id, "front_door")
    again, new_again = await cameras.ensure_for_folder(conn, camera_id, "front_door")

    assert registered is False and new is True and new_again is False
    assert camera == again == cameras.Camera("front_door", "Front Door", "front_door", True)
    assert await cameras.id_for_folder(conn, "front_door", ["something-else"]) == ("front_door", True)


async def test_a_folder_takes_the_first_candidate_no_other_folder_holds_and_adopts_a_rest_camera(
    conn: asyncpg.Connection,
) -> None:
    await cameras.ensure_for_folder(conn, "garden", "Garden")
    await cameras.create(conn, CameraCreate(id="garden-2", name="Made over REST"))

    camera_id, registered = await cameras.id_for_folder(conn, "garden", ["garden", "garden-2"])
    adopted, new = await cameras.ensure_for_folder(conn, camera_id, "garden")

    assert (camera_id, registered) == ("garden-2", False)
    assert new is False and adopted == cameras.Camera("garden-2", "Made over REST", "garden", True)


async def test_two_folders_never_share_a_camera(conn: asyncpg.Connection) -> None:
    await cameras.ensure_for_folder(conn, "garden", "Garden")

    with pytest.raises(cameras.FolderIdConflict):
        await cameras.id_for_folder(conn, "garden", ["garden"])  # every candidate is another folder's
    with pytest.raises(cameras.FolderIdConflict):
        await cameras.ensure_for_folder(conn, "garden", "garden")  # the id is Garden's
    await cameras.ensure_for_folder(conn, "other", "other")
    with pytest.raises(cameras.FolderIdConflict):
        await cameras.ensure_for_folder(conn, "other", "Garden")  # Garden is registered as "garden"
    assert await conn.fetchval("SELECT count(*) FROM cameras") == 2


async def test_zones_are_stored_and_read_back_and_a_missing_camera_gives_none(conn: asyncpg.Connection) -> None:
    await cameras.create(conn, CameraCreate(id="front", name="Front"))
    zones = ZoneList(zones=[Zone(name="porch", polygon=[(0, 0), (0.5, 0), (0.5, 0.5)], sensitivity="high")])

    assert await cameras.set_zones(conn, "front", zones) == zones
    record = await cameras.get_record(conn, "front")
    assert record is not None and record.zones == zones.zones
    assert await cameras.set_zones(conn, "nowhere", zones) is None


async def test_deleting_a_camera_removes_its_rows_and_names_its_files_and_labels(conn: asyncpg.Connection) -> None:
    for camera_id in ("front", "back"):
        await cameras.create(conn, CameraCreate(id=camera_id, name=camera_id))
    image_ids = []
    for camera_id, name in (("front", "a"), ("front", "b"), ("back", "c")):
        image_id = await images.insert(
            conn,
            images.NewImage(
                camera_id,
                name.encode(),
                f"{camera_id}/{name}.jpg",
                "folder",
                None,
                "image/jpeg",
                8,
                8,
                1,
                T0,
                "filename",
            ),
        )
        assert image_id is not None
        image_ids.append(image_id)
        await detections.insert_many(conn, image_id, camera_id, T0, [Detection("person", 0.9, (0, 0, 1, 1))])
    await detections.insert_many(conn, image_ids[1], "front", T0, [Detection("car", 0.7, (0, 0, 1, 1))])
    await add_event(conn, image_ids[0], 10, "low", snapshot_path="snapshots/front.jpg")
    for camera_id, stored in (("front", "q/front.jpg"), ("front", None), ("back", "q/back.jpg")):
        await quarantine.record(
            conn,
            source="file",
            camera_id=camera_id,
            original_path="x",
            stored_path=stored,
            reason="bad",
            detail="d",
            size_bytes=1,
        )

    deleted = await cameras.delete(conn, "front")

    assert deleted is not None
    assert (deleted.camera_id, deleted.labels) == ("front", ["car", "person"])
    assert sorted(deleted.image_paths) == ["front/a.jpg", "front/b.jpg"]  # files of the other camera stay
    assert (deleted.snapshot_paths, deleted.quarantine_paths) == (["snapshots/front.jpg"], ["q/front.jpg"])
    for table in ("images", "detections", "events", "quarantine"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE camera_id = 'front'") == 0
    assert await conn.fetchval("SELECT count(*) FROM images WHERE camera_id = 'back'") == 1
    assert await conn.fetchval("SELECT count(*) FROM quarantine WHERE camera_id = 'back'") == 1
    assert await cameras.delete(conn, "front") is None


async def test_states_say_each_camera_as_stored_with_its_open_batch_latest_image_and_event(
    conn: asyncpg.Connection,
) -> None:
    for camera_id in ("front", "back"):
        await cameras.create(conn, CameraCreate(id=camera_id, name=camera_id))
    await cameras.patch(conn, "back", CameraPatch(enabled=False))
    image_ids = []
    for name, labels in (("a", ["person"]), ("b", ["person", "person", "car"])):
        image_id = await images.insert(
            conn,
            images.NewImage(
                "front", name.encode(), f"front/{name}.jpg", "folder", None, "image/jpeg", 8, 8, 1, T0, "filename"
            ),
        )
        assert image_id is not None
        dets = [Detection(label, 0.9, (0, 0, 1, 1)) for label in labels]
        await detections.insert_many(conn, image_id, "front", T0, dets)
        image_ids.append(image_id)
    quiet = await cameras.states_to_queue(conn)
    assert {cid: (s.risk_score, s.risk_level, s.objects, s.enabled, s.last_event_id) for cid, s in quiet.items()} == {
        "back": (0, "low", {}, False, None),
        "front": (0, "low", {}, True, None),
    }

    batch = await batches.open_new(conn, "front", T0)
    for image_id in image_ids:
        batch = await batches.add_images(conn, batch, [image_id], T0)
    open_batch = (await cameras.states_to_queue(conn, "front"))["front"]
    assert (open_batch.risk_score, open_batch.objects) == (0, {"person": 2, "car": 1})  # no event yet

    event_id = await add_event(conn, image_ids[1], 70, "high", batch_id=batch.id, is_fast_path=True)
    assert await cameras.states_to_queue(conn, "nowhere") == {}
    state = (await cameras.states_to_queue(conn, "front"))["front"]
    assert (state.risk_score, state.risk_level, state.objects, state.last_event_id, state.last_event_at) == (
        70,
        "high",
        {"person": 2, "car": 1},
        event_id,
        T0,
    )

    await batches.close(conn, batch.id, T0)
    closed = (await cameras.states_to_queue(conn))["front"]
    assert (closed.risk_score, closed.objects, closed.last_event_id) == (0, {}, event_id)


async def test_reading_the_states_to_queue_makes_the_open_batches_forget_the_state_they_sent(
    conn: asyncpg.Connection,
) -> None:
    """A path that queues the stored state (a PATCH, the republish after a broker connection)
    replaces what the broker retains: the camera's open batch must not skip its next live state as
    unchanged. Only the cameras read forget, and a closed batch keeps what it had."""
    for camera_id in ("front", "back"):
        await cameras.create(conn, CameraCreate(id=camera_id, name=camera_id))
    old = await batches.open_new(conn, "front", T0)
    await batches.close(conn, old.id, T0)
    front = await batches.open_new(conn, "front", T0)
    back = await batches.open_new(conn, "back", T0)
    for batch in (front, back, old):
        sql, args = batches.StateSent(batch.id, b"d" * 16).sql(1)
        await conn.execute(sql, *args)

    async def sent() -> dict[str, bytes | None]:
        rows = await conn.fetch("SELECT id, state_sent FROM batches")
        names = {front.id: "front", back.id: "back", old.id: "old"}
        return {names[r["id"]]: r["state_sent"] for r in rows}

    assert set(await cameras.states_to_queue(conn, "front")) == {"front"}
    assert await sent() == {"front": None, "back": b"d" * 16, "old": b"d" * 16}
    assert set(await cameras.states_to_queue(conn)) == {"back", "front"}
    assert await sent() == {"front": None, "back": None, "old": b"d" * 16}

"""Strangers: an unknown person seen again across events keeps one id (pipeline/identify.py,
migration 0009), with the real face and body models on real photos and the real database.

The two people of zidane.jpg come back in other views (brighter, mirrored) and are the same two
strangers, their visits counted; the astronaut is a new one; past the window they are new
again; two workers seeing one new stranger at once make one; the rules call a returning
unfamiliar face "seen 3 times since 22:10"."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import numpy as np
import pytest
from PIL import Image, ImageOps

from bench.roundtrips import RoundTrips
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection, Identity, Observation
from inference_server.embedding.matching import match_stranger
from inference_server.embedding.onnx_backend import OnnxEmbedder
from inference_server.pipeline.identify import PersonVectors, Recognizer
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import CameraCreate
from inference_server.store import batches, cameras, detections, images, people
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from inference_server.store.people import SIGHTINGS_PER_VISITOR, VISITOR_RECENT_IMAGES
from tests.support.waiting import wait_until

from ..conftest import auth_headers, drop, running

T0 = datetime(2026, 11, 24, 22, 10, tzinfo=UTC)
MODELS = {"face": "faceres-test", "body": "mnv2-test"}


@pytest.fixture(scope="module")
def views(pose_detector: UltralyticsDetector) -> dict[str, list[PersonVectors]]:
    """The people of each view, left to right in the original photo's frame."""
    face = OnnxEmbedder("face", demo_assets.embedder_model("face"))
    body = OnnxEmbedder("body", demo_assets.embedder_model("body"))
    recognizer = Recognizer(Settings(), {"face": face, "body": body}, MODELS)
    zidane = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
    astronaut = Image.open(demo_assets.image("astronaut.png")).convert("RGB")
    shown = {
        "zidane": (zidane, False),
        "zidane_brighter": (zidane.point(lambda v: min(255, int(v * 1.2))), False),
        "zidane_mirrored": (ImageOps.mirror(zidane), True),
        "astronaut": (astronaut, False),
    }
    out: dict[str, list[PersonVectors]] = {}
    for name, (image, mirrored) in shown.items():
        people = [d for d in pose_detector.detect([image])[0] if d.category == "person"]
        people.sort(key=lambda d: -d.bbox[0] if mirrored else d.bbox[0])
        found = recognizer._embed_now(image, people)
        assert all(v is not None for v in found)
        out[name] = [v for v in found if v is not None]
    recognizer.close()
    assert len(out["zidane"]) == len(out["zidane_mirrored"]) == 2 and len(out["astronaut"]) == 1
    return out


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 4)
    await migrate(pool)
    await pool.execute(
        "INSERT INTO cameras (id, name, folder) VALUES ('front', 'Front', 'front'), ('back', 'Back', 'back')"
    )
    try:
        yield pool
    finally:
        await pool.close()


async def _image(conn: asyncpg.Connection, camera_id: str, at: datetime, people: int) -> int:
    image_id = await images.insert(
        conn,
        images.NewImage(
            camera_id, f"{camera_id}{at}".encode(), "x.jpg", "folder", None, "image/jpeg", 8, 8, 1, at, "mtime"
        ),
    )
    assert image_id is not None
    dets = [Detection("person", 0.9, (0.1 * i, 0.1, 0.1 * i + 0.3, 0.9)) for i in range(people)]
    await detections.insert_many(conn, image_id, camera_id, at, dets)
    return image_id


async def _seen(
    pool: asyncpg.Pool, recognizer: Recognizer, camera_id: str, at: datetime, people: list[PersonVectors]
) -> list[Identity]:
    async with pool.acquire() as conn, conn.transaction():
        image_id = await _image(conn, camera_id, at, len(people))
        found, _ = await recognizer.identify(conn, camera_id, image_id, people)
    assert all(i is not None for i in found)
    return [i for i in found if i is not None]


async def test_the_same_unknown_people_keep_their_stranger_ids_across_events_and_cameras(
    pool: asyncpg.Pool, views: dict[str, list[PersonVectors]]
) -> None:
    recognizer = Recognizer(Settings(stranger_window_h=12, stranger_visit_gap_s=300), {}, MODELS)
    try:
        first = await _seen(pool, recognizer, "front", T0, views["zidane"])
        assert [i.visits for i in first] == [1, 1] and [i.stranger_link for i in first] == [None, None]
        assert first[0].stranger != first[1].stranger  # two people in one image: two strangers
        ids = [i.stranger for i in first]

        back = await _seen(pool, recognizer, "back", T0 + timedelta(minutes=30), views["zidane_brighter"])
        assert [i.stranger for i in back] == ids and [i.visits for i in back] == [2, 2]
        assert {i.stranger_link for i in back} <= {"face", "body"}
        assert [i.first_seen for i in back] == [T0, T0]

        # A minute later: the same visit, not a new one.
        same_visit = await _seen(pool, recognizer, "back", T0 + timedelta(minutes=31), views["zidane_brighter"])
        assert [i.stranger for i in same_visit] == ids and [i.visits for i in same_visit] == [2, 2]

        third = await _seen(pool, recognizer, "front", T0 + timedelta(hours=1, minutes=20), views["zidane_mirrored"])
        assert [i.stranger for i in third] == ids and [i.visits for i in third] == [3, 3]

        [other] = await _seen(pool, recognizer, "front", T0 + timedelta(hours=1, minutes=25), views["astronaut"])
        assert other.stranger not in ids and other.visits == 1

        # Past the window (12 h after their last sighting) they are new strangers.
        late = await _seen(pool, recognizer, "front", T0 + timedelta(hours=14), views["zidane"])
        assert not {i.stranger for i in late} & set(ids) and [i.visits for i in late] == [1, 1]

        stored = await pool.fetch("SELECT id, visits, first_seen FROM strangers ORDER BY id")
        assert [(r["visits"], r["first_seen"]) for r in stored[:2]] == [(3, T0), (3, T0)]
        assert len(stored) == 5

        # Each image read only the sightings committed since the one before (the worker keeps the
        # window's vectors): every stored stranger vector but the last image's, once each.
        vectors = [
            sum(v is not None for v in (p.face, p.body))
            for view in ("zidane", "zidane_brighter", "zidane_brighter", "zidane_mirrored", "astronaut", "zidane")
            for p in views[view]
        ]
        assert recognizer.strangers.read == sum(vectors[:-2])
    finally:
        recognizer.close()


async def test_a_new_sighting_is_written_into_the_strangers_matrices_not_rebuilt(
    pool: asyncpg.Pool, views: dict[str, list[PersonVectors]]
) -> None:
    """Each image reads the sightings committed since the one before; they join the matrices the
    worker holds (one row each) instead of every kept vector being copied into new ones."""
    recognizer = Recognizer(Settings(stranger_window_h=12), {}, MODELS)
    try:
        await _seen(pool, recognizer, "front", T0, views["zidane"])
        await _seen(pool, recognizer, "front", T0 + timedelta(minutes=1), views["zidane_brighter"])
        before = recognizer.strangers.sightings()
        await _seen(pool, recognizer, "front", T0 + timedelta(minutes=2), views["astronaut"])
        after = recognizer.strangers.sightings()
        for source in ("face", "body"):
            assert len(after.vectors[source]) > len(before.vectors[source])
            assert np.shares_memory(before.vectors[source], after.vectors[source])
    finally:
        recognizer.close()


async def test_detections_the_store_returned_are_not_read_back(
    pool: asyncpg.Pool, views: dict[str, list[PersonVectors]]
) -> None:
    """The store's statement returns the image's detection ids: identify given them (and the
    capture time) reads no detection back, and links as it does when it reads them."""
    recognizer = Recognizer(Settings(stranger_window_h=12, stranger_visit_gap_s=300), {}, MODELS)
    try:
        first = await _seen(pool, recognizer, "front", T0, views["zidane"])
        async with pool.acquire() as conn, conn.transaction():
            at = T0 + timedelta(minutes=30)
            image_id = await _image(conn, "front", at, 2)
            ids = await people.detection_ids(conn, image_id)
            with RoundTrips() as trips:
                found, _ = await recognizer.identify(
                    conn, "front", image_id, views["zidane_brighter"], [(i, at) for i in ids]
                )
        assert not [q for q in trips.by_statement if "FROM detections WHERE image_id" in q]
        assert [i.stranger for i in found if i is not None] == [i.stranger for i in first]
        assert [i.visits for i in found if i is not None] == [2, 2]
    finally:
        recognizer.close()


class _OpenBatch:
    """Images of one person or more joining camera "front"'s open batch one by one, each stored
    and identified in its own transaction, as the store path does."""

    def __init__(self, pool: asyncpg.Pool, recognizer: Recognizer) -> None:
        self.pool = pool
        self.recognizer = recognizer
        self.batch: batches.Batch | None = None

    async def seen(self, n: int, shown: list[PersonVectors]) -> list[Identity]:
        """Image ``n`` (``n`` seconds after T0) showing ``shown``: their identities."""
        at = T0 + timedelta(seconds=n)
        async with self.pool.acquire() as conn, conn.transaction():
            if self.batch is None:
                self.batch = await batches.open_new(conn, "front", T0)
            image_id = await _image(conn, "front", at, len(shown))
            self.batch = await batches.add_images(conn, self.batch, [image_id], at)
            found, _ = await self.recognizer.identify(conn, "front", image_id, shown)
        assert all(i is not None for i in found)
        return [i for i in found if i is not None]


async def test_a_visitor_in_a_long_batch_is_linked_from_its_latest_sightings_only(
    pool: asyncpg.Pool, views: dict[str, list[PersonVectors]]
) -> None:
    """Someone in view for a whole batch (4 frames a second, 90 s: 360 sightings) stays one
    visitor, and linking the next image reads a bounded number of their body vectors, the latest
    (as strangers keep theirs): before, every unknown sighting of the open batch, per image."""
    recognizer = Recognizer(Settings(), {}, MODELS)
    try:
        batch = _OpenBatch(pool, recognizer)
        visitors: list[int | None] = []
        for n in range(12):
            visitors += [i.visitor for i in await batch.seen(n, [views["zidane"][0], views["astronaut"][0]])]
        # Two people, each one visitor all along (the first sighting's detection names it).
        assert len(set(visitors[0::2])) == 1 and len(set(visitors[1::2])) == 1
        assert visitors[0] != visitors[1]
        async with pool.acquire() as conn:
            kept = await people.lock_strangers(conn, "front", MODELS["body"])
            latest = await conn.fetch(
                "SELECT di.visitor, d.id FROM detection_identities di JOIN detections d ON d.id = di.detection_id"
                " ORDER BY d.id DESC"
            )
        assert len(kept) == 2 * SIGHTINGS_PER_VISITOR, "bounded per visitor, not every sighting of the batch"
        for visitor in set(visitors):
            newest = [r["id"] for r in latest if r["visitor"] == visitor][:SIGHTINGS_PER_VISITOR]
            assert sorted(d for v, _, _, d in kept if v == visitor) == sorted(newest), "the latest ones"
    finally:
        recognizer.close()


async def test_someone_back_after_a_gap_in_the_batch_is_the_same_stranger_counted_once(
    pool: asyncpg.Pool, views: dict[str, list[PersonVectors]]
) -> None:
    """Visitors are linked from the batch's latest ``VISITOR_RECENT_IMAGES`` images (the read stays
    small however busy the batch): a person back after a longer gap is a new visitor, linked to
    the same stranger, and ``Identity.who`` (what the rules count) is the same person."""
    person, other = views["zidane"][0], views["astronaut"][0]
    recognizer = Recognizer(Settings(), {}, MODELS)
    try:
        batch = _OpenBatch(pool, recognizer)
        first = [(await batch.seen(n, [person]))[0] for n in range(2)]
        between = [(await batch.seen(2 + n, [other]))[0] for n in range(VISITOR_RECENT_IMAGES)]
        async with pool.acquire() as conn:
            candidates = await people.lock_strangers(conn, "front", MODELS["body"])
        assert {v for v, _, _, _ in candidates} == {between[0].visitor}, "only the latest images' visitors"
        [back] = await batch.seen(2 + VISITOR_RECENT_IMAGES, [person])
        assert first[0].visitor == first[1].visitor and back.visitor != first[0].visitor
        assert back.stranger == first[0].stranger and back.who == first[0].who
        assert between[0].who != back.who
    finally:
        recognizer.close()


async def test_two_workers_seeing_one_new_stranger_at_once_make_one(
    pool: asyncpg.Pool, views: dict[str, list[PersonVectors]]
) -> None:
    [astronaut] = views["astronaut"]
    first_worker = Recognizer(Settings(), {}, MODELS)
    second_worker = Recognizer(Settings(), {}, MODELS)
    try:
        async with pool.acquire() as conn, conn.transaction():
            image_id = await _image(conn, "front", T0, 1)
            [mine], _ = await first_worker.identify(conn, "front", image_id, [astronaut])
            # The second worker's transaction waits for this one's strangers before matching.
            other = asyncio.create_task(_seen(pool, second_worker, "back", T0 + timedelta(seconds=2), [astronaut]))
            await asyncio.sleep(0.5)
            assert not other.done()
        [theirs] = await asyncio.wait_for(other, 10)
        assert mine is not None and theirs.stranger == mine.stranger
        assert theirs.stranger_link == "face"
        assert await pool.fetchval("SELECT count(*) FROM strangers") == 1
    finally:
        first_worker.close()
        second_worker.close()


def test_a_face_that_does_not_match_overrules_a_body_that_does(views: dict[str, list[PersonVectors]]) -> None:
    [astronaut] = views["astronaut"]
    n = next(i for i, v in enumerate(views["zidane"]) if v.face is not None)  # the one whose face is seen
    seen = views["zidane"][n]
    assert seen.face is not None and seen.body is not None and astronaut.face is not None
    stranger = [(7, "face", seen.face.tolist()), (7, "body", seen.body.tolist())]
    # The same body (same clothes) with the astronaut's face: her face says it is someone else.
    assert match_stranger(stranger, astronaut.face, seen.body) is None
    # The same body without a face seen: linked by body.
    by_body = match_stranger(stranger, None, seen.body)
    assert by_body is not None and (by_body.stranger, by_body.source) == (7, "body")
    # A stranger seen only from behind (no face): a body match links even when a face is seen now.
    assert match_stranger([(8, "body", seen.body.tolist())], astronaut.face, seen.body) is not None
    brighter = views["zidane_brighter"][n]
    by_face = match_stranger(stranger, brighter.face, brighter.body)
    assert by_face is not None and (by_face.stranger, by_face.source) == (7, "face") and by_face.similarity >= 0.70


def test_rules_call_a_returning_unfamiliar_face_seen_n_times_since_its_first_visit() -> None:
    rules = RulesReasoner(LevelThresholds(30, 60, 85))
    berlin = ZoneInfo("Europe/Berlin")
    at = datetime(2026, 11, 25, 2, 10, tzinfo=berlin)
    first_seen = datetime(2026, 11, 24, 21, 10, tzinfo=UTC)  # 22:10 in Berlin
    returning = Identity("face", visitor=9, stranger=4, visits=3, first_seen=first_seen, stranger_link="face")
    once = Identity("face", visitor=9, stranger=4, visits=1, first_seen=first_seen)

    def judge(identity: Identity, enrolled: int = 1) -> dict[str, object]:
        obs = Observation(
            "back",
            "Back Door",
            at,
            [Detection("person", 0.9, (0.3, 0.2, 0.6, 0.95))],
            identities=[identity],
            enrolled_people=enrolled,
        )
        got = rules.assess_now(obs)
        return {"factors": {f.name: f.points for f in got.factors}, "summary": got.summary, "score": got.risk_score}

    back, first = judge(returning), judge(once)
    assert back["factors"]["returned_stranger"] > 0  # type: ignore[index]
    assert "returned_stranger" not in first["factors"]  # type: ignore[operator]
    assert back["score"] > first["score"]  # type: ignore[operator]
    assert str(back["summary"]).startswith("an unfamiliar person (seen 3 times since 22:10) at Back Door at 02:10")
    assert "seen 3 times" not in str(first["summary"])
    # Before the household enrolled anyone, nobody is "unfamiliar", returning or not.
    assert "returned_stranger" not in judge(returning, enrolled=0)["factors"]  # type: ignore[operator]


async def test_a_returning_stranger_in_the_event_payload_rest_and_mqtt_without_vectors(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, tmp_path: Path
) -> None:
    """The whole server: zidane.jpg's two people at the front door at 22:10, at the back door at
    22:40 (brighter), at the front door at 23:30 (mirrored), with Anna enrolled."""
    settings = make_settings(
        face_embedder_model=demo_assets.embedder_model("face"), body_embedder_model=demo_assets.embedder_model("body")
    )
    zidane = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
    shots = [
        ("front_door", "221000", zidane),
        ("back_door", "224000", zidane.point(lambda v: min(255, int(v * 1.2)))),
        ("front_door", "233000", ImageOps.mirror(zidane)),
    ]
    async with running(settings, pose_detector) as server:
        for camera_id in ("front_door", "back_door"):
            await cameras.create(server.pool, CameraCreate(id=camera_id, name=camera_id.replace("_", " ").title()))
        anna = await people.create(server.pool, "Anna", None)
        astronaut = Image.open(demo_assets.image("astronaut.png")).convert("RGB")
        assert server.enroller is not None
        buf = io.BytesIO()
        astronaut.save(buf, format="PNG")
        await people.add_embeddings(
            server.pool, anna.id, await server.enroller.vectors(buf.getvalue()), origin="upload"
        )
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            events = []
            for n, (camera_id, clock, image) in enumerate(shots):
                source = tmp_path / f"shot{n}.jpg"
                image.save(source, format="JPEG", quality=92)
                drop(source, settings.cameras_path / camera_id / f"MDAlarm_20261124-{clock}.jpg")
                event_id = await wait_until(
                    lambda n=n: server.pool.fetchval(
                        "SELECT id FROM events WHERE ended_at IS NOT NULL ORDER BY started_at OFFSET $1", n
                    ),
                    what=f"event {n + 1}",
                )
                async with http.get(f"/api/v1/events/{event_id}") as resp:
                    assert resp.status == 200
                    events.append(await resp.json())

        first, _second, third = events
        before = {d["identity"]["stranger"] for d in first["detections"]}
        identities = [d["identity"] for d in third["detections"]]
        assert {i["stranger"] for i in identities} == before and all(s.startswith("S-") for s in before)
        assert [i["visits"] for i in identities] == [3, 3]
        assert {i["first_seen"] for i in identities} == {"2026-11-24T22:10:00Z"}
        face_seen = [d for d in third["detections"] if d["identity"]["source"] == "face"]
        assert face_seen, "one of the two shows a face"
        factors = {f["name"]: f["points"] for f in third["risk_factors"]}
        assert factors["returned_stranger"] > 0 and factors["unfamiliar_person"] > 0
        assert "unfamiliar people (seen 3 times since 22:10)" in third["summary"], third["summary"]
        assert "returned_stranger" not in {f["name"] for f in first["risk_factors"]}

        # What goes to MQTT is the outbox's bytes: the identities, never a vector.
        payloads = [
            json.loads(r["payload"])
            for r in await server.pool.fetch("SELECT payload FROM outbox WHERE topic LIKE '%/events' ORDER BY id")
        ]
        last = [p for p in payloads if p["id"] == third["id"]][-1]
        assert {d["identity"]["stranger"] for d in last["detections"]} == before
        text = json.dumps(payloads)
        assert "vector" not in text and "embedding" not in text

"""store/people.py and migration 0006 in the real database: forgetting a person deletes every
embedding of theirs (and the recognitions that named them); deleting a detection (retention)
deletes its embeddings; names and person entities are unique."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from bench.roundtrips import RoundTrips
from inference_server.config import Settings
from inference_server.domain import Detection, Identity
from inference_server.store import detections, images, people
from inference_server.store.retention import run_retention

T0 = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
FACE = [0.1] * 1024
BODY = [0.2] * 1280


async def _person_detection(conn: asyncpg.Connection) -> int:
    image_id = await images.insert(
        conn, images.NewImage("front", b"x", "x.jpg", "folder", None, "image/jpeg", 8, 8, 1, T0, "mtime")
    )
    assert image_id is not None
    await detections.insert_many(conn, image_id, "front", T0, [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9))])
    [detection_id] = await people.detection_ids(conn, image_id)
    return detection_id


async def _count(conn: asyncpg.Connection, table: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


async def test_forgetting_a_person_deletes_every_embedding_and_recognition_of_theirs(conn: asyncpg.Connection) -> None:
    anna = await people.create(conn, "Anna", "person.anna")
    ben = await people.create(conn, "Ben", None)
    await people.add_embeddings(conn, anna.id, [("face", "faceres-x", FACE), ("body", "mnv2-x", BODY)], origin="upload")
    await people.add_embeddings(conn, ben.id, [("face", "faceres-x", FACE)], origin="upload")
    detection_id = await _person_detection(conn)
    await people.store_detection(
        conn, detection_id, [("face", "faceres-x", FACE)], Identity("face", anna.id, similarity=0.9)
    )
    assert (await people.get(conn, anna.id)).embeddings == {"face": 1, "body": 1}  # type: ignore[union-attr]

    assert await people.delete(conn, anna.id) is True
    rows = await conn.fetch("SELECT person_id FROM person_embeddings")
    assert [r["person_id"] for r in rows] == [ben.id]  # Anna's two are gone, Ben's stays
    assert await _count(conn, "detection_identities") == 0  # the recognition that named her
    assert await _count(conn, "detection_embeddings") == 1  # the detection's own vector stays (retention's)
    assert await people.get(conn, anna.id) is None
    assert await people.delete(conn, anna.id) is False


async def test_deleting_a_detection_deletes_its_embeddings_and_identity(conn: asyncpg.Connection) -> None:
    detection_id = await _person_detection(conn)
    await people.store_detection(
        conn, detection_id, [("face", "m", FACE), ("body", "m", BODY)], Identity("face", visitor=detection_id)
    )
    assert await _count(conn, "detection_embeddings") == 2
    await conn.execute("DELETE FROM detections WHERE id = $1", detection_id)  # as retention does
    assert await _count(conn, "detection_embeddings") == 0
    assert await _count(conn, "detection_identities") == 0


async def test_enrolled_from_a_detection_the_embedding_outlives_the_detection(conn: asyncpg.Connection) -> None:
    anna = await people.create(conn, "Anna", None)
    detection_id = await _person_detection(conn)
    await people.store_detection(conn, detection_id, [("body", "m", BODY)], Identity("body", visitor=detection_id))
    vectors = await people.detection_vectors(conn, detection_id)
    assert [(s, m, len(v)) for s, m, v in vectors] == [("body", "m", 1280)]
    await people.add_embeddings(conn, anna.id, vectors, origin="detection", detection_id=detection_id)
    await conn.execute("DELETE FROM detections WHERE id = $1", detection_id)
    row = await conn.fetchrow("SELECT origin, detection_id, octet_length(vector) / 4 AS n FROM person_embeddings")
    assert dict(row) == {"origin": "detection", "detection_id": None, "n": 1280}


async def test_names_and_person_entities_are_unique(conn: asyncpg.Connection) -> None:
    await people.create(conn, "Anna", "person.anna")
    with pytest.raises(people.PersonExists):
        await people.create(conn, "anna", None)  # names compare case-insensitively
    with pytest.raises(people.PersonExists):
        await people.create(conn, "Anne", "person.anna")
    ben = await people.create(conn, "Ben", None)
    with pytest.raises(people.PersonExists):
        await people.update(conn, ben.id, name="ANNA", entity_id=None, clear_entity=False)
    renamed = await people.update(conn, ben.id, name="Benjamin", entity_id="person.ben", clear_entity=False)
    assert renamed is not None and (renamed.name, renamed.entity_id) == ("Benjamin", "person.ben")
    cleared = await people.update(conn, ben.id, name=None, entity_id=None, clear_entity=True)
    assert cleared is not None and (cleared.name, cleared.entity_id) == ("Benjamin", None)


async def test_the_gallery_holds_only_vectors_of_the_current_models(conn: asyncpg.Connection) -> None:
    anna = await people.create(conn, "Anna", None)
    await people.add_embeddings(
        conn, anna.id, [("face", "new", FACE), ("face", "old", FACE), ("body", "new-body", BODY)], origin="upload"
    )
    got = await people.gallery(conn, {"face": "new", "body": "new-body"})
    assert [(p, s, len(v)) for p, s, v in got] == [(anna.id, "face", 1024), (anna.id, "body", 1280)]
    assert await people.enrolled_count(conn) == 1


async def test_a_vector_of_impossible_size_is_refused(conn: asyncpg.Connection) -> None:
    anna = await people.create(conn, "Anna", None)
    with pytest.raises(asyncpg.CheckViolationError):
        await people.add_embeddings(conn, anna.id, [("face", "m", [0.5] * 3)], origin="upload")


async def test_retention_prunes_the_embeddings_of_old_detections_and_keeps_enrolled_ones(
    conn: asyncpg.Connection, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, retention_days=7)
    old, new = T0 - timedelta(days=30), T0
    ids = {}
    for name, received in (("old", old), ("new", new)):
        image_id = await images.insert(
            conn,
            images.NewImage(
                "front", name.encode(), f"{name}.jpg", "folder", None, "image/jpeg", 8, 8, 1, received, "mtime"
            ),
        )
        assert image_id is not None
        await conn.execute("UPDATE images SET received_at = $2 WHERE id = $1", image_id, received)
        await detections.insert_many(
            conn, image_id, "front", received, [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9))]
        )
        [ids[name]] = await people.detection_ids(conn, image_id)
        await people.store_detection(conn, ids[name], [("body", "m", BODY)], Identity("body", visitor=ids[name]))
    anna = await people.create(conn, "Anna", None)
    await people.add_embeddings(
        conn, anna.id, await people.detection_vectors(conn, ids["old"]), origin="detection", detection_id=ids["old"]
    )

    report = await run_retention(pool, settings, now=T0 + timedelta(hours=1))
    assert report.detections == 1
    left = await conn.fetch("SELECT detection_id FROM detection_embeddings")
    assert [r["detection_id"] for r in left] == [ids["new"]]  # the old detection's vector went with it
    assert await _count(conn, "detection_identities") == 1
    assert await people.embedding_count(conn, anna.id) == 1  # what was enrolled from it stays hers


async def test_retention_prunes_a_strangers_vectors_with_its_sightings_then_the_stranger(
    conn: asyncpg.Connection, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, retention_days=7)
    old, new = T0 - timedelta(days=30), T0
    gone = await people.new_stranger(conn, old)
    kept = await people.new_stranger(conn, old)
    for n, (stranger, received) in enumerate(((gone, old), (kept, old), (kept, new))):
        image_id = await images.insert(
            conn,
            images.NewImage("front", bytes([n]), f"{n}.jpg", "folder", None, "image/jpeg", 8, 8, 1, received, "mtime"),
        )
        assert image_id is not None
        await conn.execute("UPDATE images SET received_at = $2 WHERE id = $1", image_id, received)
        await detections.insert_many(
            conn, image_id, "front", received, [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9))]
        )
        [detection_id] = await people.detection_ids(conn, image_id)
        identity = Identity("face", visitor=detection_id, stranger=stranger)
        await people.store_detection(conn, detection_id, [("face", "m", FACE), ("body", "m", BODY)], identity)
    await people.saw_stranger(conn, kept, new, 300)

    report = await run_retention(pool, settings, now=T0 + timedelta(hours=1))
    assert report.detections == 2 and report.strangers == 1
    left = await conn.fetch(
        "SELECT di.stranger_id, count(*) AS n FROM detection_embeddings de"
        " JOIN detection_identities di USING (detection_id) GROUP BY 1"
    )
    assert [(r["stranger_id"], r["n"]) for r in left] == [(kept, 2)]  # only the recent sighting's vectors
    assert [r["id"] for r in await conn.fetch("SELECT id FROM strangers")] == [kept]
    assert (await run_retention(pool, settings, now=T0 + timedelta(hours=1))).strangers == 0


async def test_an_images_people_are_stored_in_one_statement_as_given(conn: asyncpg.Connection) -> None:
    """Vectors of different lengths (a face's, a body's) each back whole, as float32, and in its
    place; the strangers' sightings numbered in the people's order, the others not numbered."""
    image_id = await images.insert(
        conn, images.NewImage("front", b"x", "x.jpg", "folder", None, "image/jpeg", 8, 8, 1, T0, "mtime")
    )
    assert image_id is not None
    boxes = [Detection("person", 0.9 - n / 10, (0.1 * n, 0.1, 0.1 * n + 0.1, 0.9)) for n in range(4)]
    await detections.insert_many(conn, image_id, "front", T0, boxes)
    ids = await people.detection_ids(conn, image_id)
    anna = await people.create(conn, "Anna", None)
    first, second = await people.new_stranger(conn, T0), await people.new_stranger(conn, T0)
    face = [float(n) for n in range(1024)]
    body = [float(-n) for n in range(1280)]
    rows = [
        (ids[0], [("face", "f", face), ("body", "b", body)], Identity("face", visitor=ids[0], stranger=second)),
        (ids[1], [("body", "b", body[:300])], Identity("body", anna.id, similarity=0.8)),
        (ids[2], [("face", "f", face[:16])], Identity("face", visitor=ids[2], stranger=first, stranger_link="face")),
        (ids[3], [], Identity("body", visitor=ids[3])),
    ]
    await people.store_detections(conn, rows[:1])  # type: ignore[arg-type]  # (asyncpg learns the types once)
    trips = RoundTrips()
    with trips:
        await people.store_detections(conn, rows[1:])  # type: ignore[arg-type]
    assert trips.count == 1  # three people, one statement
    for detection_id, vectors, _ in rows:
        back = await people.detection_vectors(conn, detection_id)
        assert all(v.dtype == np.float32 for _, _, v in back)
        assert [(s, m, v.tolist()) for s, m, v in back] == sorted(vectors)  # by source, as stored
    stored = await conn.fetch(
        "SELECT detection_id, person_id, similarity, source, visitor, stranger_id, stranger_link, stranger_seq"
        " FROM detection_identities ORDER BY detection_id"
    )
    assert [(r["person_id"], r["source"], r["visitor"], r["stranger_id"], r["stranger_link"]) for r in stored] == [
        (None, "face", ids[0], second, None),
        (anna.id, "body", None, None, None),
        (None, "face", ids[2], first, "face"),
        (None, "body", ids[3], None, None),
    ]
    seqs = [r["stranger_seq"] for r in stored]
    assert seqs[1] is None and seqs[3] is None and seqs[0] < seqs[2]
    assert abs(stored[1]["similarity"] - 0.8) < 1e-6

"""people, person_embeddings, detection_embeddings and detection_identities tables.

Embeddings are ``bytea``: float32 values, big-endian (migration 0013), read with NumPy; nothing
here compares them (``embedding/matching.py`` does, in memory). Only this module reads a vector
back, and only for the server's own matching and enrolment: REST and MQTT carry counts, never
vectors (docs/privacy.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import numpy as np

from inference_server.domain import Identity

Source = Literal["face", "body"]
#: A vector as read back: float32 in the machine's order.
Vector = np.ndarray[Any, np.dtype[np.float32]]
#: A vector as stored (migration 0013): float32, big-endian, as PostgreSQL's ``float4send``.
STORED = np.dtype(">f4")


def vector_bytes(vector: Sequence[float] | Vector) -> bytes:
    return np.asarray(vector, dtype=STORED).tobytes()


def vector_of(data: bytes) -> Vector:
    return np.frombuffer(data, dtype=STORED).astype(np.float32)


class PersonExists(ValueError):
    """Another person has that name or Home Assistant entity."""


@dataclass(frozen=True, slots=True)
class Person:
    id: int
    name: str
    entity_id: str | None
    created_at: datetime
    #: Embeddings stored per source ({"face": 2, "body": 3}).
    embeddings: dict[str, int]


_PERSON = (
    "SELECT p.id, p.name, p.entity_id, p.created_at,"
    " COALESCE((SELECT jsonb_object_agg(source, n) FROM (SELECT source, count(*) AS n FROM person_embeddings"
    "   WHERE person_id = p.id GROUP BY source) c), '{}'::jsonb) AS embeddings FROM people p"
)


def _person(row: asyncpg.Record) -> Person:
    embeddings = row["embeddings"]
    if isinstance(embeddings, str):  # jsonb without a codec arrives as text
        embeddings = json.loads(embeddings)
    return Person(row["id"], row["name"], row["entity_id"], row["created_at"], dict(embeddings))


async def create(conn: asyncpg.Connection | asyncpg.Pool, name: str, entity_id: str | None) -> Person:
    try:
        person_id = await conn.fetchval(
            "INSERT INTO people (name, entity_id) VALUES ($1, $2) RETURNING id", name, entity_id
        )
    except asyncpg.UniqueViolationError as err:
        raise PersonExists(f"a person named {name!r} or with entity {entity_id!r} exists") from err
    person = await get(conn, person_id)
    assert person is not None
    return person


async def get(conn: asyncpg.Connection | asyncpg.Pool, person_id: int) -> Person | None:
    row = await conn.fetchrow(f"{_PERSON} WHERE p.id = $1", person_id)
    return _person(row) if row is not None else None


async def list_all(conn: asyncpg.Connection | asyncpg.Pool) -> list[Person]:
    return [_person(r) for r in await conn.fetch(f"{_PERSON} ORDER BY lower(p.name)")]


async def update(
    conn: asyncpg.Connection | asyncpg.Pool,
    person_id: int,
    *,
    name: str | None,
    entity_id: str | None,
    clear_entity: bool,
) -> Person | None:
    try:
        done = await conn.fetchval(
            "UPDATE people SET name = COALESCE($2, name),"
            " entity_id = CASE WHEN $4 THEN NULL ELSE COALESCE($3, entity_id) END WHERE id = $1 RETURNING id",
            person_id,
            name,
            entity_id,
            clear_entity,
        )
    except asyncpg.UniqueViolationError as err:
        raise PersonExists(f"a person named {name!r} or with entity {entity_id!r} exists") from err
    return await get(conn, person_id) if done is not None else None


async def delete(conn: asyncpg.Connection | asyncpg.Pool, person_id: int) -> bool:
    """Deletes the person, every embedding of theirs and every identity that named them (cascade)."""
    return await conn.fetchval("DELETE FROM people WHERE id = $1 RETURNING id", person_id) is not None


async def add_embeddings(
    conn: asyncpg.Connection | asyncpg.Pool,
    person_id: int,
    vectors: Iterable[tuple[Source, str, Sequence[float] | Vector]],
    *,
    origin: Literal["upload", "detection"],
    detection_id: int | None = None,
) -> int:
    rows = [(person_id, source, model, vector_bytes(v), origin, detection_id) for source, model, v in vectors]
    await conn.executemany(
        "INSERT INTO person_embeddings (person_id, source, model, vector, origin, detection_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        rows,
    )
    return len(rows)


async def gallery(conn: asyncpg.Connection | asyncpg.Pool, models: dict[str, str]) -> list[tuple[int, Source, Vector]]:
    """Every enrolled embedding made by the current model of its source (``models``: source → model)."""
    rows = await conn.fetch(
        "SELECT person_id, source, vector FROM person_embeddings WHERE (source = 'face' AND model = $1)"
        " OR (source = 'body' AND model = $2) ORDER BY id",
        models.get("face", ""),
        models.get("body", ""),
    )
    return [(r["person_id"], r["source"], vector_of(r["vector"])) for r in rows]


#: NOTIFY channel of every change to people or person_embeddings (migration 0009's triggers: sent
#: in the changing transaction, so it arrives when the change commits).
CHANGES_CHANNEL = "hsi_people"


async def household_version(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Moves at every change to people or person_embeddings (migration 0009's triggers)."""
    return int(await conn.fetchval("SELECT n FROM people_version"))


async def names(conn: asyncpg.Connection | asyncpg.Pool) -> dict[int, tuple[str, str | None]]:
    return {r["id"]: (r["name"], r["entity_id"]) for r in await conn.fetch("SELECT id, name, entity_id FROM people")}


# --- detections ----------------------------------------------------------------------------------
async def detection_ids(conn: asyncpg.Connection, image_id: int) -> list[int]:
    """The image's detection ids in insertion order (the order ``detections.insert_many`` was given)."""
    return [r["id"] for r in await conn.fetch("SELECT id FROM detections WHERE image_id = $1 ORDER BY id", image_id)]


async def detections_seen(conn: asyncpg.Connection, image_id: int) -> list[tuple[int, datetime]]:
    """The image's detection ids and capture times in insertion order (as ``detection_ids``)."""
    rows = await conn.fetch("SELECT id, detected_at FROM detections WHERE image_id = $1 ORDER BY id", image_id)
    return [(r["id"], r["detected_at"]) for r in rows]


async def store_detection(
    conn: asyncpg.Connection,
    detection_id: int,
    vectors: Iterable[tuple[Source, str, Sequence[float] | Vector]],
    identity: Identity,
) -> None:
    """One detection's vectors and identity (``store_detections`` of one)."""
    await store_detections(conn, [(detection_id, vectors, identity)])


async def store_detections(
    conn: asyncpg.Connection,
    rows: Sequence[tuple[int, Iterable[tuple[Source, str, Sequence[float] | Vector]], Identity]],
) -> None:
    """Each detection's vectors and identity (an image's people), in one statement. A stranger's
    sighting is numbered (``stranger_seq``) in ``rows``' order."""
    if not rows:
        return
    owners: list[int] = []
    sources: list[str] = []
    models: list[str] = []
    stored: list[bytes] = []
    for detection_id, vectors, _ in rows:
        for source, model, vector in vectors:
            owners.append(detection_id)
            sources.append(source)
            models.append(model)
            stored.append(vector_bytes(vector))
    identities = [identity for _, _, identity in rows]
    await conn.execute(
        "WITH vectors AS (INSERT INTO detection_embeddings (detection_id, source, model, vector)"
        " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[]))"
        " INSERT INTO detection_identities (detection_id, person_id, similarity, source, visitor, stranger_id,"
        " stranger_link, stranger_seq)"
        " SELECT i.detection_id, i.person_id, i.similarity, i.source, i.visitor, i.stranger_id, i.stranger_link,"
        "  CASE WHEN i.stranger_id IS NULL THEN NULL ELSE nextval('stranger_sightings_seq') END"
        " FROM unnest($5::bigint[], $6::bigint[], $7::real[], $8::text[], $9::bigint[], $10::bigint[], $11::text[])"
        "  WITH ORDINALITY AS i(detection_id, person_id, similarity, source, visitor, stranger_id, stranger_link, n)"
        " ORDER BY i.n",
        owners,
        sources,
        models,
        stored,
        [detection_id for detection_id, _, _ in rows],
        [i.person_id for i in identities],
        [i.similarity for i in identities],
        [i.source for i in identities],
        [i.visitor for i in identities],
        [i.stranger for i in identities],
        [i.stranger_link for i in identities],
    )


async def detection_vectors(
    conn: asyncpg.Connection | asyncpg.Pool, detection_id: int
) -> list[tuple[Source, str, Vector]]:
    rows = await conn.fetch(
        "SELECT source, model, vector FROM detection_embeddings WHERE detection_id = $1 ORDER BY source", detection_id
    )
    return [(r["source"], r["model"], vector_of(r["vector"])) for r in rows]


#: Body vectors of each visitor of the open batch that linking an unknown person compares with:
#: their latest sightings (as ``identify.SIGHTINGS_PER_STRANGER`` for strangers), so an image's
#: read stays bounded however long someone stays in view.
SIGHTINGS_PER_VISITOR = 4
#: The open batch's latest images whose unknown sightings are candidates: the same person in the
#: frames just before. Someone back after a longer gap becomes a new visitor of the batch, linked
#: to the same stranger by the strangers' matching (and counted once: ``Identity.who``). Without
#: it, linking ranked every unknown sighting of the batch (2.3-2.6 ms of PostgreSQL an image with
#: three people in view, at the end of a 90 s window: docs/performance.md, stop 31).
VISITOR_RECENT_IMAGES = 32


#: (visitor, body vector, stranger, detection) of the unknown people seen in camera $1's open
#: batch's latest $4 images by body model $2: each visitor's latest $3 sightings.
_VISITORS = (
    "SELECT visitor, vector, stranger_id, detection_id FROM ("
    " SELECT di.visitor, de.vector, di.stranger_id, d.id AS detection_id,"
    "  row_number() OVER (PARTITION BY di.visitor ORDER BY d.id DESC) AS nth"
    " FROM (SELECT bi.image_id FROM batches b JOIN batch_images bi ON bi.batch_id = b.id"
    "  WHERE b.camera_id = $1 AND b.closed_at IS NULL ORDER BY bi.image_id DESC LIMIT $4) AS recent"
    " JOIN detections d ON d.image_id = recent.image_id JOIN detection_identities di ON di.detection_id = d.id"
    " JOIN detection_embeddings de ON de.detection_id = d.id AND de.source = 'body' AND de.model = $2"
    " WHERE di.person_id IS NULL AND di.visitor IS NOT NULL"
    ") AS seen WHERE nth <= $3"
)


def _visitors(rows: Iterable[asyncpg.Record]) -> list[tuple[int, Vector, int | None, int]]:
    return [
        (r["visitor"], vector_of(r["vector"]), r["stranger_id"], r["detection_id"])
        for r in rows
        if r["visitor"] is not None
    ]


# --- strangers (migration 0009) -------------------------------------------------------------------
#: Transaction lock that serialises linking strangers across worker processes: two workers seeing
#: the same new stranger at once would otherwise make two.
_STRANGERS_LOCK = 0x4853_4953_5452  # "HSISTR"


async def lock_strangers(
    conn: asyncpg.Connection, camera_id: str | None = None, model: str | None = None
) -> list[tuple[int, Vector, int | None, int]]:
    """Held until the caller's transaction ends: whoever stores a stranger's sighting holds it, so
    ``stranger_seq`` (taken while holding it) follows the order the sightings commit in. Given a
    camera and a body model, the same statement reads its unknown visitors (one round trip
    for both: the statement's snapshot is taken before the lock, as a read before it would be):
    (visitor, body vector, stranger, detection) of the unknown people seen in the camera's open
    batch's latest ``VISITOR_RECENT_IMAGES`` images, each visitor's latest
    ``SIGHTINGS_PER_VISITOR`` sightings, in detection order."""
    if camera_id is None or model is None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _STRANGERS_LOCK)
        return []
    rows = await conn.fetch(
        "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock($5))"
        f" SELECT seen.* FROM locked LEFT JOIN ({_VISITORS}) AS seen ON true ORDER BY seen.detection_id",
        camera_id,
        model,
        SIGHTINGS_PER_VISITOR,
        VISITOR_RECENT_IMAGES,
        _STRANGERS_LOCK,
    )
    return _visitors(rows)


async def stranger_sightings(
    conn: asyncpg.Connection, after: int, since: datetime | None, models: dict[str, str]
) -> list[tuple[int, int, Source, datetime, Vector]]:
    """(seq, stranger, source, seen at, vector) of the strangers' sightings numbered after ``after``
    (of strangers seen since ``since``, when given), made by the current models, in seq order."""
    rows = await conn.fetch(
        "SELECT di.stranger_seq, di.stranger_id, de.source, d.detected_at, de.vector"
        " FROM detection_identities di JOIN strangers s ON s.id = di.stranger_id"
        " JOIN detections d ON d.id = di.detection_id"
        " JOIN detection_embeddings de ON de.detection_id = di.detection_id"
        " WHERE di.stranger_seq > $1 AND ($2::timestamptz IS NULL OR s.last_seen >= $2)"
        "  AND ((de.source = 'face' AND de.model = $3) OR (de.source = 'body' AND de.model = $4))"
        " ORDER BY di.stranger_seq",
        after,
        since,
        models.get("face", ""),
        models.get("body", ""),
    )
    return [(r["stranger_seq"], r["stranger_id"], r["source"], r["detected_at"], vector_of(r["vector"])) for r in rows]


async def new_stranger(conn: asyncpg.Connection, seen_at: datetime) -> int:
    return int(
        await conn.fetchval("INSERT INTO strangers (first_seen, last_seen) VALUES ($1, $1) RETURNING id", seen_at)
    )


async def saw_stranger(
    conn: asyncpg.Connection, stranger_id: int, seen_at: datetime, visit_gap_s: float
) -> tuple[int, datetime] | None:
    """Records a sighting of the stranger: a new visit when it is more than ``visit_gap_s`` after
    the last one. Their visits and first sighting; None when the stranger does not exist (any
    more: deleted by retention, or never committed)."""
    row = await conn.fetchrow(
        "UPDATE strangers SET visits = visits + CASE WHEN $2 > last_seen + make_interval(secs => $3) THEN 1 ELSE 0 END,"
        " last_seen = greatest(last_seen, $2), first_seen = least(first_seen, $2) WHERE id = $1"
        " RETURNING visits, first_seen",
        stranger_id,
        seen_at,
        visit_gap_s,
    )
    return None if row is None else (int(row["visits"]), row["first_seen"])


async def stranger_visits(conn: asyncpg.Connection, stranger_id: int) -> tuple[int, datetime]:
    row = await conn.fetchrow("SELECT visits, first_seen FROM strangers WHERE id = $1", stranger_id)
    assert row is not None
    return int(row["visits"]), row["first_seen"]


async def identities(conn: asyncpg.Connection | asyncpg.Pool, detection_ids: Sequence[int]) -> dict[int, Identity]:
    rows = await conn.fetch(
        "SELECT di.detection_id, di.person_id, di.similarity, di.source, di.visitor, p.name, p.entity_id,"
        " di.stranger_id, di.stranger_link, s.visits, s.first_seen"
        " FROM detection_identities di LEFT JOIN people p ON p.id = di.person_id"
        " LEFT JOIN strangers s ON s.id = di.stranger_id"
        " WHERE di.detection_id = ANY($1::bigint[])",
        list(detection_ids),
    )
    return {
        r["detection_id"]: Identity(
            source=r["source"],
            person_id=r["person_id"],
            name=r["name"],
            entity_id=r["entity_id"],
            similarity=None if r["similarity"] is None else round(float(r["similarity"]), 4),
            visitor=r["visitor"],
            stranger=r["stranger_id"],
            visits=r["visits"],
            first_seen=r["first_seen"],
            stranger_link=r["stranger_link"],
        )
        for r in rows
    }


async def embedding_count(conn: asyncpg.Connection | asyncpg.Pool, person_id: int) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM person_embeddings WHERE person_id = $1", person_id))


async def enrolled_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """People with at least one embedding: the household recognition knows."""
    return int(await conn.fetchval("SELECT count(DISTINCT person_id) FROM person_embeddings"))


async def event_detection(conn: asyncpg.Connection | asyncpg.Pool, event_id: object, n: int) -> int | None:
    """The id of the event's ``n``-th detection, in the order the event lists them (``events._SELECT``)."""
    value = await conn.fetchval(
        "SELECT d.id FROM events e JOIN detections d ON d.image_id = e.image_id WHERE e.id = $1"
        " ORDER BY d.confidence DESC, d.id OFFSET $2 LIMIT 1",
        event_id,
        n,
    )
    return None if value is None else int(value)

"""people, person_embeddings, detection_embeddings and detection_identities tables.

Embeddings are ``real[]``; nothing here compares them (``embedding/matching.py`` does, in
memory). Only this module reads a vector back, and only for the server's own matching and
enrolment: REST and MQTT carry counts, never vectors (docs/privacy.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from inference_server.domain import Identity

Source = Literal["face", "body"]


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
    vectors: Iterable[tuple[Source, str, Sequence[float]]],
    *,
    origin: Literal["upload", "detection"],
    detection_id: int | None = None,
) -> int:
    rows = [(person_id, source, model, list(map(float, v)), origin, detection_id) for source, model, v in vectors]
    await conn.executemany(
        "INSERT INTO person_embeddings (person_id, source, model, vector, origin, detection_id)"
        " VALUES ($1, $2, $3, $4::real[], $5, $6)",
        rows,
    )
    return len(rows)


async def gallery(
    conn: asyncpg.Connection | asyncpg.Pool, models: dict[str, str]
) -> list[tuple[int, Source, list[float]]]:
    """Every enrolled embedding made by the current model of its source (``models``: source → model)."""
    rows = await conn.fetch(
        "SELECT person_id, source, vector FROM person_embeddings WHERE (source = 'face' AND model = $1)"
        " OR (source = 'body' AND model = $2) ORDER BY id",
        models.get("face", ""),
        models.get("body", ""),
    )
    return [(r["person_id"], r["source"], list(r["vector"])) for r in rows]


async def gallery_version(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[int, int]:
    """Changes whenever an embedding is added or removed (its newest id and its count)."""
    row = await conn.fetchrow("SELECT COALESCE(max(id), 0) AS newest, count(*) AS n FROM person_embeddings")
    assert row is not None
    return int(row["newest"]), int(row["n"])


async def names(conn: asyncpg.Connection | asyncpg.Pool) -> dict[int, tuple[str, str | None]]:
    return {r["id"]: (r["name"], r["entity_id"]) for r in await conn.fetch("SELECT id, name, entity_id FROM people")}


# --- detections ----------------------------------------------------------------------------------
async def detection_ids(conn: asyncpg.Connection, image_id: int) -> list[int]:
    """The image's detection ids in insertion order (the order ``detections.insert_many`` was given)."""
    return [r["id"] for r in await conn.fetch("SELECT id FROM detections WHERE image_id = $1 ORDER BY id", image_id)]


async def store_detection(
    conn: asyncpg.Connection,
    detection_id: int,
    vectors: Iterable[tuple[Source, str, Sequence[float]]],
    identity: Identity,
) -> None:
    await conn.executemany(
        "INSERT INTO detection_embeddings (detection_id, source, model, vector) VALUES ($1, $2, $3, $4::real[])",
        [(detection_id, source, model, list(map(float, v))) for source, model, v in vectors],
    )
    await conn.execute(
        "INSERT INTO detection_identities (detection_id, person_id, similarity, source, visitor)"
        " VALUES ($1, $2, $3, $4, $5)",
        detection_id,
        identity.person_id,
        identity.similarity,
        identity.source,
        identity.visitor,
    )


async def detection_vectors(
    conn: asyncpg.Connection | asyncpg.Pool, detection_id: int
) -> list[tuple[Source, str, list[float]]]:
    rows = await conn.fetch(
        "SELECT source, model, vector FROM detection_embeddings WHERE detection_id = $1 ORDER BY source", detection_id
    )
    return [(r["source"], r["model"], list(r["vector"])) for r in rows]


async def unknown_visitors(conn: asyncpg.Connection, camera_id: str, model: str) -> list[tuple[int, list[float]]]:
    """(visitor, body vector) of the unknown people seen in the camera's open batch so far."""
    rows = await conn.fetch(
        "SELECT di.visitor, de.vector FROM batches b JOIN batch_images bi ON bi.batch_id = b.id"
        " JOIN detections d ON d.image_id = bi.image_id JOIN detection_identities di ON di.detection_id = d.id"
        " JOIN detection_embeddings de ON de.detection_id = d.id AND de.source = 'body' AND de.model = $2"
        " WHERE b.camera_id = $1 AND b.closed_at IS NULL AND di.person_id IS NULL AND di.visitor IS NOT NULL"
        " ORDER BY d.id",
        camera_id,
        model,
    )
    return [(r["visitor"], list(r["vector"])) for r in rows]


async def identities(conn: asyncpg.Connection | asyncpg.Pool, detection_ids: Sequence[int]) -> dict[int, Identity]:
    rows = await conn.fetch(
        "SELECT di.detection_id, di.person_id, di.similarity, di.source, di.visitor, p.name, p.entity_id"
        " FROM detection_identities di LEFT JOIN people p ON p.id = di.person_id"
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

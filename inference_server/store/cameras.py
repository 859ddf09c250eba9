"""cameras table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from inference_server import schemas
from inference_server.store import batches


@dataclass(frozen=True, slots=True)
class Camera:
    id: str
    name: str
    folder: str | None
    enabled: bool


def _row(row: asyncpg.Record) -> Camera:
    return Camera(row["id"], row["name"], row["folder"], row["enabled"])


class FolderIdConflict(LookupError):
    """The id meant for a folder is not its camera's: another folder holds it, or the folder was
    registered under another id meanwhile. Look the id up again."""


async def id_for_folder(
    conn: asyncpg.Connection | asyncpg.Pool, folder: str, candidates: Sequence[str]
) -> tuple[str, bool]:
    """The id of the camera of ``folder`` and whether the folder is registered: its own id when
    it is, else the first of ``candidates`` that no other folder's camera holds (a camera added
    over REST, without a folder, is adopted)."""
    rows = await conn.fetch(
        "SELECT id, folder FROM cameras WHERE folder = $1 OR id = ANY($2::text[])", folder, list(candidates)
    )
    for row in rows:
        if row["folder"] == folder:
            return str(row["id"]), True
    taken = {r["id"] for r in rows if r["folder"] is not None}
    for candidate in candidates:
        if candidate not in taken:
            return candidate, False
    raise FolderIdConflict(folder)


#: The camera of folder $3, or, when the folder has none, camera $1 registered for it: inserted
#: with the name $2, or adopted (a camera without a folder); the bool says it was inserted.
_ENSURE_FOR_FOLDER = (
    "WITH mine AS (SELECT id, name, folder, enabled FROM cameras WHERE folder = $3),"
    " added AS (INSERT INTO cameras (id, name, folder) SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM mine)"
    " ON CONFLICT (id) DO UPDATE SET folder = EXCLUDED.folder WHERE cameras.folder IS NULL"
    " RETURNING id, name, folder, enabled, (xmax = 0) AS inserted)"
    " SELECT id, name, folder, enabled, false AS inserted FROM mine UNION ALL SELECT * FROM added"
)


async def ensure_for_folder(
    conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, folder: str
) -> tuple[Camera, bool]:
    """Return the camera of ``folder``, registering it as ``camera_id`` on first sight (the id from
    :func:`id_for_folder`), in one statement that needs no transaction around it. The bool says it
    is new. Raises ``FolderIdConflict`` when another folder took ``camera_id`` since: two folders
    never share a camera."""
    name = folder.replace("_", " ").replace("-", " ").strip().title() or camera_id
    try:
        row = await conn.fetchrow(_ENSURE_FOR_FOLDER, camera_id, name, folder)
    except asyncpg.UniqueViolationError as err:
        # The folder was registered under another id by a transaction that committed meanwhile.
        raise FolderIdConflict(folder) from err
    if row is not None:
        return _checked(_row(row), camera_id), bool(row["inserted"])
    # The id is another folder's, or this folder was registered by a transaction that committed
    # while this one waited on the id (its row is visible to this new statement).
    row = await conn.fetchrow("SELECT id, name, folder, enabled FROM cameras WHERE folder = $1", folder)
    if row is not None:
        return _checked(_row(row), camera_id), False
    raise FolderIdConflict(folder)


def _checked(camera: Camera, camera_id: str) -> Camera:
    # The caller has stored the file under images/<camera_id>/: it must be this camera's.
    if camera.id != camera_id:
        raise FolderIdConflict(camera.folder)
    return camera


async def get(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> Camera | None:
    row = await conn.fetchrow("SELECT id, name, folder, enabled FROM cameras WHERE id = $1", camera_id)
    return _row(row) if row is not None else None


async def list_all(conn: asyncpg.Connection | asyncpg.Pool) -> list[Camera]:
    rows = await conn.fetch("SELECT id, name, folder, enabled FROM cameras ORDER BY id")
    return [_row(r) for r in rows]


_RECORD = "SELECT id, name, folder, enabled, zones, created_at FROM cameras"


def _record(row: asyncpg.Record) -> schemas.Camera:
    return schemas.Camera.model_validate(dict(row))


async def get_record(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> schemas.Camera | None:
    row = await conn.fetchrow(_RECORD + " WHERE id = $1", camera_id)
    return _record(row) if row is not None else None


async def list_records(conn: asyncpg.Connection | asyncpg.Pool) -> list[schemas.Camera]:
    return [_record(r) for r in await conn.fetch(_RECORD + " ORDER BY id")]


async def create(conn: asyncpg.Connection | asyncpg.Pool, new: schemas.CameraCreate) -> schemas.Camera | None:
    """Create a camera; None when the id is taken."""
    row = await conn.fetchrow(
        "INSERT INTO cameras (id, name, enabled) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING"
        " RETURNING id, name, folder, enabled, zones, created_at",
        new.id,
        new.name,
        new.enabled,
    )
    return _record(row) if row is not None else None


async def patch(
    conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, change: schemas.CameraPatch
) -> schemas.Camera | None:
    row = await conn.fetchrow(
        "UPDATE cameras SET name = COALESCE($2, name), enabled = COALESCE($3, enabled), updated_at = now()"
        " WHERE id = $1 RETURNING id, name, folder, enabled, zones, created_at",
        camera_id,
        change.name,
        change.enabled,
    )
    return _record(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class DeletedCamera:
    """What deleting a camera took with it: the object labels it ever had (their retained MQTT
    topics need clearing) and the files its rows named (removed after the commit)."""

    camera_id: str
    labels: list[str]
    image_paths: list[str]
    snapshot_paths: list[str]
    quarantine_paths: list[str]


async def delete(conn: asyncpg.Connection, camera_id: str) -> DeletedCamera | None:
    """Delete the camera with its images, detections and events (cascade) and its quarantine
    entries; None if there was no such camera. Files are not touched: the caller removes
    them once the transaction has committed."""
    camera = await conn.fetchval("SELECT id FROM cameras WHERE id = $1 FOR UPDATE", camera_id)
    if camera is None:
        return None
    labels = await conn.fetch("SELECT DISTINCT label FROM detections WHERE camera_id = $1 ORDER BY label", camera_id)
    images = await conn.fetch("SELECT path FROM images WHERE camera_id = $1", camera_id)
    snapshots = await conn.fetch(
        "SELECT snapshot_path FROM events WHERE camera_id = $1 AND snapshot_path IS NOT NULL", camera_id
    )
    # quarantine.camera_id has no foreign key (a file can be refused before its camera exists).
    quarantined = await conn.fetch("DELETE FROM quarantine WHERE camera_id = $1 RETURNING stored_path", camera_id)
    await conn.execute("DELETE FROM cameras WHERE id = $1", camera_id)
    return DeletedCamera(
        camera_id=camera_id,
        labels=[r["label"] for r in labels],
        image_paths=[r["path"] for r in images],
        snapshot_paths=[r["snapshot_path"] for r in snapshots],
        quarantine_paths=[r["stored_path"] for r in quarantined if r["stored_path"] is not None],
    )


async def ids(conn: asyncpg.Connection | asyncpg.Pool) -> set[str]:
    """Every camera id."""
    return {r["id"] for r in await conn.fetch("SELECT id FROM cameras")}


async def set_zones(
    conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, zones: schemas.ZoneList
) -> schemas.ZoneList | None:
    row = await conn.fetchrow(
        "UPDATE cameras SET zones = $2, updated_at = now() WHERE id = $1 RETURNING zones",
        camera_id,
        [z.model_dump(mode="json") for z in zones.zones],
    )
    return schemas.ZoneList(zones=row["zones"]) if row is not None else None


_STATES = """
SELECT c.id, c.enabled, last.id AS last_event_id, last.started_at AS last_event_at,
       COALESCE(live.risk_score, 0) AS risk_score, COALESCE(live.risk_level, 'low') AS risk_level,
       COALESCE(live.objects, '{}'::jsonb) AS objects
FROM cameras c
LEFT JOIN LATERAL (
    SELECT e.id, e.started_at FROM events e WHERE e.camera_id = c.id ORDER BY e.started_at DESC LIMIT 1
) last ON true
LEFT JOIN LATERAL (
    SELECT e.risk_score, e.risk_level,
           (SELECT jsonb_object_agg(d.label, d.n) FROM (
                SELECT label, count(*) AS n FROM detections
                WHERE image_id = (SELECT max(bi.image_id) FROM batch_images bi WHERE bi.batch_id = b.id)
                GROUP BY label) d) AS objects
    FROM batches b LEFT JOIN events e ON e.id = b.event_id
    WHERE b.camera_id = c.id AND b.closed_at IS NULL
) live ON true
"""


async def states_to_queue(conn: asyncpg.Connection, camera_id: str | None = None) -> dict[str, schemas.CameraState]:
    """Each camera's retained ``CameraState`` as the database has it now (one camera's with
    ``camera_id``), for a path that queues it in this transaction: its switch, its latest event,
    and while a batch is open the objects of the batch's latest image with the risk of its event
    (quiet, 0, before the batch has an event; the next image or the batch's closing publishes the
    rules' live score). The open batches forget the state they last queued
    (``batches.forget_states_sent``): the broker now retains this one, so the next picture
    queues its live state however unchanged. The one way to read them, so no path that queues
    them can leave a batch believing the broker still has its state."""
    await batches.forget_states_sent(conn, camera_id)
    if camera_id is None:
        rows = await conn.fetch(_STATES + " ORDER BY c.id")
    else:
        rows = await conn.fetch(_STATES + " WHERE c.id = $1", camera_id)
    fields = schemas.CameraState.model_fields
    return {r["id"]: schemas.CameraState.model_validate({f: r[f] for f in fields}) for r in rows}

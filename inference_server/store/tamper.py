"""camera_tamper and tamper_events tables: each camera's learned scene with its hysteresis
counters, and the tamper episodes it raised (covered, blinded, moved, blurred)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import numpy as np

from inference_server.schemas import TamperKind, TamperState


@dataclass(frozen=True, slots=True)
class Baseline:
    #: Zero-mean, unit-variance grey thumbnail, float32, rows x columns.
    layout: np.ndarray
    #: Learned in good light only (pipeline/tamper.py); 0: not yet.
    sharpness: float
    contrast: float
    brightness: float
    #: Images it was learned from.
    learned: int


@dataclass(frozen=True, slots=True)
class Counters:
    abnormal_run: int = 0
    normal_run: int = 0
    pending_kind: TamperKind | None = None
    tampered: bool = False
    kind: TamperKind | None = None
    since: datetime | None = None
    episode_id: int | None = None


@dataclass(frozen=True, slots=True)
class Row:
    baseline: Baseline
    state: Counters
    #: The row version read or written (PostgreSQL's ``xmin``: the id of the transaction that
    #: wrote it), for ``save_if_current``.
    version: int


async def lock(conn: asyncpg.Connection, camera_id: str) -> Row | None:
    """The camera's row, locked for the caller's transaction (None: nothing learned yet)."""
    r = await conn.fetchrow("SELECT *, xmin AS version FROM camera_tamper WHERE camera_id = $1 FOR UPDATE", camera_id)
    return None if r is None else _read(r)


async def lock_or_add(
    conn: asyncpg.Connection, camera_id: str, base: Baseline, state: Counters
) -> tuple[Row | None, int | None]:
    """``lock`` the camera's row, or, when it has none, insert it as ``base`` and ``state`` (the
    first check of a camera: one statement instead of ``lock`` and ``save``). (the row locked,
    None) or (None, the inserted row's version); (None, None) when another transaction inserted
    it meanwhile: ``lock`` it then."""
    r = await conn.fetchrow(
        "WITH old AS (SELECT *, xmin AS version FROM camera_tamper WHERE camera_id = $1 FOR UPDATE),"
        f" added AS ({_INSERT} SELECT {_VALUES} WHERE NOT EXISTS (SELECT 1 FROM old)"
        " ON CONFLICT (camera_id) DO NOTHING RETURNING xmin)"
        " SELECT old.*, (SELECT xmin FROM added) AS added FROM (SELECT 1) AS one LEFT JOIN old ON true",
        *_values(camera_id, base, state),
    )
    assert r is not None
    if r["added"] is not None:
        return None, int(r["added"])
    return (None, None) if r["camera_id"] is None else (_read(r), None)


def _read(r: asyncpg.Record) -> Row:
    layout = np.frombuffer(r["baseline"], dtype=np.float32).reshape(r["thumb_h"], r["thumb_w"])
    return Row(
        Baseline(layout, r["sharpness"], r["contrast"], r["brightness"], r["learned"]),
        Counters(
            r["abnormal_run"], r["normal_run"], r["pending_kind"], r["tampered"], r["kind"], r["since"], r["episode_id"]
        ),
        int(r["version"]),
    )


_SET = (
    "thumb_w = $2, thumb_h = $3, baseline = $4, sharpness = $5, contrast = $6, brightness = $7, learned = $8,"
    " abnormal_run = $9, normal_run = $10, pending_kind = $11, tampered = $12, kind = $13, since = $14,"
    " episode_id = $15, updated_at = now()"
)


def _values(camera_id: str, base: Baseline, state: Counters) -> tuple[Any, ...]:
    height, width = base.layout.shape
    layout = np.ascontiguousarray(base.layout, dtype=np.float32).tobytes()
    scene = (camera_id, width, height, layout, base.sharpness, base.contrast, base.brightness, base.learned)
    counters = (state.abnormal_run, state.normal_run, state.pending_kind, state.tampered, state.kind, state.since)
    return (*scene, *counters, state.episode_id)


_INSERT = (
    "INSERT INTO camera_tamper (camera_id, thumb_w, thumb_h, baseline, sharpness, contrast, brightness, learned,"
    " abnormal_run, normal_run, pending_kind, tampered, kind, since, episode_id)"
)
_VALUES = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15"


async def save(conn: asyncpg.Connection, camera_id: str, base: Baseline, state: Counters) -> int:
    """Write the camera's row; its new version."""
    version = await conn.fetchval(
        f"{_INSERT} VALUES ({_VALUES}) ON CONFLICT (camera_id) DO UPDATE SET {_SET} RETURNING xmin",
        *_values(camera_id, base, state),
    )
    return int(version)


async def save_if_current(
    conn: asyncpg.Connection, camera_id: str, base: Baseline, state: Counters, version: int
) -> int | None:
    """Write the camera's row if it is still at ``version``: one statement instead of ``lock``
    and ``save``. Its new version, or None when the row changed since (another worker, a
    ``forget``, or a transaction of ours rolled back): then ``lock`` it and judge again. The update
    waits for a concurrent writer and then compares that writer's version, so two writers never
    both pass."""
    written = await conn.fetchval(
        f"UPDATE camera_tamper SET {_SET} WHERE camera_id = $1 AND xmin = $16 RETURNING xmin",
        *_values(camera_id, base, state),
        version,
    )
    return None if written is None else int(written)


async def start_episode(
    conn: asyncpg.Connection,
    camera_id: str,
    kind: TamperKind,
    at: datetime,
    image_id: int,
    detail: dict[str, Any],
) -> int:
    episode: int = await conn.fetchval(
        "INSERT INTO tamper_events (camera_id, kind, started_at, image_id, detail) VALUES ($1, $2, $3, $4, $5)"
        " RETURNING id",
        camera_id,
        kind,
        at,
        image_id,
        detail,
    )
    return episode


async def rekind_episode(conn: asyncpg.Connection, episode_id: int | None, kind: TamperKind) -> None:
    await conn.execute("UPDATE tamper_events SET kind = $2 WHERE id = $1", episode_id, kind)


async def end_episode(conn: asyncpg.Connection, episode_id: int | None, at: datetime) -> None:
    await conn.execute("UPDATE tamper_events SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL", episode_id, at)


async def state(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> TamperState | None:
    """The camera's tamper state as published (None: no image judged yet)."""
    r = await conn.fetchrow("SELECT tampered, kind, since, learned FROM camera_tamper WHERE camera_id = $1", camera_id)
    if r is None:
        return None
    return TamperState(tampered=r["tampered"], kind=r["kind"], since=r["since"], learned_images=r["learned"])


async def episodes(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, kind, started_at, ended_at, image_id, detail FROM tamper_events WHERE camera_id = $1"
        " ORDER BY started_at, id",
        camera_id,
    )
    return [dict(r) for r in rows]


async def forget(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> bool:
    """Drop the camera's learned scene (it learns anew, e.g. after it was re-aimed on purpose);
    an open tamper episode ends now."""
    await conn.execute("UPDATE tamper_events SET ended_at = now() WHERE camera_id = $1 AND ended_at IS NULL", camera_id)
    status: str = await conn.execute("DELETE FROM camera_tamper WHERE camera_id = $1", camera_id)
    return status != "DELETE 0"

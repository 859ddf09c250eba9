"""events table: one row per security event, read back as the ``Event`` contract."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg

from inference_server.domain import Assessment
from inference_server.schemas import (
    CameraCount,
    Event,
    EventPatch,
    EventSummary,
    HourCount,
    HouseholdContext,
    LevelCounts,
    RiskLevel,
)


class BadCursor(ValueError):
    """The pagination cursor was not made by this server (or for another sort order)."""


class EmptySearch(ValueError):
    """The search text has no word to look for (only stop words or punctuation)."""


#: Text search configuration of ``events.search_doc`` (migration 0007): English stemming, so
#: "walking" finds "walks"; stop words ("the", "at") are not indexed.
SEARCH_CONFIG = "english"
SortOrder = Literal["time", "relevance"]
LEVELS: tuple[RiskLevel, ...] = ("low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class EventFilter:
    camera_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_risk: int | None = None
    level: RiskLevel | None = None
    reviewed: bool | None = None
    #: This level or higher.
    min_level: RiskLevel | None = None
    #: Words to find (web search syntax: ``"exact phrase"``, ``or``, ``-excluded``).
    text: str | None = None
    #: Only events seen in a video clip (True) or only in still images (False).
    has_clip: bool | None = None


def _assessment_json(a: Assessment) -> dict[str, Any]:
    return {
        "risk_score": a.risk_score,
        "risk_level": a.risk_level,
        "summary": a.summary,
        "reasoning": a.reasoning,
        "factors": [f.model_dump() for f in a.factors],
        "analysis_source": a.analysis_source,
        "model": a.model,
        "prompt_version": a.prompt_version,
        "description": a.description,
        "activity": a.activity,
        "threat_indicators": list(a.threat_indicators),
        "model_observations": list(a.model_observations),
        "frames_sent": list(a.frames_sent),
        "confidence": a.confidence,
    }


async def insert(
    conn: asyncpg.Connection,
    *,
    event_id: UUID,
    camera_id: str,
    image_id: int,
    batch_id: UUID | None,
    started_at: datetime,
    assessment: Assessment,
    is_fast_path: bool,
    snapshot_path: str | None,
    context: HouseholdContext | None,
    llm_pending: bool,
) -> Event:
    """A new event judged by the rules (phase one), made the event of its batch (``batch_id``),
    and read back as ``get`` reads it (what ``hsi/events`` announces); ``llm_pending`` queues the
    LLM's phase two and wakes its worker at commit. One statement: the insert, the batch's link,
    the read and the wake-up were four round trips (stop 49). The new event's only batch is
    ``batch_id``, so its clip is looked for there (the statement's own link is not visible to
    its read)."""
    llm_woken = f", (SELECT pg_notify('{LLM_CHANNEL}', '')) AS woken" if llm_pending else ""
    has_clip = (
        "EXISTS (SELECT 1 FROM batch_images bi JOIN images i ON i.id = bi.image_id"
        " WHERE bi.batch_id = $4 AND i.clip_id IS NOT NULL)"
    )
    row = await conn.fetchrow(
        "WITH opened AS (INSERT INTO events (id, camera_id, image_id, batch_id, started_at, risk_score, risk_level,"
        " summary, reasoning, risk_factors, objects, analysis_source, is_fast_path, snapshot_path, context,"
        " rules_result, llm_state, model, prompt_version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) RETURNING *),"
        " linked AS (UPDATE batches SET event_id = $1 WHERE id = $4)"
        f" {_select('opened e', has_clip)}{llm_woken}",
        event_id,
        camera_id,
        image_id,
        batch_id,
        started_at,
        assessment.risk_score,
        assessment.risk_level,
        assessment.summary,
        assessment.reasoning,
        [f.model_dump() for f in assessment.factors],
        assessment.objects,
        assessment.analysis_source,
        is_fast_path,
        snapshot_path,
        context.model_dump(mode="json") if context is not None else None,
        _assessment_json(assessment),
        "pending" if llm_pending else "skipped",
        assessment.model,
        assessment.prompt_version,
    )
    if row is None:  # the camera's row was gone: the insert's foreign key refuses that first
        raise LookupError(f"camera {camera_id} of event {event_id} is gone")
    return _to_event(row)


async def rescore(
    conn: asyncpg.Connection,
    event_id: UUID,
    assessment: Assessment,
    *,
    image_id: int | None,
    snapshot_path: str | None,
) -> Event | None:
    """New rules result as the batch grows. While the LLM has not answered (or failed) the rules
    result is the event's; once the LLM has answered, its judgement stands and only the rules
    result and the evidence are refreshed. ``image_id`` None keeps the event's picture.
    Returns the event as ``get`` reads it (what ``hsi/events`` announces) when anything a consumer
    sees changed, else None; in one statement (stop 49: the read was a round trip of its own)."""
    row = await conn.fetchrow(
        "WITH rescored AS (UPDATE events e SET rules_result = $2, image_id = COALESCE($3, e.image_id),"
        " snapshot_path = CASE WHEN $3::bigint IS NULL THEN e.snapshot_path ELSE $4 END, objects = $5,"
        " risk_score = CASE WHEN e.analysis_source = 'llm' THEN e.risk_score ELSE $6 END,"
        " risk_level = CASE WHEN e.analysis_source = 'llm' THEN e.risk_level ELSE $7 END,"
        " summary = CASE WHEN e.analysis_source = 'llm' THEN e.summary ELSE $8 END,"
        " reasoning = CASE WHEN e.analysis_source = 'llm' THEN e.reasoning ELSE $9 END,"
        " risk_factors = CASE WHEN e.analysis_source = 'llm' THEN e.risk_factors ELSE $10 END,"
        " updated_at = now()"
        " FROM (SELECT risk_score, risk_level, objects, image_id FROM events WHERE id = $1 FOR UPDATE) old"
        " WHERE e.id = $1"
        " RETURNING e.*, (old.risk_score, old.risk_level, old.objects) IS DISTINCT FROM"
        "   (e.risk_score, e.risk_level, e.objects) AS changed)"
        f" {_select('rescored e')} WHERE e.changed",
        event_id,
        _assessment_json(assessment),
        image_id,
        snapshot_path,
        assessment.objects,
        assessment.risk_score,
        assessment.risk_level,
        assessment.summary,
        assessment.reasoning,
        [f.model_dump() for f in assessment.factors],
    )
    return _to_event(row) if row is not None else None


async def set_picture(
    conn: asyncpg.Connection, event_id: UUID, image_id: int, snapshot_path: str | None
) -> Event | None:
    """The image that shows the event, and its snapshot file; the event as ``get`` reads it then
    (None: no such event), in one statement (stop 50: the read was a round trip of its own)."""
    row = await conn.fetchrow(
        "WITH moved AS (UPDATE events SET image_id = $2, snapshot_path = $3, updated_at = now() WHERE id = $1"
        f" RETURNING *) {_select('moved e')}",
        event_id,
        image_id,
        snapshot_path,
    )
    return _to_event(row) if row is not None else None


async def end(conn: asyncpg.Connection, event_id: UUID, ended_at: datetime) -> None:
    await conn.execute("UPDATE events SET ended_at = $2, updated_at = now() WHERE id = $1", event_id, ended_at)


#: Woken when an event waits for the LLM phase (``pipeline/llm.py`` listens).
LLM_CHANNEL = "hsi_llm"


@dataclass(frozen=True, slots=True)
class LlmClaim:
    """An event taken for the LLM phase, and until when (the lease ``release_llm`` checks)."""

    event_id: UUID
    until: datetime


async def claim_llm(conn: asyncpg.Connection | asyncpg.Pool, lease_s: float) -> LlmClaim | None:
    """Take one event waiting for the LLM (or whose LLM worker died), oldest first."""
    row = await conn.fetchrow(
        "UPDATE events SET llm_state = 'running', llm_claimed_until = now() + make_interval(secs => $1)"
        " WHERE id = (SELECT id FROM events WHERE llm_state = 'pending'"
        "   OR (llm_state = 'running' AND llm_claimed_until < now())"
        "   ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, llm_claimed_until",
        lease_s,
    )
    return None if row is None else LlmClaim(row["id"], row["llm_claimed_until"])


async def release_llm(conn: asyncpg.Connection | asyncpg.Pool, claim: LlmClaim) -> bool:
    """Hand a claimed event back to the LLM queue at once (a stopping worker gives up its phase
    two): the next worker, or this one after its restart, takes it without waiting out the lease.
    Nothing happens if the claim is no longer this one's (its lease ran out and another took it)."""
    released: UUID | None = await conn.fetchval(
        "WITH released AS (UPDATE events SET llm_state = 'pending', llm_claimed_until = NULL"
        "  WHERE id = $1 AND llm_state = 'running' AND llm_claimed_until = $2 RETURNING id)"
        f" SELECT id FROM released, (SELECT pg_notify('{LLM_CHANNEL}', '') FROM released) AS woken",
        claim.event_id,
        claim.until,
    )
    return released is not None


async def batch_of(conn: asyncpg.Connection | asyncpg.Pool, event_id: UUID) -> UUID | None:
    value: UUID | None = await conn.fetchval("SELECT batch_id FROM events WHERE id = $1", event_id)
    return value


async def finish_llm(
    conn: asyncpg.Connection, event_id: UUID, result: Assessment | None, *, failure: str | None
) -> None:
    """Store the LLM phase. A success becomes the event's judgement; a failure is kept beside
    the rules result (which stays the event's, labelled ``rules``) with its reason."""
    if failure is None:
        assert result is not None
        await conn.execute(
            "UPDATE events SET llm_state = 'done', llm_result = $2, risk_score = $3, risk_level = $4, summary = $5,"
            " reasoning = $6, risk_factors = $7, analysis_source = 'llm', model = $8, prompt_version = $9,"
            " llm_frames = $10, activity = $11, updated_at = now() WHERE id = $1",
            event_id,
            _assessment_json(result),
            result.risk_score,
            result.risk_level,
            result.summary,
            result.reasoning,
            [f.model_dump() for f in result.factors],
            result.model,
            result.prompt_version,
            list(result.frames_sent),
            result.activity,
        )
    else:
        await conn.execute(
            "UPDATE events SET llm_state = 'failed', llm_result = $2, reasoning = reasoning || $3,"
            " updated_at = now() WHERE id = $1",
            event_id,
            {"error": failure},
            f" [LLM fallback: {failure}]",
        )


#: Whether event ``e`` was seen in a video clip (one of its batch's frames came from one).
_HAS_CLIP = (
    "EXISTS (SELECT 1 FROM batches b JOIN batch_images bi ON bi.batch_id = b.id"
    " JOIN images i ON i.id = bi.image_id WHERE b.event_id = e.id AND i.clip_id IS NOT NULL)"
)


def _select(source: str = "events e", has_clip: str = _HAS_CLIP) -> str:
    """What ``get`` reads of an event (``source``: a table or a statement's rows, aliased ``e``;
    ``has_clip``: whether it was seen in a clip)."""
    return (
        "SELECT e.*, c.name AS camera_name,"
        " COALESCE((SELECT jsonb_agg(jsonb_build_object('label', d.label, 'category', d.category,"
        "   'confidence', d.confidence, 'bbox', jsonb_build_array(d.x1, d.y1, d.x2, d.y2), 'zone', d.zone,"
        # Who a person was recognised as (migration 0006): names and scores, never the embeddings.
        "   'identity', (SELECT jsonb_build_object('person', p.name, 'person_id', di.person_id, 'similarity',"
        "     di.similarity, 'source', di.source, 'visitor', di.visitor,"
        # An unknown person seen again (migration 0009): the stranger's id, visits and first sighting.
        "     'stranger', 'S-' || s.id, 'visits', s.visits, 'first_seen', s.first_seen) FROM detection_identities di"
        "     LEFT JOIN people p ON p.id = di.person_id LEFT JOIN strangers s ON s.id = di.stranger_id"
        "     WHERE di.detection_id = d.id))"
        "   ORDER BY d.confidence DESC, d.id) FROM detections d WHERE d.image_id = e.image_id), '[]'::jsonb)"
        "   AS detections,"
        # The LLM phase's words and failure live in llm_result (the model's text only while its
        # judgement is the event's).
        " CASE WHEN e.llm_state = 'done' THEN e.llm_result->>'description' END AS description,"
        " CASE WHEN e.llm_state = 'failed' THEN e.llm_result->>'error' END AS llm_error,"
        # A vision model's reading (migration 0005); its observations are labelled as its own.
        " CASE WHEN e.llm_state = 'done' THEN e.activity END AS activity, e.llm_frames AS frames_sent,"
        " CASE WHEN e.llm_state = 'done' THEN COALESCE(e.llm_result->'threat_indicators', '[]') ELSE '[]' END"
        "   AS threat_indicators,"
        " CASE WHEN e.llm_state = 'done' THEN COALESCE(e.llm_result->'model_observations', '[]') ELSE '[]' END"
        "   AS model_observations,"
        " CASE WHEN e.llm_state = 'done' THEN (e.llm_result->>'confidence')::real END AS llm_confidence,"
        # The clip the event was seen in (store/clips.py, migration 0008), fetched through the API.
        f" CASE WHEN {has_clip} THEN '/api/v1/events/' || e.id || '/clip' END AS clip_url"
        f" FROM {source} JOIN cameras c ON c.id = e.camera_id"
    )


_SELECT = _select()


def _to_event(row: asyncpg.Record) -> Event:
    # The columns carry the fields' names (jsonb ones decoded); columns Event lacks are ignored.
    return Event.model_validate(dict(row))


async def get(conn: asyncpg.Connection | asyncpg.Pool, event_id: UUID) -> Event | None:
    row = await conn.fetchrow(_SELECT + " WHERE e.id = $1", event_id)
    return _to_event(row) if row is not None else None


def encode_cursor(started_at: datetime, event_id: UUID, rank: float | None = None) -> str:
    """A time-order cursor (``time|id``) or, with ``rank``, a relevance-order one (``r:rank|time|id``)."""
    raw = f"{started_at.isoformat()}|{event_id}"
    if rank is not None:
        raw = f"r:{rank!r}|{raw}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The time and id of a time-order cursor."""
    rank, when, eid = _decode(cursor)
    if rank is not None:
        raise BadCursor("this cursor belongs to a search sorted by relevance")
    return when, eid


def decode_rank_cursor(cursor: str) -> tuple[float, datetime, UUID]:
    """The rank, time and id of a relevance-order cursor."""
    rank, when, eid = _decode(cursor)
    if rank is None:
        raise BadCursor("this cursor belongs to a list sorted by time")
    return rank, when, eid


def _decode(cursor: str) -> tuple[float | None, datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        rank: float | None = None
        if raw.startswith("r:"):
            rank_text, raw = raw[2:].split("|", 1)
            rank = float(rank_text)
            if not math.isfinite(rank):
                raise ValueError("rank is not finite")
        when, eid = raw.split("|", 1)
        return rank, datetime.fromisoformat(when), UUID(eid)
    except (binascii.Error, UnicodeDecodeError, ValueError) as err:
        raise BadCursor(f"invalid cursor: {cursor!r}") from err


def cursor_time(cursor: str) -> datetime:
    """The event time a cursor of either order holds (the API checks its range)."""
    return _decode(cursor)[1]


async def has_search_words(conn: asyncpg.Connection | asyncpg.Pool, text: str) -> bool:
    """Whether ``text`` leaves any word to search for once stop words and punctuation are gone."""
    nodes: int = await conn.fetchval(f"SELECT numnode(websearch_to_tsquery('{SEARCH_CONFIG}', $1))", text)
    return nodes > 0


async def list_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    flt: EventFilter,
    limit: int,
    cursor: str | None,
    sort: SortOrder = "time",
) -> tuple[list[Event], str | None]:
    """One page of events matching ``flt``, in a stable order so pages never repeat or skip rows.

    ``time``: newest first, ``(started_at, id)``. ``relevance`` (needs ``flt.text``): best match
    first by ``ts_rank`` of the search document, then newest first, ``(rank, started_at, id)``;
    its cursor carries the rank of the page's last row (ranks do not change while paging: they
    depend only on the event's own words and the query). Raises ``EmptySearch`` when the text
    has no word to search for, ``BadCursor`` for a cursor of the other order.
    """
    if sort == "relevance" and flt.text is None:
        raise ValueError("relevance order needs a search text")
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    conditions: list[tuple[str, Any]] = [
        ("e.camera_id =", flt.camera_id),
        ("e.started_at >=", flt.since),
        ("e.started_at <", flt.until),
        ("e.risk_score >=", flt.min_risk),
        ("e.risk_level =", flt.level),
        ("e.reviewed =", flt.reviewed),
    ]
    where += [f"{condition} {arg(value)}" for condition, value in conditions if value is not None]
    if flt.min_level is not None:
        where.append(f"e.risk_level = ANY({arg(list(LEVELS[LEVELS.index(flt.min_level) :]))}::text[])")
    if flt.has_clip is not None:
        where.append(("" if flt.has_clip else "NOT ") + _HAS_CLIP)
    rank = "NULL::real"
    if flt.text is not None:
        if not await has_search_words(conn, flt.text):
            raise EmptySearch("the search text has no word to look for (only stop words or punctuation)")
        query = f"websearch_to_tsquery('{SEARCH_CONFIG}', {arg(flt.text)})"
        where.append(f"e.search_doc @@ {query}")
        rank = f"ts_rank(e.search_doc, {query})"
    if sort == "relevance":
        if cursor is not None:
            after_rank, after_time, after_id = decode_rank_cursor(cursor)
            # Descending on all three: the next row has a lower rank, or the same rank and is older.
            where.append(
                f"({rank}, e.started_at, e.id) < ({arg(after_rank)}::real, {arg(after_time)}, {arg(after_id)})"
            )
        order = f"{rank} DESC, e.started_at DESC, e.id DESC"
    else:
        if cursor is not None:
            after_time, after_id = decode_cursor(cursor)
            where.append(f"(e.started_at, e.id) < ({arg(after_time)}, {arg(after_id)})")
        order = "e.started_at DESC, e.id DESC"
    # The page is chosen on the narrow columns first (ranking and sorting thousands of matches
    # must not carry their whole rows), then its rows are read whole.
    page_sql = f"SELECT e.id, e.started_at, {rank} AS search_rank FROM events e"
    if where:
        page_sql += " WHERE " + " AND ".join(where)
    page_sql += f" ORDER BY {order} LIMIT {arg(limit + 1)}"
    outer = (
        "p.search_rank DESC, p.started_at DESC, p.id DESC" if sort == "relevance" else "p.started_at DESC, p.id DESC"
    )
    sql = f"WITH p AS MATERIALIZED ({page_sql}) " + _SELECT.replace(
        " FROM events e", ", p.search_rank FROM p JOIN events e ON e.id = p.id", 1
    )
    sql += f" ORDER BY {outer}"
    rows = await conn.fetch(sql, *args)
    page = [_to_event(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(
            last["started_at"], last["id"], last["search_rank"] if sort == "relevance" else None
        )
    return page, next_cursor


async def patch(conn: asyncpg.Connection, event_id: UUID, change: EventPatch) -> Event | None:
    """Apply the fields present in ``change``; None if there is no such event."""
    fields = change.model_dump(exclude_unset=True)
    updated = await conn.fetchval(
        "UPDATE events SET reviewed = CASE WHEN $2 THEN $3 ELSE reviewed END,"
        " notes = CASE WHEN $4 THEN $5 ELSE notes END, feedback = CASE WHEN $6 THEN $7 ELSE feedback END,"
        " updated_at = now() WHERE id = $1 RETURNING id",
        event_id,
        "reviewed" in fields and fields["reviewed"] is not None,
        fields.get("reviewed"),
        "notes" in fields,
        fields.get("notes"),
        "feedback" in fields,
        fields.get("feedback"),
    )
    if updated is None:
        return None
    return await get(conn, event_id)


async def snapshot_path(conn: asyncpg.Connection | asyncpg.Pool, event_id: UUID) -> tuple[bool, str | None]:
    """(event exists, its snapshot path)."""
    row = await conn.fetchrow("SELECT snapshot_path FROM events WHERE id = $1", event_id)
    return (row is not None, row["snapshot_path"] if row is not None else None)


#: When the latest event started (None: no event yet): a column of the status's statement.
LAST_EVENT_AT = "(SELECT max(started_at) FROM events) AS last_event_at"


def latest_for_camera_sql(camera: str) -> str:
    """The camera's latest event (``id``, ``started_at``), for an SQL parameter named by the
    argument (also a part of ``batches.lock_open_in_context``)."""
    return f"SELECT id, started_at FROM events WHERE camera_id = {camera} ORDER BY started_at DESC LIMIT 1"


async def latest_for_camera(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> tuple[UUID, datetime] | None:
    row = await conn.fetchrow(latest_for_camera_sql("$1"), camera_id)
    return (row["id"], row["started_at"]) if row is not None else None


async def llm_waiting(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM events WHERE llm_state IN ('pending', 'running')")
    return n


async def id_for_image_name(conn: asyncpg.Connection | asyncpg.Pool, original_name: str) -> UUID | None:
    """The event whose picture is the image ingested under ``original_name`` (``<camera>/<file>``)."""
    value: UUID | None = await conn.fetchval(
        "SELECT e.id FROM events e JOIN images i ON i.id = e.image_id WHERE i.original_name = $1", original_name
    )
    return value


async def summarize(
    conn: asyncpg.Connection | asyncpg.Pool,
    since: datetime,
    until: datetime,
    camera_id: str | None,
    timezone: str,
    top: int = 5,
) -> EventSummary:
    """Counts of the events that started in ``[since, until)`` (one camera or all) by level, by
    camera and by hour (hours that had events, starting at the hour of ``timezone``), and the
    ``top`` most important: highest risk first, then the newest."""
    camera_filter = "" if camera_id is None else " AND e.camera_id = $3"
    args: list[Any] = [since, until] + ([camera_id] if camera_id is not None else [])
    scope = f"e.started_at >= $1 AND e.started_at < $2{camera_filter}"
    levels = await conn.fetch(f"SELECT e.risk_level, count(*) AS n FROM events e WHERE {scope} GROUP BY 1", *args)
    by_camera = await conn.fetch(
        "SELECT e.camera_id, c.name AS camera_name, count(*) AS n,"
        " count(*) FILTER (WHERE e.risk_level IN ('high', 'critical')) AS high_or_critical"
        f" FROM events e JOIN cameras c ON c.id = e.camera_id WHERE {scope}"
        " GROUP BY 1, 2 ORDER BY n DESC, e.camera_id",
        *args,
    )
    tz_arg = f"${len(args) + 1}"
    by_hour = await conn.fetch(
        f"SELECT date_trunc('hour', e.started_at, {tz_arg}) AS hour, count(*) AS n,"
        " max(e.risk_score) AS max_risk"
        f" FROM events e WHERE {scope} GROUP BY 1 ORDER BY 1",
        *args,
        timezone,
    )
    top_rows = await conn.fetch(
        _SELECT + f" WHERE {scope} ORDER BY e.risk_score DESC, e.started_at DESC, e.id DESC LIMIT {int(top)}", *args
    )
    counts = {level: 0 for level in ("low", "medium", "high", "critical")}
    counts.update({r["risk_level"]: r["n"] for r in levels})
    return EventSummary(
        since=since,
        until=until,
        camera=camera_id,
        total=sum(counts.values()),
        by_level=LevelCounts(**counts),
        by_camera=[CameraCount(**dict(r)) for r in by_camera],
        by_hour=[HourCount(**dict(r)) for r in by_hour],
        top=[_to_event(r) for r in top_rows],
    )

"""A digest: one calm summary of a period instead of one message per event.

The rules text is always made (counts by level, by camera, and the 3 most important events with
their local times, cameras, levels and snapshot paths). When an LLM is configured its prose (see
``reasoning.digest``) becomes the text to show, labelled ``text_source="llm"``; when it fails the
rules text is shown, labelled ``rules``, and ``llm_error`` says why. A digest is recorded in the
``digests`` table and published on ``hsi/digest`` through the outbox, in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg

from inference_server.comms.topics import Topics
from inference_server.schemas import Digest, DigestEvent, EventSummary
from inference_server.store import digests, outbox
from inference_server.store import events as events_store

log = logging.getLogger(__name__)

TOP_EVENTS = 3
#: Writes the prose for the rules text; raises an exception with a ``reason`` when it cannot.
ProseWriter = Callable[[str], Awaitable[str]]


class ProseFailed(Exception):
    """The prose writer's failure (its message says why, e.g. ``timeout: no reply within 60s``)."""


@dataclass(frozen=True, slots=True)
class ProseSource:
    """The LLM that writes digests: its model name and the writer."""

    model: str
    write: ProseWriter


def _local(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).strftime("%H:%M")


def _period_title(start: datetime, end: datetime, tz: ZoneInfo) -> str:
    a, b = start.astimezone(tz), end.astimezone(tz)
    if a.date() == b.date():
        return f"{a:%a %d %b} {a:%H:%M}–{b:%H:%M}"
    return f"{a:%a %d %b %H:%M} – {b:%a %d %b %H:%M}"


def top_events(summary: EventSummary, tz: ZoneInfo) -> list[DigestEvent]:
    return [
        DigestEvent(
            id=e.id,
            camera_id=e.camera_id,
            camera_name=e.camera_name,
            started_at=e.started_at,
            local_time=_local(e.started_at, tz),
            risk_level=e.risk_level,
            risk_score=e.risk_score,
            summary=e.summary,
            snapshot_url=f"/api/v1/events/{e.id}/snapshot.jpg",
        )
        for e in summary.top[:TOP_EVENTS]
    ]


def rules_text(summary: EventSummary, top: list[DigestEvent], tz: ZoneInfo) -> str:
    """The digest in plain sentences, from the counts alone (what is shown without an LLM)."""
    period = _period_title(summary.since, summary.until, tz)
    if summary.total == 0:
        return f"{period}: no events."
    levels = summary.by_level.model_dump()
    counted = ", ".join(f"{n} {level}" for level, n in reversed(levels.items()) if n)
    noun = "event" if summary.total == 1 else "events"
    lines = [f"{period}: {summary.total} {noun} ({counted})."]
    cameras = ", ".join(f"{c.camera_name} {c.n}" for c in summary.by_camera)
    lines.append(f"By camera: {cameras}.")
    lines.append("Most important:" if len(top) > 1 else "Most important event:")
    lines += [f"- {e.local_time} {e.camera_name}, {e.risk_level} ({e.risk_score}): {e.summary}" for e in top]
    return "\n".join(lines)


class DigestService:
    """Makes digests from the events table, records and publishes them."""

    def __init__(self, pool: asyncpg.Pool, topics: Topics, timezone: str, prose: ProseSource | None = None) -> None:
        self.pool = pool
        self.topics = topics
        self.tz = ZoneInfo(timezone)
        #: Set by the wiring when an LLM is configured (and digest_llm is on).
        self.prose = prose

    async def compose(
        self,
        since: datetime,
        until: datetime,
        *,
        kind: Literal["scheduled", "on_demand"],
        camera: str | None = None,
        now: datetime,
        timezone: ZoneInfo | None = None,
    ) -> Digest:
        """The digest of ``[since, until)``; its local times in ``timezone`` (default: the server's)."""
        tz = timezone or self.tz
        summary = await events_store.summarize(self.pool, since, until, camera, tz.key, top=TOP_EVENTS)
        top = top_events(summary, tz)
        facts = rules_text(summary, top, tz)
        llm_text: str | None = None
        llm_error: str | None = None
        if self.prose is not None:
            try:
                llm_text = await self.prose.write(facts)
            except ProseFailed as err:
                llm_error = str(err)
                log.warning("digest prose failed, using the rules text (fallback) error=%s", llm_error)
        return Digest(
            id=None,
            kind=kind,
            period_start=since,
            period_end=until,
            title=f"Security digest, {_period_title(since, until, tz)}",
            text=llm_text if llm_text is not None else facts,
            text_source="llm" if llm_text is not None else "rules",
            rules_text=facts,
            llm_text=llm_text,
            llm_error=llm_error,
            model=self.prose.model if llm_text is not None and self.prose is not None else None,
            total=summary.total,
            by_level=summary.by_level,
            top=top,
            generated_at=now,
        )

    async def send(self, digest: Digest, *, publish: bool = True) -> Digest | None:
        """Record ``digest`` and (``publish``) queue it on ``hsi/digest``, in one transaction.
        None when it is a scheduled digest of a period already sent: nothing is published twice."""
        async with self.pool.acquire() as conn, conn.transaction():
            digest_id = await digests.record(conn, digest)
            if digest_id is None:
                return None
            stored = digest.model_copy(update={"id": digest_id})
            if publish:
                await outbox.add(conn, self.topics.digest, stored.model_dump_json().encode())
        log.info(
            "digest made digest_id=%d kind=%s period=%s..%s events=%d text_source=%s published=%s",
            digest_id,
            digest.kind,
            digest.period_start.isoformat(),
            digest.period_end.isoformat(),
            digest.total,
            digest.text_source,
            publish,
        )
        return stored

"""Event search and digest benchmark (issue 19).

An embedded PostgreSQL in a temporary folder, migrated, holds 100,000 events on six cameras over
90 days (inserted with SQL straight into the store's tables, shaped like the rows the pipeline
writes: one image per event, 1-3 detections with zones, summaries made of varied words; the
search document is written by migration 0007's trigger as for any insert), then a night of 500
more events (22:00-07:00 on a quiet day).

Search: each scenario calls ``store.events.list_page`` (the SQL that ``GET /api/v1/events?q=``
runs, on the server's own pool) ``--runs`` times after a warm-up, and reports p50, p95 and max
latency; ``GET /events/summary`` likewise (``summarize``). HTTP framing is left out: bench/api.py
measures it for the list (about 1 ms a request).

Digest: ``DigestService.compose`` of that night (500 events; counts, top 3, rules text), the time
the scheduled digest takes before it is queued; without an LLM (its prose costs the model's
generation time, see the GPU LLM figures in docs/performance.md).

Run from the repository root::

    XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.event_search --json /tmp/bench-search.json
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from bench.report import finish, say
from inference_server.comms.topics import Topics
from inference_server.reports.digest import DigestService
from inference_server.store import events as events_store
from inference_server.store.db import EmbeddedPostgres, create_pool
from inference_server.store.migrate import migrate

CAMERAS = (
    ("front_door", "Front Door"),
    ("driveway", "Driveway"),
    ("back_door", "Back Door"),
    ("garden", "Garden"),
    ("garage", "Garage"),
    ("side_gate", "Side Gate"),
)
TZ = "Europe/Paris"
#: The quiet night the digest summarises (no other events that night).
NIGHT_START = datetime(2026, 1, 10, 22, 0, tzinfo=ZoneInfo(TZ))

# Summaries from a subject, an action and an addition: 8 x 10 x 6 combinations; with the labels
# and zones a word matches from ~3 % ("parcel door") to ~59 % ("person") of the events (the
# figures hold the counts).
_SEED = """
INSERT INTO images (camera_id, sha256, path, source, original_name, media_type, width, height,
                    size_bytes, captured_at, captured_at_source)
SELECT c.id, sha256(int8send(g + $3)), 'images/' || c.id || '/' || g || '.jpg', 'folder', g || '.jpg',
       'image/jpeg', 1920, 1080, 250000, t, 'filename'
FROM generate_series(1, $1) AS g,
     LATERAL (SELECT (ARRAY['front_door', 'driveway', 'back_door', 'garden', 'garage', 'side_gate'])[1 + g % 6]
              AS id) AS c,
     LATERAL (SELECT $2::timestamptz + make_interval(secs => g * $4::double precision) AS t) AS s
ORDER BY g;

INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2, zone, detected_at)
SELECT i.id, i.camera_id, l.label, CASE l.label WHEN 'person' THEN 'person' WHEN 'car' THEN 'vehicle'
       WHEN 'truck' THEN 'vehicle' ELSE 'animal' END,
       0.5, 0.1, 0.2, 0.4, 0.9, (ARRAY['porch', 'drive', 'lawn', 'gate', 'shed', NULL])[1 + (i.id + n) % 6],
       i.captured_at
FROM images i, LATERAL generate_series(0, i.id % 3) AS n,
     LATERAL (SELECT (ARRAY['person', 'person', 'car', 'dog', 'cat', 'truck'])[1 + (i.id * 7 + n) % 6] AS label) l
WHERE i.id > $1;

INSERT INTO events (id, camera_id, image_id, started_at, ended_at, risk_score, risk_level, summary,
                    reasoning, risk_factors, objects, analysis_source, snapshot_path)
SELECT gen_random_uuid(), i.camera_id, i.id, i.captured_at, i.captured_at + interval '40 seconds', r.score,
       CASE WHEN r.score >= 85 THEN 'critical' WHEN r.score >= 60 THEN 'high'
            WHEN r.score >= 30 THEN 'medium' ELSE 'low' END,
       (ARRAY['Person', 'Courier', 'Car', 'Cat', 'Dog', 'Van', 'Cyclist', 'Fox'])[1 + i.id % 8] || ' '
       || (ARRAY['at the door', 'walking along the fence', 'parked in the drive', 'crossing the lawn',
                 'leaving a parcel', 'trying the handle', 'near the shed', 'on the porch', 'looking in the window',
                 'passing the gate'])[1 + (i.id / 8) % 10]
       || (ARRAY['', ' at night', ' while nobody is home', ' in the rain', ' twice', ' briefly'])[1 + (i.id / 80) % 6],
       'rules reasoning', '[]'::jsonb,
       COALESCE((SELECT jsonb_object_agg(d.label, 1) FROM detections d WHERE d.image_id = i.id), '{}'::jsonb),
       'rules', 'snapshots/' || i.id || '.jpg'
FROM images i, LATERAL (SELECT ((i.id * 37) % 100)::smallint AS score) AS r
WHERE i.id > $1;
"""


async def _seed(pool: asyncpg.Pool, count: int, start: datetime, spacing_s: float, offset: int) -> float:
    started = time.perf_counter()
    first, second, third = (part for part in _SEED.split(";\n") if part.strip())
    async with pool.acquire() as conn, conn.transaction():
        before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM images")
        await conn.execute(first, count, start, offset, spacing_s)
        await conn.execute(second.replace("$1", str(before)))
        await conn.execute(third.replace("$1", str(before)))
    return time.perf_counter() - started


async def _timed(call: Callable[[], Awaitable[Any]], runs: int) -> dict[str, float]:
    for _ in range(5):
        await call()
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(0.95 * (len(times) - 1))], 2),
        "max_ms": round(times[-1], 2),
    }


async def run(runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hsi-bench-search-"))
    embedded = EmbeddedPostgres(root / "postgres")
    figures: dict[str, Any] = {"ok": False}
    try:
        pool = await create_pool(await embedded.start(), 4)
        try:
            await migrate(pool)
            await pool.executemany("INSERT INTO cameras (id, name) VALUES ($1, $2)", CAMERAS)
            now = datetime.now(UTC)
            # 100,000 events over the 90 days before now (one every 77.76 s), then the quiet night's 500.
            seed_s = await _seed(pool, 100_000, now - timedelta(days=90), 77.76, 0)
            night_end = NIGHT_START + timedelta(hours=9)
            await pool.execute("DELETE FROM events WHERE started_at >= $1 AND started_at < $2", NIGHT_START, night_end)
            night_s = await _seed(pool, 500, NIGHT_START, 9 * 3600 / 501, 1_000_000)
            await pool.execute("ANALYZE")
            total = await pool.fetchval("SELECT count(*) FROM events")
            in_night = await pool.fetchval(
                "SELECT count(*) FROM events WHERE started_at >= $1 AND started_at < $2", NIGHT_START, night_end
            )
            say(f"seeded {total} events in {seed_s + night_s:.1f} s ({in_night} in the night)")
            week = now - timedelta(days=7)
            matches = {
                word: await pool.fetchval(
                    "SELECT count(*) FROM events WHERE search_doc @@ websearch_to_tsquery('english', $1)", word
                )
                for word in ("person", "parcel door", "fox", "garage")
            }
            plan = "\n".join(
                r[0]
                for r in await pool.fetch(
                    "EXPLAIN SELECT id FROM events e WHERE e.search_doc @@ websearch_to_tsquery('english', 'fox')"
                )
            )

            def page(flt: events_store.EventFilter, sort: events_store.SortOrder) -> Callable[[], Awaitable[Any]]:
                return lambda: events_store.list_page(pool, flt, 50, None, sort)

            deep_flt = events_store.EventFilter(text="person")
            cursor: str | None = None
            for _ in range(20):  # 20 pages of 50 deep
                _, cursor = await events_store.list_page(pool, deep_flt, 50, cursor, "relevance")
            scenarios: dict[str, Callable[[], Awaitable[Any]]] = {
                "q=person (broad), relevance": page(deep_flt, "relevance"),
                "q=person, sort=time": page(deep_flt, "time"),
                "q=parcel door, relevance": page(events_store.EventFilter(text="parcel door"), "relevance"),
                "q=fox, relevance": page(events_store.EventFilter(text="fox"), "relevance"),
                "q=person + camera + min_level=high + last 7 days": page(
                    events_store.EventFilter(text="person", camera_id="back_door", min_level="high", since=week),
                    "relevance",
                ),
                "q=person, relevance, page 21 (cursor)": lambda: events_store.list_page(
                    pool, deep_flt, 50, cursor, "relevance"
                ),
                "no q: newest 50 (baseline)": page(events_store.EventFilter(), "time"),
                "summary, last 24 h": lambda: events_store.summarize(pool, now - timedelta(hours=24), now, None, TZ),
                "summary, last 30 days": lambda: events_store.summarize(pool, now - timedelta(days=30), now, None, TZ),
            }
            results = {}
            for name, call in scenarios.items():
                results[name] = await _timed(call, runs)
                say(f"{name:52} p50 {results[name]['p50_ms']:7.2f} ms  p95 {results[name]['p95_ms']:7.2f} ms")
            service = DigestService(pool, Topics(), TZ)
            digest = await service.compose(NIGHT_START, night_end, kind="scheduled", now=night_end)
            digest_times = await _timed(
                lambda: service.compose(NIGHT_START, night_end, kind="scheduled", now=night_end), runs // 4
            )
            say(
                f"{'digest of a night of ' + str(digest.total) + ' events (rules)':52} "
                f"p50 {digest_times['p50_ms']:7.2f} ms  p95 {digest_times['p95_ms']:7.2f} ms"
            )
            say(digest.text)
            figures = {
                "ok": digest.total == 500 and "Bitmap Index Scan on events_search" in plan,
                "events": total,
                "matches": matches,
                "plan": plan,
                "runs": runs,
                "search": results,
                "digest": {"events": digest.total, **digest_times, "text": digest.text},
            }
        finally:
            await pool.close()
    finally:
        await embedded.stop()
        shutil.rmtree(root, ignore_errors=True)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="measured calls per scenario")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.runs))
    return finish(figures, args.json, "FAILED: the night did not hold 500 events, or the GIN index was not used")


if __name__ == "__main__":
    sys.exit(main())

"""How a worker's in-memory household stays current (pipeline/identify.py, migration 0009), in the
real database with the real face and body models: matching an image asks the database nothing
about the household; a change committed by another process (a second worker, the API) is heard
through NOTIFY and used at the next image; a change made while the LISTEN connection was down is
caught when it is listened on again, and by the periodic re-check without any listener."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from PIL import Image, ImageOps

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.embedding.onnx_backend import OnnxEmbedder
from inference_server.pipeline.identify import PersonVectors, Recognizer
from inference_server.store import detections, images, people
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from tests.support.waiting import wait_until

T0 = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
MODELS = {"face": "faceres-test", "body": "mnv2-test"}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def astronaut(pose_detector: UltralyticsDetector) -> tuple[PersonVectors, PersonVectors]:
    """The astronaut's face and body vectors in two views (as enrolled, as the camera sees her)."""
    face = OnnxEmbedder("face", demo_assets.embedder_model("face"))
    body = OnnxEmbedder("body", demo_assets.embedder_model("body"))
    recognizer = Recognizer(Settings(), {"face": face, "body": body}, MODELS)
    photo = Image.open(demo_assets.image("astronaut.png")).convert("RGB")
    out = []
    for view in (ImageOps.mirror(photo).crop((0, 20, 480, 512)), photo):
        [person] = [d for d in pose_detector.detect([view])[0] if d.category == "person"]
        [vectors] = recognizer._embed_now(view, [person])
        assert vectors is not None and vectors.face is not None and vectors.body is not None
        out.append(vectors)
    recognizer.close()
    return out[0], out[1]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 4)
    await migrate(pool)
    await pool.execute("INSERT INTO cameras (id, name, folder) VALUES ('front', 'Front', 'front')")
    try:
        yield pool
    finally:
        await pool.close()


async def _image(pool: asyncpg.Pool, n: int) -> int:
    """An image of camera ``front`` with one person detection stored (as the result stage has)."""
    async with pool.acquire() as conn:
        image_id = await images.insert(
            conn,
            images.NewImage(
                "front", f"img{n}".encode(), f"{n}.jpg", "folder", None, "image/jpeg", 8, 8, 1, T0, "mtime"
            ),
        )
        assert image_id is not None
        await detections.insert_many(conn, image_id, "front", T0, [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9))])
    return image_id


async def _identify(pool: asyncpg.Pool, recognizer: Recognizer, vectors: PersonVectors, n: int) -> str | None:
    image_id = await _image(pool, n)
    async with pool.acquire() as conn, conn.transaction():
        [identity], _ = await recognizer.identify(conn, "front", image_id, [vectors])
    assert identity is not None
    return identity.name


def _other_process(database_url: str, script: str, **args: object) -> None:
    """Run ``script`` (async body using ``conn`` and ``people``) in a separate Python process:
    what another worker or the API process committing a change looks like."""
    code = (
        "import asyncio, json, sys, asyncpg\n"
        "from inference_server.store import people\n"
        "async def main(args):\n"
        "    conn = await asyncpg.connect(sys.argv[1])\n"
        "    try:\n" + "".join(f"        {line}\n" for line in script.splitlines()) + "    finally:\n"
        "        await conn.close()\n"
        "asyncio.run(main(json.loads(sys.argv[2])))\n"
    )
    subprocess.run([sys.executable, "-c", code, database_url, json.dumps(args)], cwd=ROOT, check=True, timeout=60)


async def test_identifying_an_image_asks_the_database_nothing_about_the_household(
    pool: asyncpg.Pool, astronaut: tuple[PersonVectors, PersonVectors]
) -> None:
    enrolled, seen = astronaut
    anna = await people.create(pool, "Anna", "person.anna")
    assert enrolled.face is not None
    await people.add_embeddings(pool, anna.id, [("face", MODELS["face"], enrolled.face.tolist())], origin="upload")
    recognizer = Recognizer(Settings(), {}, MODELS)
    await recognizer.watch(pool)
    try:
        assert await _identify(pool, recognizer, seen, 1) == "Anna"  # the first image loads the household
        queries: list[str] = []

        def log_query(record: asyncpg.connection.LoggedQuery) -> None:
            queries.append(record.query)

        for n in (2, 3):
            image_id = await _image(pool, n)
            async with pool.acquire() as conn, conn.transaction():
                conn.add_query_logger(log_query)
                try:
                    [identity], enrolled_people = await recognizer.identify(conn, "front", image_id, [seen])
                finally:
                    conn.remove_query_logger(log_query)
            assert identity is not None and identity.name == "Anna" and enrolled_people == 1
        household = [q for q in queries if any(t in q for t in ("person_embeddings", "people_version", "FROM people"))]
        assert household == [], household
        # Everyone known: no stranger to link, so neither the strangers' lock nor the batch's
        # unknown visitors are read.
        strangers = [q for q in queries if "pg_advisory_xact_lock" in q or "batch_images" in q]
        assert strangers == [], strangers
        assert recognizer.reloads == 1
    finally:
        await recognizer.aclose()


async def test_a_change_committed_by_another_process_is_used_at_the_next_image(
    pool: asyncpg.Pool, database_url: str, astronaut: tuple[PersonVectors, PersonVectors]
) -> None:
    enrolled, seen = astronaut
    recognizer = Recognizer(Settings(), {}, MODELS)
    await recognizer.watch(pool)
    try:
        assert await _identify(pool, recognizer, seen, 1) is None  # nobody enrolled yet
        assert enrolled.face is not None
        _other_process(
            database_url,
            "p = await people.create(conn, 'Anna', None)\n"
            "await people.add_embeddings(conn, p.id, [('face', args['model'], args['face'])], origin='upload')",
            model=MODELS["face"],
            face=enrolled.face.tolist(),
        )
        await wait_until(lambda: recognizer._stale, timeout=10, what="the change notification")
        assert await _identify(pool, recognizer, seen, 2) == "Anna"

        _other_process(database_url, "await conn.execute(\"UPDATE people SET name = 'Anna B.'\")")
        await wait_until(lambda: recognizer._stale, timeout=10, what="the rename's notification")
        assert await _identify(pool, recognizer, seen, 3) == "Anna B."  # a rename changes no embedding

        _other_process(database_url, "await conn.execute('DELETE FROM people')")  # the embeddings go by cascade
        await wait_until(lambda: recognizer._stale, timeout=10, what="the deletion's notification")
        assert await _identify(pool, recognizer, seen, 4) is None
        assert recognizer.reloads == 4
    finally:
        await recognizer.aclose()


async def test_a_change_made_while_not_listening_is_caught(
    pool: asyncpg.Pool, astronaut: tuple[PersonVectors, PersonVectors], caplog: pytest.LogCaptureFixture
) -> None:
    enrolled, seen = astronaut
    assert enrolled.face is not None
    face = [("face", MODELS["face"], enrolled.face.tolist())]

    # The LISTEN connection dropped by PostgreSQL: the change made meanwhile is heard by nobody;
    # listening again marks the household stale.
    recognizer = Recognizer(Settings(), {}, MODELS)
    await recognizer.watch(pool)
    try:
        assert await _identify(pool, recognizer, seen, 1) is None
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = $1",
            f'LISTEN "{people.CHANGES_CHANNEL}"',
        )
        assert killed == 1
        anna = await people.create(pool, "Anna", None)
        await people.add_embeddings(pool, anna.id, face, origin="upload")
        await wait_until(lambda: recognizer._stale, timeout=10, what="listening again")
        assert await _identify(pool, recognizer, seen, 2) == "Anna"
    finally:
        await recognizer.aclose()

    # No listener at all: the periodic re-check of the household's version catches the change.
    unwatched = Recognizer(Settings(), {}, MODELS, recheck_s=0.3)
    try:
        assert await _identify(pool, unwatched, seen, 3) == "Anna"
        await people.delete(pool, anna.id)
        await asyncio.sleep(0.4)  # past the re-check interval
        with caplog.at_level(logging.WARNING, logger="inference_server.pipeline.identify"):
            assert await _identify(pool, unwatched, seen, 4) is None
        assert "household changed without a notification heard" in caplog.text
    finally:
        unwatched.close()

"""Recognition stage: each person detection's face and body embeddings, matched against the
enrolled household, stored with the detection in the result's transaction.

``embed`` runs before the transaction on one dedicated thread, bounded: at most
``embedding_max_people`` people per image (the largest first); and an image is not embedded at
all while inferred images wait to be stored behind it (the detector is ahead: a burst) or
``embedding_max_pending`` images are already being embedded (counted in
``hsi_person_embeddings_total{result="busy"}``). So detection and alerting never wait for
recognition: an image without embeddings is judged without identities.

``identify`` runs inside the transaction and matches against the household held in memory. It
issues no query to learn whether the household changed: migration 0009's triggers send
``NOTIFY hsi_people`` in every transaction that changes people or their embeddings, and each
worker process's ``Recognizer`` (``watch``) marks its copy stale when one arrives; the next
image reloads it. A notification missed while the LISTEN connection was down is caught when it
is listened on again (stale at once) and by a re-check of the household's version every
``RECHECK_S`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from PIL import Image

from inference_server.config import Settings
from inference_server.detection.detector import RgbPixels, rgb_array
from inference_server.domain import Detection, Identity
from inference_server.embedding.crops import body_box, crop, face_box
from inference_server.embedding.embedder import Embedder, EmbeddingSource, Vectors
from inference_server.embedding.matching import Gallery, Sightings, SightingsTable, identify, link, match_stranger
from inference_server.store import people
from inference_server.store.db import Listener
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

#: Longest the in-memory household goes without checking its version in the database: the safety
#: net for a change notification missed while the LISTEN connection was being re-opened.
RECHECK_S = 30.0
#: How often the LISTEN connection is checked (no query: whether the socket still lives).
LISTEN_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class PersonVectors:
    """One person detection's embeddings (None: that part was not seen well enough)."""

    face: Vectors | None
    body: Vectors | None


class Recognizer:
    def __init__(
        self,
        settings: Settings,
        embedders: Mapping[EmbeddingSource, Embedder],
        models: Mapping[str, str],
        *,
        recheck_s: float = RECHECK_S,
    ):
        self.embedders = dict(embedders)
        #: source → the model's name as stored with each vector (vectors of other models are not compared).
        self.models = dict(models)
        self.max_people = settings.embedding_max_people
        self.max_pending = settings.embedding_max_pending
        self.stranger_window_h = settings.stranger_window_h
        self.stranger_visit_gap_s = settings.stranger_visit_gap_s
        #: Recent strangers' sightings, read incrementally (``StrangerCache``).
        self.strangers = StrangerCache(timedelta(hours=settings.stranger_window_h))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._pending = 0
        self._gallery = Gallery.build([])
        self._names: dict[int, tuple[str, str | None]] = {}
        #: The household version the in-memory copy was loaded at (None: not loaded yet).
        self._version: int | None = None
        #: Set by a change notification (or a re-opened LISTEN): reload before the next match.
        self._stale = True
        self._checked = -math.inf
        self.recheck_s = recheck_s
        self._listener: Listener | None = None
        self._watching: asyncio.Task[None] | None = None
        #: Household reloads (a test and the log read it).
        self.reloads = 0

    async def watch(self, pool: asyncpg.Pool) -> None:
        """LISTEN for household changes (``people.CHANGES_CHANNEL``) on a connection of ``pool``,
        re-opened in the background after PostgreSQL dropped it. Without it (a recognizer used
        outside the server) changes are seen at the periodic re-check only."""
        if self._listener is not None:
            return
        self._listener = Listener(pool, people.CHANGES_CHANNEL, self._on_change)
        await self._listener.ensure()
        self._watching = asyncio.create_task(self._keep_listening(self._listener), name="recognizer-listen")

    def _on_change(self, *_: object) -> None:
        self._stale = True

    async def _keep_listening(self, listener: Listener) -> None:
        while True:
            await asyncio.sleep(LISTEN_CHECK_S)
            try:
                if await listener.ensure():
                    # Listening again after the connection was lost: a change may have gone unheard.
                    self._stale = True
                    log.info("listening for household changes again")
            except Exception:
                log.exception("household change listener failed; the %.0f s re-check still applies", self.recheck_s)

    async def aclose(self) -> None:
        """Stops listening and the embedding thread."""
        if self._watching is not None:
            self._watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watching
            self._watching = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- before the transaction ----------------------------------------------------------------
    async def embed(
        self, image: Image.Image | RgbPixels, detections: Sequence[Detection], *, backlog: int = 0
    ) -> list[PersonVectors | None]:
        """Embeddings of each person detection (parallel to ``detections``; None for the rest) in
        ``image``, a Pillow image or RGB pixels (the detect worker's decoded picture).

        ``backlog``: inferred batches waiting to be stored behind this one. Any backlog, or
        ``max_pending`` images already being embedded, and this image is not embedded: the
        detector is ahead of storing, and recognition must not slow alerts down."""
        out: list[PersonVectors | None] = [None] * len(detections)
        persons = [i for i, d in enumerate(detections) if d.category == "person"]
        if not persons:
            return out
        if backlog > 0 or self._pending >= self.max_pending:
            metrics.EMBEDDINGS.labels("busy").inc(len(persons))
            log.info("recognition skipped, busy people=%d pending=%d backlog=%d", len(persons), self._pending, backlog)
            return out
        by_size = sorted(persons, key=lambda i: -_area(detections[i]))
        chosen, dropped = by_size[: self.max_people], by_size[self.max_people :]
        if dropped:
            metrics.EMBEDDINGS.labels("per_image_limit").inc(len(dropped))
        self._pending += 1
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._embed_now, image, [detections[i] for i in chosen]
            )
        except Exception:
            # A model failure costs this image its identities, never its detections or its alert.
            log.exception("recognition failed people=%d", len(chosen))
            metrics.EMBEDDINGS.labels("failed").inc(len(chosen))
            return out
        finally:
            self._pending -= 1
        for index, vectors in zip(chosen, found, strict=True):
            out[index] = vectors
        metrics.EMBEDDINGS.labels("done").inc(sum(v is not None for v in found))
        return out

    def _embed_now(self, image: Image.Image | RgbPixels, detections: Sequence[Detection]) -> list[PersonVectors | None]:
        pixels = rgb_array(image)
        height, width = pixels.shape[:2]
        crops: dict[EmbeddingSource, list[tuple[int, Any]]] = {"face": [], "body": []}
        for index, det in enumerate(detections):
            if "face" in self.embedders and (box := face_box(det, width, height)) is not None:
                crops["face"].append((index, crop(pixels, box)))
            if "body" in self.embedders and (box := body_box(det, width, height)) is not None:
                crops["body"].append((index, crop(pixels, box)))
        vectors: dict[EmbeddingSource, dict[int, Vectors]] = {"face": {}, "body": {}}
        for source, items in crops.items():
            if items:
                rows = self.embedders[source].embed([c for _, c in items])
                vectors[source] = {index: rows[n] for n, (index, _) in enumerate(items)}
        return [
            PersonVectors(vectors["face"].get(i), vectors["body"].get(i))
            if i in vectors["face"] or i in vectors["body"]
            else None
            for i in range(len(detections))
        ]

    # --- inside the result's transaction --------------------------------------------------------
    async def identify(
        self,
        conn: asyncpg.Connection,
        camera_id: str,
        image_id: int,
        vectors: Sequence[PersonVectors | None],
        seen: Sequence[tuple[int, datetime]] | None = None,
    ) -> tuple[list[Identity | None], int]:
        """Match, link and store each embedded detection of the image (its detections are inserted
        already, in ``vectors``' order); its identities, and how many people are enrolled.
        ``seen``: the detections' ids and capture time, in that order, when the caller has them
        (the store's statement returned them), else they are read.

        An unknown person is linked to the batch's earlier unknown sightings (``visitor``) and to
        a stranger seen within ``stranger_window_h`` (``stranger``, across events and cameras);
        people in one image are never linked to each other."""
        identities: list[Identity | None] = [None] * len(vectors)
        await self._refresh(conn)
        if not any(v is not None for v in vectors):
            return identities, self._gallery.people()
        if seen is None:
            seen = await people.detections_seen(conn, image_id)
        if len(seen) != len(vectors):
            raise RuntimeError(f"image {image_id} has {len(seen)} stored detections, {len(vectors)} were embedded")
        strangers: _Strangers | None = None
        stored: list[tuple[int, list[tuple[EmbeddingSource, str, Vectors]], Identity]] = []
        for index, ((detection_id, seen_at), found) in enumerate(zip(seen, vectors, strict=True)):
            if found is None:
                continue
            match = identify(self._gallery, found.face, found.body)
            source: EmbeddingSource = "face" if found.face is not None else "body"
            if match is not None:
                name, entity = self._names.get(match.person_id, (None, None))
                identity = Identity(match.source, match.person_id, name, entity, match.similarity)
            else:
                if strangers is None:
                    strangers = _Strangers(self, conn, camera_id)
                identity = await strangers.identity(detection_id, seen_at, source, found)
            parts: tuple[tuple[EmbeddingSource, Vectors | None], ...] = (("face", found.face), ("body", found.body))
            kept = [(s, self.models[s], v) for s, v in parts if v is not None]  # made bytes once, when stored
            stored.append((detection_id, kept, identity))
            identities[index] = identity
        # The image's people in one statement: linking one of them reads none of the others' rows
        # (the batch's visitors and the strangers' sightings were read when the lock was taken).
        await people.store_detections(conn, stored)
        return identities, self._gallery.people()

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        """Reload the household when a change was announced, or check its version when the last
        check is ``recheck_s`` old; otherwise nothing (no query)."""
        now = time.monotonic()
        if not self._stale and now - self._checked < self.recheck_s:
            return
        # Cleared before reading: a change committed while this reads marks it stale again.
        stale, self._stale = self._stale, False
        self._checked = now
        version = await people.household_version(conn)
        if not stale and version == self._version:
            return
        if not stale:
            log.warning("household changed without a notification heard (version %s → %s)", self._version, version)
        self._gallery = Gallery.build(await people.gallery(conn, self.models))
        self._names = await people.names(conn)
        self._version = version
        self.reloads += 1


#: Sightings kept in memory per stranger and source (the latest): enough views to match, bounded.
SIGHTINGS_PER_STRANGER = 4


class StrangerCache:
    """The strangers' sightings within the window, held by one worker process: brought up to date
    under the strangers' lock with the sightings committed since its last read (by their
    ``stranger_seq``, which follows commit order), so matching reads no vectors it read before."""

    def __init__(self, window: timedelta) -> None:
        self.window = window
        self.after = 0
        self.loaded = False
        self._table = SightingsTable(SIGHTINGS_PER_STRANGER)
        #: Vectors read from the database (a test and the bench read it).
        self.read = 0

    async def catch_up(self, conn: asyncpg.Connection, seen_at: datetime, models: dict[str, str]) -> None:
        since = None if self.loaded else seen_at - self.window
        rows = await people.stranger_sightings(conn, self.after, since, models)
        self._table.add_many([(stranger, source, vector, at.timestamp()) for _, stranger, source, at, vector in rows])
        self.after = max([self.after, *(seq for seq, *_ in rows)])
        self.read += len(rows)
        self.loaded = True
        # Sightings far older than the window of the newest image are of no use any more.
        self._table.forget_seen_before((seen_at - 2 * self.window).timestamp())

    def forget(self, stranger: int) -> None:
        """A stranger that is not in the database (retention deleted it, or its transaction
        rolled back after this process read it)."""
        self._table.forget(stranger)

    def sightings(self) -> Sightings:
        return self._table.sightings()


class _Strangers:
    """Links one image's unknown people to the batch's visitors and to recent strangers. Holds
    the strangers' lock (``people.lock_strangers``) from its first use to the end of the
    transaction, so two workers cannot make two strangers of one person, and the sightings'
    numbers follow their commit order."""

    def __init__(self, recognizer: Recognizer, conn: asyncpg.Connection, camera_id: str) -> None:
        self.recognizer = recognizer
        self.conn = conn
        self.camera_id = camera_id
        self.window = timedelta(hours=recognizer.stranger_window_h)
        self._locked = False
        #: The camera's open batch's unknown visitors (read with the lock: an image whose people
        #: are all known reads none).
        self._visitors: list[tuple[int, Vectors, int | None, int]] = []
        #: Strangers and visitors given to people of this image: not given to another of them.
        self._taken: set[int] = set()
        self._taken_visitors: set[int] = set()

    async def identity(
        self,
        detection_id: int,
        seen_at: datetime,
        source: EmbeddingSource,
        found: PersonVectors,
    ) -> Identity:
        conn, r = self.conn, self.recognizer
        if not self._locked:
            self._visitors = await people.lock_strangers(conn, self.camera_id, r.models.get("body"))
            await r.strangers.catch_up(conn, seen_at, r.models)
            self._locked = True
        visitors = self._visitors
        visitor: int | None = None
        stranger: int | None = None
        how: EmbeddingSource | None = None
        free = [(v, vec) for v, vec, _, _ in visitors if v not in self._taken_visitors]
        if found.body is not None and free:
            visitor = link(free, found.body)
            if visitor is not None:
                stranger = next((s for v, _, s, _ in visitors if v == visitor and s is not None), None)
                how = "body" if stranger is not None else None
        seen: tuple[int, datetime] | None = None
        if stranger is not None and stranger not in self._taken:
            seen = await people.saw_stranger(conn, stranger, seen_at, r.stranger_visit_gap_s)
        if seen is None:
            stranger, how = None, None
            at = seen_at.timestamp()
            window = self.window.total_seconds()
            match = match_stranger(
                r.strangers.sightings(),
                found.face,
                found.body,
                exclude=self._taken,
                seen_between=(at - window, at + window),
            )
            if match is not None:
                seen = await people.saw_stranger(conn, match.stranger, seen_at, r.stranger_visit_gap_s)
                if seen is None:
                    r.strangers.forget(match.stranger)
                else:
                    stranger, how = match.stranger, match.source
        if stranger is None or seen is None:
            stranger = await people.new_stranger(conn, seen_at)
            seen = (1, seen_at)
        visits, first_seen = seen
        self._taken.add(stranger)
        if visitor is None:
            visitor = detection_id
        self._taken_visitors.add(visitor)
        return Identity(
            source, visitor=visitor, stranger=stranger, visits=visits, first_seen=first_seen, stranger_link=how
        )


def _area(det: Detection) -> float:
    x1, y1, x2, y2 = det.bbox
    return (x2 - x1) * (y2 - y1)


class NoPersonInPhoto(ValueError):
    """An enrolment photo in which not exactly one person is seen well enough to embed."""


class PhotoEnroller:
    """Embeddings of the one person in an uploaded photo (``POST /people/{id}/photos``): the
    detector finds them (its keypoints the face), the recognizer's models embed them. The detect
    worker's detector belongs to its one inference thread, so enrolment builds a detector of its
    own on first use (the same settings) and runs it on the recognizer's thread."""

    def __init__(self, recognizer: Recognizer, detector_factory: Any, max_side: int) -> None:
        self.recognizer = recognizer
        self._factory = detector_factory
        self._detector: Any = None
        self._max_side = max_side
        self._lock = asyncio.Lock()

    async def vectors(self, data: bytes) -> list[tuple[EmbeddingSource, str, Vectors]]:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self.recognizer._pool, self._vectors_now, data)

    def _vectors_now(self, data: bytes) -> list[tuple[EmbeddingSource, str, Vectors]]:
        import io

        from PIL import ImageOps, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as opened:
                opened.draft("RGB", (self._max_side, self._max_side))
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            raise NoPersonInPhoto(f"not a readable JPEG or PNG: {err}") from err
        if self._detector is None:
            self._detector = self._factory()
        persons = [d for d in self._detector.detect([image])[0] if d.category == "person"]
        if len(persons) != 1:
            raise NoPersonInPhoto(f"the photo must show one person; {len(persons)} found")
        found = self.recognizer._embed_now(image, persons)[0]
        if found is None:
            raise NoPersonInPhoto("the person is too small to describe")
        parts: tuple[tuple[EmbeddingSource, Vectors | None], ...] = (("face", found.face), ("body", found.body))
        return [(s, self.recognizer.models[s], v) for s, v in parts if v is not None]

"""Recognition stage: each person detection's face and body embeddings, matched against the
enrolled household, stored with the detection in the result's transaction.

``embed`` runs before the transaction on one dedicated thread, bounded: at most
``embedding_max_people`` people per image (the largest first); and an image is not embedded at
all while inferred images wait to be stored behind it (the detector is ahead: a burst) or
``embedding_max_pending`` images are already being embedded (counted in
``hsi_person_embeddings_total{result="busy"}``). So detection and alerting never wait for
recognition: an image without embeddings is judged without identities.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
from PIL import Image

from inference_server.config import Settings
from inference_server.domain import Detection, Identity
from inference_server.embedding.crops import body_box, crop, face_box
from inference_server.embedding.embedder import Embedder, EmbeddingSource, Vectors
from inference_server.embedding.matching import Gallery, identify, link
from inference_server.store import people
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PersonVectors:
    """One person detection's embeddings (None: that part was not seen well enough)."""

    face: Vectors | None
    body: Vectors | None


class Recognizer:
    def __init__(self, settings: Settings, embedders: Mapping[EmbeddingSource, Embedder], models: Mapping[str, str]):
        self.embedders = dict(embedders)
        #: source → the model's name as stored with each vector (vectors of other models are not compared).
        self.models = dict(models)
        self.max_people = settings.embedding_max_people
        self.max_pending = settings.embedding_max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._pending = 0
        self._gallery = Gallery.build([])
        self._version: tuple[int, int] | None = None
        self._names: dict[int, tuple[str, str | None]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- before the transaction ----------------------------------------------------------------
    async def embed(
        self, image: Image.Image, detections: Sequence[Detection], *, backlog: int = 0
    ) -> list[PersonVectors | None]:
        """Embeddings of each person detection (parallel to ``detections``; None for the rest).

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

    def _embed_now(self, image: Image.Image, detections: Sequence[Detection]) -> list[PersonVectors | None]:
        pixels: np.ndarray[Any, np.dtype[np.uint8]] = np.asarray(image.convert("RGB"))
        width, height = image.size
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
        self, conn: asyncpg.Connection, camera_id: str, image_id: int, vectors: Sequence[PersonVectors | None]
    ) -> tuple[list[Identity | None], int]:
        """Match, link and store each embedded detection of the image (its detections are inserted
        already, in ``vectors``' order); its identities, and how many people are enrolled."""
        identities: list[Identity | None] = [None] * len(vectors)
        await self._refresh(conn)
        if not any(v is not None for v in vectors):
            return identities, self._gallery.people()
        ids = await people.detection_ids(conn, image_id)
        if len(ids) != len(vectors):
            raise RuntimeError(f"image {image_id} has {len(ids)} stored detections, {len(vectors)} were embedded")
        visitors = await people.unknown_visitors(conn, camera_id, self.models["body"]) if "body" in self.models else []
        for index, (detection_id, found) in enumerate(zip(ids, vectors, strict=True)):
            if found is None:
                continue
            match = identify(self._gallery, found.face, found.body)
            source: EmbeddingSource = "face" if found.face is not None else "body"
            if match is not None:
                name, entity = self._names.get(match.person_id, (None, None))
                identity = Identity(match.source, match.person_id, name, entity, match.similarity)
            else:
                visitor = link(visitors, found.body) if found.body is not None else None
                identity = Identity(source, visitor=visitor if visitor is not None else detection_id)
                if found.body is not None:
                    visitors.append((identity.visitor or detection_id, [float(x) for x in found.body]))
            parts: tuple[tuple[EmbeddingSource, Vectors | None], ...] = (("face", found.face), ("body", found.body))
            stored = [(s, self.models[s], [float(x) for x in v]) for s, v in parts if v is not None]
            await people.store_detection(conn, detection_id, stored, identity)
            identities[index] = identity
        return identities, self._gallery.people()

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        version = await people.gallery_version(conn)
        if version != self._version:
            self._gallery = Gallery.build(await people.gallery(conn, self.models))
            self._version = version
        self._names = await people.names(conn)  # a rename changes no embedding


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

    async def vectors(self, data: bytes) -> list[tuple[EmbeddingSource, str, list[float]]]:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self.recognizer._pool, self._vectors_now, data)

    def _vectors_now(self, data: bytes) -> list[tuple[EmbeddingSource, str, list[float]]]:
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
        return [(s, self.recognizer.models[s], [float(x) for x in v]) for s, v in parts if v is not None]

"""Exact nearest-neighbour matching of a person's embeddings against the enrolled household.

A household enrols tens of people with a few embeddings each: the gallery is one matrix per
source held in memory, and a match is one matrix-vector product (1 000 embeddings × 1 024
dimensions: ~0.1 ms). Past ~100 000 embeddings an approximate index (pgvector's HNSW, FAISS)
would be the next step; docs/privacy.md says so.

Thresholds (cosine similarity of unit vectors) come from ``bench/embeddings.py``'s measured
distributions on real photos (docs/performance.md, "Embeddings"):

- face (HSE FaceRes): same person 0.80–0.98, different people 0.18–0.59 → 0.70, the middle of
  the gap;
- body (MobileNetV2 appearance): same person 0.83–0.99, different people 0.42–0.85 — the ranges
  overlap, so body is a weak identity: it names a person only at 0.92 (above every different
  pair measured), and only when no face was seen, and links the same unknown person across the
  images of one batch at 0.86.

Strangers (an unknown person seen again across events, within hours): a face decides as for
naming (0.70); a body links only at 0.92 and only where no face contradicts it (this sighting or
the stranger shows no face). ``bench/recognition.py --strangers`` measures the false links.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference_server.embedding.embedder import SOURCES, EmbeddingSource, Vectors

THRESHOLDS: Mapping[EmbeddingSource, float] = {"face": 0.70, "body": 0.92}
#: Body similarity that makes two unknown sightings of one batch the same visitor.
LINK_THRESHOLD = 0.86
#: Similarity that makes an unknown sighting the same stranger as an earlier one (across events).
STRANGER_THRESHOLDS: Mapping[EmbeddingSource, float] = {"face": 0.70, "body": 0.92}


@dataclass(frozen=True, slots=True)
class Match:
    person_id: int
    similarity: float
    source: EmbeddingSource


@dataclass(frozen=True, slots=True)
class Gallery:
    """The household's embeddings: per source, a matrix of unit rows and the person of each row."""

    vectors: Mapping[EmbeddingSource, Vectors]
    owners: Mapping[EmbeddingSource, np.ndarray[Any, np.dtype[np.int64]]]

    @classmethod
    def build(cls, rows: Sequence[tuple[int, EmbeddingSource, Sequence[float] | Vectors]]) -> Gallery:
        vectors: dict[EmbeddingSource, Vectors] = {}
        owners: dict[EmbeddingSource, np.ndarray[Any, np.dtype[np.int64]]] = {}
        for source in SOURCES:
            mine = [(person, vector) for person, s, vector in rows if s == source]
            if mine:
                vectors[source] = np.asarray([v for _, v in mine], dtype=np.float32)
                owners[source] = np.asarray([p for p, _ in mine], dtype=np.int64)
        return cls(vectors, owners)

    @property
    def empty(self) -> bool:
        return not self.vectors

    def people(self) -> int:
        return len({int(p) for owners in self.owners.values() for p in owners})

    def best(self, source: EmbeddingSource, vector: Sequence[float] | Vectors) -> Match | None:
        """The most similar person by ``source`` (any of their embeddings), whatever the similarity."""
        matrix = self.vectors.get(source)
        if matrix is None or not len(matrix):
            return None
        scores = matrix @ np.asarray(vector, dtype=np.float32)
        row = int(np.argmax(scores))
        return Match(int(self.owners[source][row]), round(float(scores[row]), 4), source)


def identify(
    gallery: Gallery,
    face: Sequence[float] | Vectors | None,
    body: Sequence[float] | Vectors | None,
    thresholds: Mapping[EmbeddingSource, float] = THRESHOLDS,
) -> Match | None:
    """The enrolled person this is, or None (unknown).

    A seen face decides: it matches at the face threshold or the person is unknown (a body that
    looks alike does not overrule a face that does not). Without a face, a body match at the
    (high) body threshold names the person."""
    if face is not None and "face" in gallery.vectors:
        match = gallery.best("face", face)
        return match if match is not None and match.similarity >= thresholds["face"] else None
    if body is not None:
        match = gallery.best("body", body)
        if match is not None and match.similarity >= thresholds["body"]:
            return match
    return None


def link(earlier: Sequence[tuple[int, Sequence[float] | Vectors]], body: Sequence[float] | Vectors) -> int | None:
    """The visitor (``earlier``: (visitor id, body vector) of the batch's unknown sightings) that
    ``body`` looks most like at ``LINK_THRESHOLD`` or more; None: a new visitor."""
    if not earlier:
        return None
    matrix = np.asarray([v for _, v in earlier], dtype=np.float32)
    scores = matrix @ np.asarray(body, dtype=np.float32)
    row = int(np.argmax(scores))
    return earlier[row][0] if float(scores[row]) >= LINK_THRESHOLD else None


@dataclass(frozen=True, slots=True)
class StrangerMatch:
    stranger: int
    similarity: float
    source: EmbeddingSource


@dataclass(frozen=True, slots=True)
class Sightings:
    """Recent unknown sightings: per source, a matrix of unit rows, the stranger of each row and
    when it was seen (epoch seconds)."""

    vectors: Mapping[EmbeddingSource, Vectors]
    owners: Mapping[EmbeddingSource, np.ndarray[Any, np.dtype[np.int64]]]
    times: Mapping[EmbeddingSource, np.ndarray[Any, np.dtype[np.float64]]]

    @classmethod
    def build(cls, rows: Sequence[tuple[int, EmbeddingSource, Sequence[float] | Vectors, float]]) -> Sightings:
        vectors: dict[EmbeddingSource, Vectors] = {}
        owners: dict[EmbeddingSource, np.ndarray[Any, np.dtype[np.int64]]] = {}
        times: dict[EmbeddingSource, np.ndarray[Any, np.dtype[np.float64]]] = {}
        for source in SOURCES:
            mine = [(stranger, vector, at) for stranger, s, vector, at in rows if s == source]
            if mine:
                vectors[source] = np.asarray([v for _, v, _ in mine], dtype=np.float32)
                owners[source] = np.asarray([o for o, _, _ in mine], dtype=np.int64)
                times[source] = np.asarray([t for _, _, t in mine], dtype=np.float64)
        return cls(vectors, owners, times)


def match_stranger(
    sightings: Sightings | Sequence[tuple[int, EmbeddingSource, Sequence[float] | Vectors]],
    face: Sequence[float] | Vectors | None,
    body: Sequence[float] | Vectors | None,
    thresholds: Mapping[EmbeddingSource, float] = STRANGER_THRESHOLDS,
    *,
    exclude: Collection[int] = (),
    seen_between: tuple[float, float] | None = None,
) -> StrangerMatch | None:
    """The earlier stranger this unknown person is, or None (a new stranger). ``sightings``:
    recent unknown sightings (or (stranger, source, vector) rows); ``exclude``: strangers this one
    cannot be (the other people of the same image); ``seen_between``: only sightings of that time
    range (epoch seconds) count.

    A face matching one of a stranger's faces decides. Otherwise a body match at the (high) body
    threshold links, unless a face contradicts it: this person's face was seen and so was the
    stranger's, and they did not match (the face says it is someone else in similar clothes)."""
    if not isinstance(sightings, Sightings):
        sightings = Sightings.build([(o, s, v, 0.0) for o, s, v in sightings])
    excluded = np.asarray(sorted(exclude), dtype=np.int64)

    def scores(source: EmbeddingSource, vector: Sequence[float] | Vectors) -> np.ndarray[Any, np.dtype[np.float32]]:
        # einsum, not BLAS: a matrix-vector product this small is faster on one thread than on
        # a BLAS thread team woken on a busy CPU (measured: 0.1 ms vs tens of ms under load).
        out: np.ndarray[Any, np.dtype[np.float32]] = np.einsum(
            "ij,j->i", sightings.vectors[source], np.asarray(vector, dtype=np.float32)
        )
        blocked = np.isin(sightings.owners[source], excluded)
        if seen_between is not None:
            at = sightings.times[source]
            blocked |= (at < seen_between[0]) | (at > seen_between[1])
        out[blocked] = -np.inf
        return out

    if face is not None and "face" in sightings.vectors:
        got = scores("face", face)
        row = int(np.argmax(got))
        if float(got[row]) >= thresholds["face"]:
            return StrangerMatch(int(sightings.owners["face"][row]), round(float(got[row]), 4), "face")
    if body is not None and "body" in sightings.vectors:
        got = scores("body", body)
        if face is not None and "face" in sightings.owners:
            # Both faces seen, and they do not match: someone else, however alike the clothes.
            got[np.isin(sightings.owners["body"], sightings.owners["face"])] = -np.inf
        row = int(np.argmax(got))
        if float(got[row]) >= thresholds["body"]:
            return StrangerMatch(int(sightings.owners["body"][row]), round(float(got[row]), 4), "body")
    return None

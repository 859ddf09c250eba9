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

import math
from collections import deque
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


class SightingsTable:
    """The strangers' recent sightings, kept as ``Sightings`` in place: per source, a matrix of
    rows that are reused. A stranger's sighting past its ``per_stranger`` latest takes the row of
    its oldest; a forgotten stranger's rows are free for the next sightings (owner -1, never
    matched); the matrix doubles when full, and is compacted when more than half its rows are
    free (a crowd gone from the window gives its memory back). So one new sighting writes one
    row: the matrices rebuilt from every kept vector at each new sighting made an unknown
    person's identify 6.9 ms with 500 strangers in the window, 2.7 ms now (docs/performance.md,
    stop 42)."""

    #: Rows handed out up to which free rows are left as they are (a few hundred kB at most).
    compact_above = 64

    def __init__(self, per_stranger: int) -> None:
        self.per_stranger = per_stranger
        self._vectors: dict[EmbeddingSource, Vectors] = {}
        self._owners: dict[EmbeddingSource, np.ndarray[Any, np.dtype[np.int64]]] = {}
        self._times: dict[EmbeddingSource, np.ndarray[Any, np.dtype[np.float64]]] = {}
        #: Rows handed out so far per source (the matrices' first ``_used`` rows are matched).
        self._used: dict[EmbeddingSource, int] = {}
        self._free: dict[EmbeddingSource, list[int]] = {}
        #: (stranger, source) → its rows, oldest first.
        self._rows: dict[tuple[int, EmbeddingSource], deque[int]] = {}
        #: At most the time of any stranger's latest sighting: a horizon at or before it finds
        #: nobody to expire without walking every stranger.
        self._latest_bound = math.inf

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())

    def add(self, stranger: int, source: EmbeddingSource, vector: Sequence[float] | Vectors, at: float) -> None:
        """A sighting of ``stranger`` at ``at`` (epoch seconds); sightings come oldest first."""
        self.add_many([(stranger, source, vector, at)])

    def add_many(self, rows: Sequence[tuple[int, EmbeddingSource, Sequence[float] | Vectors, float]]) -> None:
        """``add`` of each (stranger, source, vector, at), oldest first: the matrices grown once
        and written in one copy per source (a worker's first read of the window brings
        thousands). A vector of another length than its source's refuses them all."""
        latest: dict[tuple[int, EmbeddingSource], deque[tuple[Sequence[float] | Vectors, float]]] = {}
        for stranger, source, vector, at in rows:
            # Only each stranger's latest sightings of ``rows`` can stay.
            latest.setdefault((stranger, source), deque(maxlen=self.per_stranger)).append((vector, at))
        checked = []
        for source in SOURCES:
            mine = [(key[0], vector, at) for key, kept in latest.items() if key[1] == source for vector, at in kept]
            if not mine:
                continue
            values = np.asarray([vector for _, vector, _ in mine], dtype=np.float32)
            known = self._vectors[source].shape[1:] if source in self._vectors else values.shape[1:]
            if values.ndim != 2 or values.shape[1:] != known:
                raise ValueError(f"{source} vectors of shape {values.shape[1:]} among vectors of shape {known}")
            checked.append((source, mine, values))
        for source, mine, values in checked:
            self._reserve(source, self._used.get(source, 0) + len(mine), values.shape[1])
            self._latest_bound = min(self._latest_bound, min(at for _, _, at in mine))
            at_rows = [self._take(stranger, source) for stranger, _, _ in mine]
            self._vectors[source][at_rows] = values
            self._owners[source][at_rows] = [stranger for stranger, _, _ in mine]
            self._times[source][at_rows] = [at for _, _, at in mine]

    def forget(self, stranger: int) -> None:
        self._release([k for k in self._rows if k[0] == stranger])

    def forget_seen_before(self, horizon: float) -> None:
        """Strangers whose latest sighting of a source is older than ``horizon``: that source's rows."""
        if horizon <= self._latest_bound:
            return
        latest = {key: float(self._times[key[1]][rows[-1]]) for key, rows in self._rows.items()}
        self._release([key for key, at in latest.items() if at < horizon])
        self._latest_bound = min((at for at in latest.values() if at >= horizon), default=math.inf)

    def capacity(self, source: EmbeddingSource) -> int:
        """Rows the source's matrix has room for (a test reads it)."""
        return len(self._vectors.get(source, ()))

    def sightings(self) -> Sightings:
        """The rows handed out so far (views, valid until the next change); a source without
        any is left out, as ``Sightings.build`` leaves it."""
        sources = [s for s, used in self._used.items() if used]
        return Sightings(
            {s: self._vectors[s][: self._used[s]] for s in sources},
            {s: self._owners[s][: self._used[s]] for s in sources},
            {s: self._times[s][: self._used[s]] for s in sources},
        )

    def _take(self, stranger: int, source: EmbeddingSource) -> int:
        """The row for the stranger's next sighting: its oldest past ``per_stranger``, else a free
        one, else the next unused (room reserved)."""
        rows = self._rows.setdefault((stranger, source), deque())
        if len(rows) >= self.per_stranger:
            row = rows.popleft()
        elif self._free[source]:
            row = self._free[source].pop()
        else:
            row = self._used[source]
            self._used[source] = row + 1
        rows.append(row)
        return row

    def _reserve(self, source: EmbeddingSource, rows: int, size: int) -> None:
        """Room for ``rows`` rows of ``size`` values (doubling; 16 at first)."""
        if source not in self._vectors:
            self._vectors[source] = np.zeros((0, size), dtype=np.float32)
            self._owners[source] = np.zeros(0, dtype=np.int64)
            self._times[source] = np.zeros(0)
            self._used[source], self._free[source] = 0, []
        have = len(self._vectors[source])
        if rows > have:
            self._move(source, max(rows, 2 * have, 16), slice(0, self._used[source]))

    def _release(self, keys: Sequence[tuple[int, EmbeddingSource]]) -> None:
        for key in keys:
            source = key[1]
            for row in self._rows.pop(key):
                self._owners[source][row] = -1
                self._times[source][row] = -np.inf
                self._free[source].append(row)
        for source in {source for _, source in keys}:
            if self._used[source] > self.compact_above and 2 * len(self._free[source]) > self._used[source]:
                self._compact(source)

    def _compact(self, source: EmbeddingSource) -> None:
        """The rows in use moved to the front of new matrices sized for them (half as many again)."""
        keys = [k for k in self._rows if k[1] == source]
        kept = [row for k in keys for row in self._rows[k]]
        self._move(source, max(16, len(kept) + len(kept) // 2), kept)
        at = 0
        for key in keys:
            count = len(self._rows[key])
            self._rows[key] = deque(range(at, at + count))
            at += count
        self._used[source], self._free[source] = len(kept), []

    def _move(self, source: EmbeddingSource, room: int, kept: slice | list[int]) -> None:
        """New matrices of ``room`` rows for ``source``, the rows ``kept`` first, the rest free."""
        vectors = self._vectors[source][kept]
        live = len(vectors)
        grown = np.zeros((room, vectors.shape[1]), dtype=np.float32)
        grown[:live] = vectors
        owners, times = np.full(room, -1, dtype=np.int64), np.full(room, -np.inf)
        owners[:live], times[:live] = self._owners[source][kept], self._times[source][kept]
        self._vectors[source], self._owners[source], self._times[source] = grown, owners, times


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
    recent unknown sightings (or (stranger, source, vector) rows; a row owned by -1 is a free one,
    never matched); ``exclude``: strangers this one cannot be (the other people of the same
    image); ``seen_between``: only sightings of that time range (epoch seconds) count.

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
        owners = sightings.owners[source]
        blocked = (owners < 0) | np.isin(owners, excluded)
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

"""What the rules judge a camera's activity on, kept up to date image by image.

An activity that goes on (someone working in the garden for ten minutes) gathers thousands of
detections in its event's batches. Reading them all back and handing them all to the rules for
every stored group of images made an image's cost grow with the age of the event it joined
(``bench/long_event.py``: 3 → 51 ms of the server's CPU per image over ten minutes at 4 frames a
second). Of the detections the rules use only: the most confident of each category (the first in
capture order on a tie), the labels and the zones each stands in, every detection recognition
identified (in order), and counts per image. ``ActivitySummary`` keeps exactly that as images
join, and ``detections`` gives the rules the subsequence of the activity's detections that
carries it: the same judgement as all of them (tests/server/pipeline/test_activity_summary.py), at a cost
that does not grow with the activity. Of the identified detections, once their identities are
read (``keep_identified``), it keeps at most two per person, stranger or visitor: the rules'
identity factors use no more, and the identities read for each group stay as few as the people
seen.

A summary describes one batch as of one version of its row (``Batch.version``); the batch stage
keeps one per camera and trusts it only while the row it reads under lock has that version
(``pipeline/batch.py``), so another worker, a rolled-back transaction or a restart makes it read
the batch's detections again.
"""

from __future__ import annotations

import bisect
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from inference_server.domain import Identity, category_of
from inference_server.schemas import Category
from inference_server.store.batches import BatchDetection


def order_key(detection: BatchDetection) -> tuple[datetime, int]:
    """A batch's detections in the order ``batches.detections`` reads them."""
    return detection.captured_at, detection.detection_id


@dataclass(slots=True)
class ActivitySummary:
    batch_id: uuid.UUID
    #: The batch row's version this summary is complete for (``Batch.version``).
    version: int = 0
    images: set[int] = field(default_factory=set)
    #: Per category, the most confident detection; the first in order among equals.
    best: dict[Category, BatchDetection] = field(default_factory=dict)
    #: Per label and zones, the first detection in order.
    firsts: dict[tuple[str, tuple[str, ...]], BatchDetection] = field(default_factory=dict)
    #: The detections recognition identified, in order: all of them, until ``keep_identified``.
    identified: list[BatchDetection] = field(default_factory=list)
    #: Most of each label seen together in one image.
    max_counts: dict[str, int] = field(default_factory=dict)
    #: Per category, the images that show it.
    frames: Counter[Category] = field(default_factory=Counter)
    #: Per category, the most detections of it in one image and that image (the latest on a tie).
    shown: dict[Category, tuple[int, int]] = field(default_factory=dict)
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    @classmethod
    def of(cls, batch_id: uuid.UUID, version: int, rows: Iterable[BatchDetection]) -> ActivitySummary:
        summary = cls(batch_id, version)
        summary.add(rows)
        return summary

    def describes(self, batch_id: uuid.UUID, version: int) -> bool:
        """Whether this is the summary of that batch as of that version of its row."""
        return self.batch_id == batch_id and self.version == version

    def holds_any(self, image_ids: Iterable[int]) -> bool:
        return any(i in self.images for i in image_ids)

    def add(self, rows: Iterable[BatchDetection]) -> None:
        """The detections of images new to the activity, every detection of each image."""
        by_image: dict[int, list[BatchDetection]] = {}
        for row in rows:
            by_image.setdefault(row.image_id, []).append(row)
        for image_id, found in by_image.items():
            if image_id in self.images:
                raise ValueError(f"image {image_id} is in the activity already")
            self.images.add(image_id)
            for label, n in Counter(d.label for d in found).items():
                self.max_counts[label] = max(self.max_counts.get(label, 0), n)
            for category, n in Counter(category_of(d.label) for d in found).items():
                self.frames[category] += 1
                self.shown[category] = max(self.shown.get(category, (0, image_id)), (n, image_id))
            for d in found:
                self._add_detection(d)

    def _add_detection(self, d: BatchDetection) -> None:
        key = order_key(d)
        category = category_of(d.label)
        best = self.best.get(category)
        higher = best is None or d.confidence > best.confidence
        if higher or (best is not None and d.confidence == best.confidence and key < order_key(best)):
            self.best[category] = d
        first = self.firsts.get((d.label, d.zones))
        if first is None or key < order_key(first):
            self.firsts[(d.label, d.zones)] = d
        if d.identified:
            bisect.insort(self.identified, d, key=order_key)
        if self.first_seen is None or d.captured_at < self.first_seen:
            self.first_seen = d.captured_at
        if self.last_seen is None or d.captured_at > self.last_seen:
            self.last_seen = d.captured_at

    def keep_identified(self, identities: Mapping[int, Identity]) -> None:
        """Keep of the identified detections (``identities``: theirs, as read) what the rules'
        identity factors use, so the identities read for the next group do not grow with the
        activity. Per person, stranger or visitor (``Identity.who``): the first sighting (the
        rules name people in the order they appeared) and the one that decides, the most similar
        for a person (the first among equals) and the first with a face for an unknown person.
        A detection whose identity is gone (the person was forgotten) is dropped, as the rules
        would ignore it."""
        first: dict[tuple[str, int | None], BatchDetection] = {}
        best: dict[tuple[str, int | None], tuple[BatchDetection, Identity]] = {}
        for d in self.identified:  # in order
            identity = identities.get(d.detection_id)
            if identity is None:
                continue
            key = identity.who
            first.setdefault(key, d)
            held = best.get(key)
            if held is None:
                best[key] = (d, identity)
            elif identity.known:
                if (identity.similarity or 0) > (held[1].similarity or 0):
                    best[key] = (d, identity)
            elif identity.source == "face" and held[1].source != "face":
                best[key] = (d, identity)
        kept = {d.detection_id: d for d in (*first.values(), *(d for d, _ in best.values()))}
        self.identified = sorted(kept.values(), key=order_key)

    def top_category(self) -> Category:
        return min(self.best, key=("person", "vehicle", "object", "animal").index)

    def detections(self) -> list[BatchDetection]:
        """The detections that carry the activity's judgement, in order (see the module's text)."""
        kept = {d.detection_id: d for d in (*self.best.values(), *self.firsts.values(), *self.identified)}
        return sorted(kept.values(), key=order_key)

"""The payload types every layer shares: what a detector found, what a reasoner judges and what
it concludes. Plain frozen dataclasses with no behaviour beyond naming a label's category; they
depend on nothing in the server but the contract's ``schemas``, so ``store/`` can persist them
and ``detection/``, ``reasoning/`` and ``pipeline/`` can pass them around without importing
each other (docs/architecture.md, "The dependency rule")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from inference_server.schemas import AnalysisSource, Category, HouseholdContext, RiskFactor, RiskLevel, Zone

_VEHICLES = frozenset({"bicycle", "car", "motorcycle", "bus", "truck", "boat", "train", "airplane"})
_ANIMALS = frozenset({"bird", "cat", "dog", "horse", "sheep", "cow", "bear", "elephant", "zebra", "giraffe"})


def category_of(label: str) -> Category:
    """Map a model's class name onto the categories Home Assistant shows as occupancy."""
    name = label.lower()
    if name == "person":
        return "person"
    if name in _VEHICLES:
        return "vehicle"
    if name in _ANIMALS:
        return "animal"
    return "object"


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    confidence: float
    #: x1, y1, x2, y2 normalised to 0..1 of the image.
    bbox: tuple[float, float, float, float]
    #: A pose model's keypoints (COCO order: nose, eyes, ears, ...) as (x, y, confidence), x and y
    #: normalised like ``bbox``; None from a model without them. They locate a face to embed.
    keypoints: tuple[tuple[float, float, float], ...] | None = None

    @property
    def category(self) -> Category:
        return category_of(self.label)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an embedded person detection was recognised as: an enrolled person (``person_id``,
    ``name``, the ``similarity`` and ``source`` that decided) or unknown (``person_id`` None).
    ``source`` face: a face was embedded (so an unknown is an unfamiliar face); body: only the
    body was (a weak cue: an unknown body says little). ``visitor`` groups the sightings of one
    unknown person within a batch; ``stranger`` the sightings of one unknown person across events
    within the stranger window (its ``visits`` and ``first_seen`` so far; ``stranger_link``: what
    linked this sighting to an earlier one, None for the stranger's first)."""

    source: Literal["face", "body"]
    person_id: int | None = None
    name: str | None = None
    entity_id: str | None = None
    similarity: float | None = None
    visitor: int | None = None
    stranger: int | None = None
    visits: int | None = None
    first_seen: datetime | None = None
    stranger_link: Literal["face", "body"] | None = None

    @property
    def known(self) -> bool:
        return self.person_id is not None

    @property
    def who(self) -> tuple[str, int | None]:
        """Whom this sighting is of: the enrolled person, else the stranger (one unknown person
        across batches and events), else the visitor (one within a batch). An activity longer
        than a batch window gives one stranger a visitor per batch: counting visitors would make
        one person several."""
        if self.person_id is not None:
            return ("person", self.person_id)
        if self.stranger is not None:
            return ("stranger", self.stranger)
        return ("visitor", self.visitor)


@dataclass(frozen=True, slots=True)
class FeedbackCounts:
    """What people said about earlier events like this one (camera, zone, class, hour)."""

    false_alarm: int = 0
    correct: int = 0
    missed_threat: int = 0


@dataclass(frozen=True, slots=True)
class Observation:
    """What a reasoner judges: one camera's activity (one image, or a batch of them) in context.

    Only the first four fields are required; the rest default to "unknown", and a reasoner
    must not invent a factor from an unknown."""

    camera_id: str
    camera_name: str
    #: When the activity was seen, in the camera's local time.
    captured_at: datetime
    #: Every detection of the activity (all images of a batch).
    detections: Sequence[Detection]
    #: Zone names of each detection, parallel to ``detections``.
    detection_zones: Sequence[tuple[str, ...]] = ()
    zones: Sequence[Zone] = ()
    context: HouseholdContext | None = None
    #: Most of each label seen together in one image (default: counted over ``detections``).
    max_counts: Mapping[str, int] | None = None
    #: Images of the activity in which its top category (person, vehicle, object, animal) was
    #: seen; None: one image (a glance).
    frames: int | None = None
    #: When ``context`` was set, if that was after the capture: no context was known at capture
    #: time (older than the kept history), so the current one judges it, as a labelled fallback.
    context_set_late: datetime | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    #: Average images per hour with each label at this hour of day; None until learned.
    baseline: Mapping[str, float] | None = None
    #: Earlier visits (distinct events, or batches without one) with a person on this camera within
    #: the last hour; a continuing event is one visit.
    recent_visits: int = 0
    feedback: FeedbackCounts | None = None
    #: Who each detection was recognised as, parallel to ``detections`` (None: not embedded —
    #: not a person, too small, or skipped under load); empty when recognition is off.
    identities: Sequence[Identity | None] = ()
    #: People the household has enrolled; 0: recognition cannot call anyone unfamiliar.
    enrolled_people: int = 0


@dataclass(frozen=True, slots=True)
class Assessment:
    risk_score: int
    risk_level: RiskLevel
    summary: str
    reasoning: str
    factors: list[RiskFactor]
    analysis_source: AnalysisSource
    model: str
    objects: dict[str, int] = field(default_factory=dict)
    #: The LLM prompt that produced this assessment (``prompts.PROMPT_VERSION``); None for rules.
    prompt_version: str | None = None
    #: The language model's own words about the activity (its summary and reasoning), shown apart
    #: from the rules' factual ``summary``, after the server's grounding checks; None for rules.
    description: str | None = None
    #: A vision model's reading (prompt security-v2): what is happening (``prompts.ACTIVITIES``),
    #: what looks threatening, what it saw that the detector did not (its observation, labelled),
    #: the key frames it was shown (image ids, best first) and its confidence in its reading.
    activity: str | None = None
    threat_indicators: tuple[str, ...] = ()
    model_observations: tuple[str, ...] = ()
    frames_sent: tuple[int, ...] = ()
    confidence: float | None = None

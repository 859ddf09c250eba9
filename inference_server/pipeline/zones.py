"""Which zones a detection is in: the point where it touches the ground (bottom centre of
its box, as Frigate does) inside the zone's polygon."""

from __future__ import annotations

from collections.abc import Sequence

from inference_server.domain import Detection
from inference_server.schemas import Zone


def contains(polygon: Sequence[tuple[float, float]], x: float, y: float) -> bool:
    """Even-odd ray casting; points on an edge may fall either way."""
    inside = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
            inside = not inside
    return inside


def zones_of(detection: Detection, zones: Sequence[Zone]) -> tuple[str, ...]:
    x1, _, x2, y2 = detection.bbox
    foot_x, foot_y = (x1 + x2) / 2, y2
    return tuple(z.name for z in zones if contains(z.polygon, foot_x, foot_y))

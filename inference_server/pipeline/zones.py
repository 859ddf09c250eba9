"""Which zones a detection is in: the point where it touches the ground (bottom centre of
its box, as Frigate does) inside the zone's polygon."""

from __future__ import annotations

from collections.abc import Sequence

from inference_server.domain import Detection
from inference_server.schemas import Zone

#: How far (in frame fractions) a point may be from an edge and still be on it: float noise.
EDGE_TOLERANCE = 1e-9


def _on_segment(x: float, y: float, x1: float, y1: float, x2: float, y2: float) -> bool:
    cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
    if abs(cross) > EDGE_TOLERANCE * max(1.0, abs(x2 - x1) + abs(y2 - y1)):
        return False
    return (
        min(x1, x2) - EDGE_TOLERANCE <= x <= max(x1, x2) + EDGE_TOLERANCE
        and min(y1, y2) - EDGE_TOLERANCE <= y <= max(y1, y2) + EDGE_TOLERANCE
    )


def contains(polygon: Sequence[tuple[float, float]], x: float, y: float) -> bool:
    """Whether the point is in the closed polygon: a point on an edge or a corner is inside
    (a box touching the bottom of the frame stands in a zone drawn to the frame's edge);
    elsewhere even-odd ray casting."""
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if _on_segment(x, y, x1, y1, x2, y2):
            return True
    inside = False
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

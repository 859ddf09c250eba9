"""Two detectors' findings on the same picture, compared with the tolerance their letterboxes allow.

Two letterboxes that differ by a grey level (OpenCV's fixed point against a floating-point resize)
move a score by up to ~0.02 and a corner by a few thousandths of the picture, so a detection whose
score is that close to the threshold may be found by one side only.
"""

from __future__ import annotations

import numpy as np

from inference_server.domain import Detection

SCORE_TOLERANCE = 0.02


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def assert_same_detections(
    name: str, ours: list[Detection], theirs: list[Detection], conf: float, *, box_tolerance: float
) -> None:
    """Each detection of one side has its twin on the other (same class, score within
    ``SCORE_TOLERANCE``, corners within ``box_tolerance``); only one whose score is within the
    score tolerance of the threshold ``conf`` may be missing."""
    for side, other in ((ours, theirs), (theirs, ours)):
        for det in side:
            twins = [o for o in other if o.label == det.label and _iou(o.bbox, det.bbox) > 0.8]
            if not twins:
                assert det.confidence < conf + SCORE_TOLERANCE, (name, det, other)
                continue
            twin = max(twins, key=lambda o: _iou(o.bbox, det.bbox))
            assert abs(twin.confidence - det.confidence) <= SCORE_TOLERANCE, (name, det, twin)
            assert np.allclose(twin.bbox, det.bbox, atol=box_tolerance), (name, det, twin)

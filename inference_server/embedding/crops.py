"""Where to embed a person: the face located by a pose model's keypoints, the body by its box.

COCO keypoints 0–4 are nose, left eye, right eye, left ear, right ear. A face is embedded only
when the nose and both eyes are seen with confidence (a face turned towards the camera, the
view a face descriptor is trained on) and the face is at least ``MIN_FACE_PX`` across in the
decoded picture; a back or a profile gets a body embedding only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inference_server.domain import Detection
from inference_server.embedding.embedder import Crop

#: Keypoint confidence that counts as seen.
KEYPOINT_SEEN = 0.5
#: Smallest face side (pixels of the decoded picture) worth a descriptor: smaller faces embed as noise.
MIN_FACE_PX = 24
#: Smallest body box side (pixels) worth an appearance vector.
MIN_BODY_PX = 16

Box = tuple[int, int, int, int]


def face_box(detection: Detection, width: int, height: int) -> Box | None:
    """A square around the face in pixels, or None when no frontal face is seen."""
    points = detection.keypoints
    if points is None or len(points) < 5:
        return None
    nose, left_eye, right_eye, left_ear, right_ear = (np.array(p, dtype=np.float64) for p in points[:5])
    if min(nose[2], left_eye[2], right_eye[2]) < KEYPOINT_SEEN:
        return None
    scale = np.array([width, height], dtype=np.float64)
    eyes = (left_eye[:2] * scale, right_eye[:2] * scale)
    nose_px = nose[:2] * scale
    eye_distance = float(np.linalg.norm(eyes[0] - eyes[1]))
    side = 2.6 * eye_distance
    if left_ear[2] >= KEYPOINT_SEEN and right_ear[2] >= KEYPOINT_SEEN:
        # Ears span the head's width: steadier than the eyes on a turned head.
        side = max(side, 1.3 * float(np.linalg.norm((left_ear[:2] - right_ear[:2]) * scale)))
    if side < MIN_FACE_PX:
        return None
    centre = (eyes[0] + eyes[1] + 2 * nose_px) / 4
    centre[1] += 0.1 * side  # the eye-nose centre sits above the middle of the face (chin included)
    return _clip(centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2, width, height)


def body_box(detection: Detection, width: int, height: int) -> Box | None:
    """The detection's box in pixels, or None when too small to describe."""
    x1, y1, x2, y2 = detection.bbox
    box = _clip(x1 * width, y1 * height, x2 * width, y2 * height, width, height)
    if box is None or min(box[2] - box[0], box[3] - box[1]) < MIN_BODY_PX:
        return None
    return box


def crop(picture: np.ndarray[Any, np.dtype[np.uint8]], box: Box) -> Crop:
    x1, y1, x2, y2 = box
    out: Crop = np.ascontiguousarray(picture[y1:y2, x1:x2])
    return out


def _clip(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box | None:
    box = (max(0, round(x1)), max(0, round(y1)), min(width, round(x2)), min(height, round(y2)))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return None
    return box

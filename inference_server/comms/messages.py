"""Retained camera messages shared by the stages and the API: the camera's state and its counts.

Built here, below both, so every writer (the batch stage per image, the API on a camera change,
the server on every broker connection) publishes the same ``CameraState`` the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from inference_server.comms.topics import Topics
from inference_server.schemas import CameraState

#: One outbox entry: topic, payload, retain.
Message = tuple[str, bytes, bool]


def camera_state(topics: Topics, camera_id: str, state: CameraState, previous: Iterable[str] = ()) -> list[Message]:
    """The camera's retained state and one retained count per label in ``state.objects`` or
    ``previous`` (a label seen before and gone now is published as 0)."""
    messages: list[Message] = [(topics.camera_state(camera_id), state.model_dump_json().encode(), True)]
    for label in sorted(set(state.objects) | set(previous)):
        messages.append((topics.camera_objects(camera_id, label), str(state.objects.get(label, 0)).encode(), True))
    return messages


def camera_states(topics: Topics, states: Mapping[str, CameraState]) -> list[Message]:
    """``camera_state`` of each camera in ``states`` (camera id → state), in their order."""
    return [m for camera_id, state in states.items() for m in camera_state(topics, camera_id, state)]

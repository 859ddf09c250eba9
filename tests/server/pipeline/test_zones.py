from __future__ import annotations

from inference_server.domain import Detection
from inference_server.pipeline.zones import contains, zones_of
from inference_server.schemas import Zone

PORCH = Zone(name="porch", polygon=[(0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)], sensitivity="high")
STREET = Zone(name="street", polygon=[(0.5, 0.0), (1.0, 0.0), (1.0, 0.4), (0.5, 0.4)], sensitivity="low")
L_SHAPE = [(0.0, 0.0), (0.6, 0.0), (0.6, 0.2), (0.2, 0.2), (0.2, 0.8), (0.0, 0.8)]


def test_point_in_concave_polygon() -> None:
    assert contains(L_SHAPE, 0.1, 0.5)
    assert contains(L_SHAPE, 0.5, 0.1)
    assert not contains(L_SHAPE, 0.5, 0.5)  # in the notch
    assert not contains(L_SHAPE, 0.9, 0.9)


def test_a_person_is_where_their_feet_are() -> None:
    # Head in the street zone, feet on the porch: the person stands on the porch.
    tall = Detection("person", 0.9, (0.3, 0.1, 0.45, 0.8))
    assert zones_of(tall, [PORCH, STREET]) == ("porch",)
    far = Detection("person", 0.9, (0.7, 0.1, 0.8, 0.3))
    assert zones_of(far, [PORCH, STREET]) == ("street",)
    assert zones_of(Detection("person", 0.9, (0.6, 0.5, 0.9, 0.9)), [PORCH, STREET]) == ()

"""Vehicle scenarios on the real 80-class COCO test model (YOLOv3-tiny, tests/support/models.py):
the same ``Case`` table shape and runner as ``cases.py``, run by ``test_vehicles.py`` on a server
whose detector sees vehicles (yolo11n-pose, the household table's model, sees only people).

What the model sees in these pictures (docs/performance.md, "Test models"): motorcycle_left.png
one motorcycle (0.62) and no person; bus.jpg four people (0.62-0.95) and the bus (0.30). No animal
case runs here: it finds no animal in any real picture available (it misses the cat in
chelsea.png, and horse.png is a silhouette), so animal logic keeps a labelled fixture
(``tests/server/pipeline/test_scenarios.py``)."""

from __future__ import annotations

from datetime import time

from .cases import AWAY_NIGHT, DISARMED_HOME_DAY, FAMILY, Case, ctx

COCO_CASES: tuple[Case, ...] = (
    Case(
        "bus_with_passengers_street_1400_disarmed_family_home",
        "benign",
        "A bus and its passengers on the street at 14:00, disarmed, the family home: daily traffic.",
        "bus.jpg",
        time(14, 0),
        "street",
        "low",
        DISARMED_HOME_DAY,
    ),
    Case(
        "motorcycle_driveway_1500_disarmed_family_home",
        "benign",
        "A motorcycle in the driveway at 15:00 with the family home and the alarm off: a visitor's or their own.",
        "motorcycle_left.png",
        time(15, 0),
        "driveway",
        "normal",
        DISARMED_HOME_DAY,
        naive_alert=False,
    ),
    Case(
        "motorcycle_street_2100_armed_home_family_home",
        "benign",
        "A motorcycle on the street (a low zone) at 21:00, armed home, the family in.",
        "motorcycle_left.png",
        time(21, 0),
        "street",
        "low",
        ctx("armed_home", FAMILY, "below_horizon"),
        naive_alert=False,
    ),
    Case(
        "motorcycle_driveway_0300_armed_away",
        "benign",
        "A motorcycle standing in the driveway at 03:00, armed away, nobody home, for a minute, and "
        "no person seen: the rules page on people, not on a vehicle alone (vehicle evidence is 20 "
        "points at most, docs/risk.md); what it gets is a notification-level event, not a page.",
        "motorcycle_left.png",
        time(3, 0),
        "driveway",
        "normal",
        AWAY_NIGHT,
        frames=3,
        spacing_s=30,
        naive_alert=False,
    ),
)

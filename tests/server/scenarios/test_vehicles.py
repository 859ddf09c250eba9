"""Vehicle scenarios through the whole server on the real 80-class COCO test model (YOLOv3-tiny
converted from Darknet, tests/support/models.py): real PostgreSQL, the real embedded broker, real
photos, capture time and context per case (``coco_cases.py``; run as ``test_household.py`` runs
the household table)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from inference_server.detection.detector import Detector

from ..conftest import coco_settings
from .cases import Case
from .coco_cases import COCO_CASES
from .runner import Outcome
from .table import run_table

pytestmark = pytest.mark.slow

#: The level of each case's event and how many events it makes (rules-v3, docs/risk.md).
EXPECTED = {
    "bus_with_passengers_street_1400_disarmed_family_home": ("low", 1),
    "motorcycle_driveway_1500_disarmed_family_home": ("low", 1),
    "motorcycle_street_2100_armed_home_family_home": ("low", 1),
    # Night, armed away, seen in three images over a minute: the most a vehicle alone reaches.
    "motorcycle_driveway_0300_armed_away": ("medium", 1),
}


@pytest.fixture(scope="module")
def outcomes(
    pg_uri: str, coco_detector: Detector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome]]:
    yield asyncio.run(
        run_table(pg_uri, tmp_path_factory.mktemp("vehicles"), coco_detector, COCO_CASES, **coco_settings())
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", COCO_CASES, ids=[c.name for c in COCO_CASES])
def test_vehicle_case(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.name]
    assert outcome.problems() == [], f"{case.kind}: {case.reason}"
    top = outcome.top
    assert top is not None, "every case here shows a vehicle: it must make an event"
    assert top["objects"].get("motorcycle" if "motorcycle" in case.image else "bus") == 1, top["objects"]
    assert (outcome.level, len(outcome.events)) == EXPECTED[case.name], outcome.describe()

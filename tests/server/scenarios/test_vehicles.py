"""Vehicle scenarios through the whole server on the real 80-class COCO test model (YOLOv3-tiny
converted from Darknet, tests/support/models.py): real PostgreSQL, the real embedded broker, real
photos, capture time and context per case (``coco_cases.py``; run as ``test_household.py`` runs
the household table)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from inference_server.detection.detector import Detector

from ..conftest import FakeClock, _with_database, coco_settings, running
from .cases import Case
from .coco_cases import COCO_CASES
from .runner import Outcome, run_cases, scenario_settings

pytestmark = pytest.mark.slow

#: The level of each case's event and how many events it makes (rules-v3, docs/risk.md).
EXPECTED = {
    "bus_with_passengers_street_1400_disarmed_family_home": ("low", 1),
    "motorcycle_driveway_1500_disarmed_family_home": ("low", 1),
    "motorcycle_street_2100_armed_home_family_home": ("low", 1),
    # Night, armed away, seen in three images over a minute: the most a vehicle alone reaches.
    "motorcycle_driveway_0300_armed_away": ("medium", 1),
}


async def _run_all(pg_uri: str, data_dir: Path, detector: Detector) -> dict[str, Outcome]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_uri)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = scenario_settings(data_dir, _with_database(pg_uri, name)).model_copy(update=coco_settings())
        clock = FakeClock()
        async with running(settings, detector, clock) as server:
            outcomes = await run_cases(server, clock, COCO_CASES)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {o.case.name: o for o in outcomes}


@pytest.fixture(scope="module")
def outcomes(
    pg_uri: str, coco_detector: Detector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome]]:
    yield asyncio.run(_run_all(pg_uri, tmp_path_factory.mktemp("vehicles"), coco_detector))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", COCO_CASES, ids=[c.name for c in COCO_CASES])
def test_vehicle_case(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.name]
    assert outcome.problems() == [], f"{case.kind}: {case.reason}"
    top = outcome.top
    assert top is not None, "every case here shows a vehicle: it must make an event"
    assert top["objects"].get("motorcycle" if "motorcycle" in case.image else "bus") == 1, top["objects"]
    assert (outcome.level, len(outcome.events)) == EXPECTED[case.name], outcome.describe()

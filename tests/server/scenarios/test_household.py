"""Issue 16: the household scenario table through the whole server (real PostgreSQL, the real
embedded broker, real yolo11n-pose on real pictures; capture time and context per case).

One server runs every case (its own camera and day each), so the table costs one server start
and roughly one detection per frame; each case is its own test and asserts its expected outcome:
threats page (high or above), benign cases do not, an activity makes the events it should."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from inference_server.clock import Clock
from inference_server.detection.ultralytics_backend import UltralyticsDetector

from ..conftest import FakeClock, _with_database, running
from .cases import CASES, Case
from .runner import Outcome, run_cases, scenario_settings

pytestmark = pytest.mark.slow


async def _run_all(pg_uri: str, data_dir: Path, detector: UltralyticsDetector) -> dict[str, Outcome]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_uri)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = scenario_settings(data_dir, _with_database(pg_uri, name))
        clock = FakeClock()
        server_clock: Clock = clock
        async with running(settings, detector, server_clock) as server:
            outcomes = await run_cases(server, clock, CASES)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {o.case.name: o for o in outcomes}


@pytest.fixture(scope="module")
def outcomes(
    pg_uri: str, pose_detector: UltralyticsDetector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome]]:
    yield asyncio.run(_run_all(pg_uri, tmp_path_factory.mktemp("scenarios"), pose_detector))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_household_case(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.name]
    assert outcome.problems() == [], f"{case.kind}: {case.reason}"

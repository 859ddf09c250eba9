"""Issue 16: the household scenario table through the whole server (real PostgreSQL, the real
embedded broker, real yolo11n-pose on real pictures; capture time and context per case).

One server runs every case (its own camera and day each), so the table costs one server start
and roughly one detection per frame; each case is its own test and asserts its expected outcome:
threats page (high or above), benign cases do not, an activity makes the events it should."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from inference_server.detection.ultralytics_backend import UltralyticsDetector

from .cases import CASES, Case
from .runner import Outcome
from .table import run_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcomes(
    pg_uri: str, pose_detector: UltralyticsDetector, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Outcome]]:
    yield asyncio.run(run_table(pg_uri, tmp_path_factory.mktemp("scenarios"), pose_detector, CASES))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_household_case(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.name]
    assert outcome.problems() == [], f"{case.kind}: {case.reason}"

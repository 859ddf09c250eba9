"""One scenario table through one server on its own database (test_household.py, test_vehicles.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from inference_server.detection.detector import Detector

from ..conftest import FakeClock, _with_database, running
from .cases import Case
from .runner import Outcome, run_cases, scenario_settings


async def run_table(
    pg_uri: str, data_dir: Path, detector: Detector, cases: Sequence[Case], **settings: Any
) -> dict[str, Outcome]:
    """Every case of ``cases`` on one server (scenario settings, updated with ``settings``), on a
    database made for the table and dropped after it; the outcomes by case name."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_uri)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        config = scenario_settings(data_dir, _with_database(pg_uri, name)).model_copy(update=settings)
        clock = FakeClock()
        async with running(config, detector, clock) as server:
            outcomes = await run_cases(server, clock, tuple(cases))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return {o.case.name: o for o in outcomes}

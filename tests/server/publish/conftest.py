"""Fixtures of the publishing tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import RestartableMosquitto


@pytest.fixture
def forgetful_broker(tmp_path: Path) -> Iterator[RestartableMosquitto]:
    """A Mosquitto of this test's own, started, that loses its retained messages when restarted
    (no persistence), as a broker configured so does; stopped at the end if it runs."""
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    broker = RestartableMosquitto(folder, persistence=False)
    broker.start()
    try:
        yield broker
    finally:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.stop()

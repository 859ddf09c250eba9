"""telemetry/metrics.py: the stage histogram read back as (count, mean milliseconds) per stage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inference_server.telemetry import metrics

STAGE = "tests-stage"


@pytest.fixture
def stage() -> Iterator[str]:
    """A stage of its own in the process-wide histogram, removed again afterwards."""
    yield STAGE
    metrics.STAGE.remove(STAGE)


def test_stage_means_are_counted_and_averaged_in_milliseconds(stage: str) -> None:
    for seconds in (0.010, 0.020, 0.060):
        metrics.STAGE.labels(stage).observe(seconds)

    count, mean_ms = metrics.stage_means_ms()[stage]

    assert count == 3
    assert mean_ms == pytest.approx(30.0)


def test_a_stage_without_observations_is_left_out(stage: str) -> None:
    metrics.STAGE.labels(stage)  # the series exists, nothing observed yet

    assert stage not in metrics.stage_means_ms()

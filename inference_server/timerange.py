"""The date-times the server takes from outside, checked in one place.

- A picture's capture time (an upload's ``captured_at``, a camera file name's stamp, a file's
  mtime) must lie between ``EARLIEST_CAPTURE`` (2000-01-01 UTC) and one day after now
  (``CAPTURE_FUTURE_SLACK``: a camera clock or time zone a few hours off is still accepted).
- A query bound or a pagination cursor's time (``since``, ``until``) must lie between
  ``EARLIEST_QUERY`` (1970-01-01 UTC) and ``LATEST_QUERY`` (3000-01-01 UTC).

Anything else is refused where it enters: 400 on REST, a quarantine row with reason
``captured_at_out_of_range`` for a camera-folder file. Near the ends of Python's calendar
(years 1 and 9999) converting to another time zone or adding a day overflows, and asyncpg cannot
send what does not fit in UTC; a picture "taken" in 1970 or 2200 is a camera with a wrong clock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EARLIEST_CAPTURE = datetime(2000, 1, 1, tzinfo=UTC)
CAPTURE_FUTURE_SLACK = timedelta(days=1)
EARLIEST_QUERY = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_QUERY = datetime(3000, 1, 1, tzinfo=UTC)

#: The quarantine reason (and REST error code) for a capture time outside the range.
CAPTURED_AT_OUT_OF_RANGE = "captured_at_out_of_range"

_Z = "%Y-%m-%dT%H:%M:%SZ"


def capture_time_problem(when: datetime, now: datetime | None = None) -> str | None:
    """Why ``when`` cannot be a picture's capture time; None when it can."""
    if when.tzinfo is None or when.utcoffset() is None:
        return f"{when.isoformat()} has no time zone"
    latest = (now or datetime.now(UTC)) + CAPTURE_FUTURE_SLACK
    # Comparing aware date-times never converts them, so this cannot overflow.
    if EARLIEST_CAPTURE <= when <= latest:
        return None
    return (
        f"capture time {when.isoformat()} is outside the accepted range "
        f"{EARLIEST_CAPTURE:{_Z}} .. {latest.astimezone(UTC):{_Z}} (now + 1 day)"
    )


def query_time_problem(when: datetime) -> str | None:
    """Why ``when`` cannot bound a query (``since``, ``until``, a cursor); None when it can."""
    if when.tzinfo is None or when.utcoffset() is None:
        return f"{when.isoformat()} has no time zone"
    if EARLIEST_QUERY <= when <= LATEST_QUERY:
        return None
    return f"{when.isoformat()} is outside the accepted range {EARLIEST_QUERY:{_Z}} .. {LATEST_QUERY:{_Z}}"

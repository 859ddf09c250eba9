"""Date-times at the ends of the calendar are refused with a 4xx, never a 500 (issue 13, items 1, 8).

``0001-01-01T00:00:00+01:00`` is a valid RFC 3339 date-time, but in UTC it is in year 0, which
neither Python nor asyncpg can hold; ``9999-12-31T23:59:59-01:00`` is in year 10000. Both were a
500 (asyncpg DataError) from /events and /detections, and an upload's ``captured_at`` of year 1 or
9999 was accepted and then crashed the detect stage on every start. One shared parser
(api/params.py, inference_server/timerange.py) now refuses them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.store import events as events_store

from ..conftest import auth_headers, running

EXTREMES = [
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59Z",
    "1969-12-31T23:59:59Z",
    "3000-01-01T00:00:01Z",
]


async def _error(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert resp.status == status, body
    return body["error"]  # type: ignore[no-any-return]


async def test_query_times_and_cursors_at_the_ends_of_the_calendar_are_400(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(make_settings(role="api")) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            for path in ("/api/v1/events", "/api/v1/detections"):
                for name in ("since", "until"):
                    for value in EXTREMES:
                        async with http.get(path, params={name: value}) as resp:
                            error = await _error(resp, 400)
                        assert error["code"] == "bad_parameter", (path, name, value)
                        assert "outside the accepted range" in error["message"], error
                # The ends of the range itself are fine.
                params = {"since": "1970-01-01T00:00:00Z", "until": "3000-01-01T00:00:00Z"}
                async with http.get(path, params=params) as resp:
                    assert resp.status == 200, await resp.text()

            # A cursor is a time and an id: one made with an extreme time is refused as a bad cursor.
            for when in (
                datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
                datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1))),
                datetime(1, 1, 1, tzinfo=UTC),
                datetime(1, 1, 1),  # no time zone
            ):
                cursor = events_store.encode_cursor(when, uuid.uuid4())
                async with http.get("/api/v1/events", params={"cursor": cursor}) as resp:
                    error = await _error(resp, 400)
                assert error["code"] == "bad_cursor", (when, error)
            cursor = events_store.encode_cursor(datetime(2026, 11, 24, tzinfo=UTC), uuid.uuid4())
            async with http.get("/api/v1/events", params={"cursor": cursor}) as resp:
                assert resp.status == 200, await resp.text()


async def test_upload_capture_time_out_of_range_is_400_and_stores_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    jpeg = demo_assets.image("bus.jpg").read_bytes()
    tomorrow_and_more = (datetime.now(UTC) + timedelta(days=1, hours=1)).isoformat()
    bad = [*EXTREMES, "1999-12-31T23:59:59Z", tomorrow_and_more]
    async with running(make_settings(role="api", camera_timezone="Europe/Berlin")) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}) as resp:
                assert resp.status == 201
            for value in bad:
                # As the query parameter (the two examples are the first and fourth)...
                async with http.post(
                    "/api/v1/cameras/porch/images",
                    data=jpeg,
                    params={"captured_at": value},
                    headers={"Content-Type": "image/jpeg"},
                ) as resp:
                    error = await _error(resp, 400)
                assert error["code"] == "bad_parameter" and "captured_at" in error["message"], (value, error)
                assert "outside the accepted range" in error["message"], error
                # ...and as the multipart field.
                form = aiohttp.FormData()
                form.add_field("image", jpeg, filename="snapshot.jpg", content_type="image/jpeg")
                form.add_field("captured_at", value)
                async with http.post("/api/v1/cameras/porch/images", data=form) as resp:
                    error = await _error(resp, 400)
                assert error["code"] == "bad_parameter" and "outside the accepted range" in error["message"], error
            assert await server.pool.fetchval("SELECT count(*) FROM images") == 0
            assert await server.pool.fetchval("SELECT count(*) FROM jobs") == 0

            # The range's first second, and a camera clock a few hours fast, are accepted.
            for n, value in enumerate(("2000-01-01T00:00:00Z", (datetime.now(UTC) + timedelta(hours=20)).isoformat())):
                async with http.post(
                    "/api/v1/cameras/porch/images",
                    data=jpeg[:2] + b"\xff\xfe\x00\x03" + bytes([n]) + jpeg[2:],
                    params={"captured_at": value},
                    headers={"Content-Type": "image/jpeg"},
                ) as resp:
                    assert resp.status == 202, await resp.text()


async def test_numbers_with_spaces_around_them_are_400_as_the_openapi_document_promises(
    make_settings: Callable[..., Settings],
) -> None:
    """Pydantic reads "5\\u00a0" (a no-break space after it) or " 5" as 5; the schema says integer,
    and the fuzzer (test_schemathesis.py) found ``/dlq?limit=5%C2%A0`` accepted. Digits only now."""
    async with running(make_settings(role="api")) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            for path, name, good in (
                ("/api/v1/dlq", "limit", "5"),
                ("/api/v1/events", "limit", "+5"),
                ("/api/v1/events", "min_risk", "40"),
                ("/api/v1/detections", "min_confidence", "0.5"),
            ):
                for bad in (f"{good}\u00a0", f" {good}", f"{good}\n", f"\u0665{good}"):
                    async with http.get(path, params={name: bad}) as resp:
                        error = await _error(resp, 400)
                    assert error["code"] == "bad_parameter", (path, name, bad)
                async with http.get(path, params={name: good}) as resp:
                    assert resp.status == 200, (path, name, await resp.text())

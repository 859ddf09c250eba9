"""GET /events?q= (full-text search, relevance order, its cursor) and GET /events/summary over REST."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from inference_server.config import Settings
from inference_server.domain import Assessment
from inference_server.schemas import CameraCreate
from inference_server.store import cameras, events

from ..conftest import auth_headers, running

T0 = datetime(2025, 6, 1, 22, 0, tzinfo=UTC)


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json()


async def _seed(pool: Any) -> dict[str, uuid.UUID]:
    await cameras.create(pool, CameraCreate(id="front", name="Front door"))
    await cameras.create(pool, CameraCreate(id="yard", name="Back yard"))
    made: dict[str, uuid.UUID] = {}
    rows = [
        ("shed", "yard", 0, 90, "critical", "Person forcing the shed door", {"person": 1}),
        ("courier", "front", 10, 40, "medium", "Person leaves a parcel at the door", {"person": 1}),
        ("cat", "yard", 20, 5, "low", "Cat crossing the lawn", {"cat": 1}),
        ("van", "front", 30, 20, "low", "Van parked in the drive", {"truck": 1}),
    ]
    for key, camera, minutes, score, level, summary, objects in rows:
        made[key] = uuid.uuid4()
        async with pool.acquire() as conn:
            await events.insert(
                conn,
                event_id=made[key],
                camera_id=camera,
                image_id=None,
                batch_id=None,
                started_at=T0 + timedelta(minutes=minutes),
                assessment=Assessment(score, level, summary, "why", [], "rules", "rules-v2", objects),  # type: ignore[arg-type]
                is_fast_path=False,
                snapshot_path=None,
                context=None,
                llm_pending=False,
            )
    return made


async def test_search_over_rest_ranks_filters_and_pages(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(role="api")) as server:
        made = await _seed(server.pool)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=await auth_headers(server)) as http:
            found = await _json(await http.get("/api/v1/events", params={"q": "door person"}), 200)
            assert {e["id"] for e in found["events"]} == {str(made["shed"]), str(made["courier"])}
            yard = await _json(await http.get("/api/v1/events", params={"q": "back yard"}), 200)
            assert {e["id"] for e in yard["events"]} == {str(made["shed"]), str(made["cat"])}
            high = await _json(await http.get("/api/v1/events", params={"q": "person", "min_risk": "60"}), 200)
            assert [e["id"] for e in high["events"]] == [str(made["shed"])]
            at_least_medium = await _json(await http.get("/api/v1/events", params={"min_level": "medium"}), 200)
            assert [e["id"] for e in at_least_medium["events"]] == [str(made["courier"]), str(made["shed"])]
            # Web search syntax: excluded words, "or".
            either = await _json(await http.get("/api/v1/events", params={"q": "cat or van", "sort": "time"}), 200)
            assert [e["id"] for e in either["events"]] == [str(made["van"]), str(made["cat"])]
            not_cat = await _json(await http.get("/api/v1/events", params={"q": "yard -cat"}), 200)
            assert [e["id"] for e in not_cat["events"]] == [str(made["shed"])]

            # Relevance pages: each match once, in the order of the whole list.
            whole = await _json(await http.get("/api/v1/events", params={"q": "person or cat or van"}), 200)
            paged: list[str] = []
            params: dict[str, str] = {"q": "person or cat or van", "limit": "1"}
            while True:
                page = await _json(await http.get("/api/v1/events", params=params), 200)
                paged += [e["id"] for e in page["events"]]
                if page["next_cursor"] is None:
                    break
                params["cursor"] = page["next_cursor"]
            assert paged == [e["id"] for e in whole["events"]] and len(paged) == 4


async def test_bad_search_requests_get_clear_400s(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(role="api")) as server:
        await _seed(server.pool)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=await auth_headers(server)) as http:
            no_text = await _json(await http.get("/api/v1/events", params={"sort": "relevance"}), 400)
            assert no_text["error"]["message"] == "sort=relevance needs a search text q"
            stop_words = await _json(await http.get("/api/v1/events", params={"q": "the of"}), 400)
            assert (
                stop_words["error"]["code"] == "bad_parameter"
                and "no word to look for" in stop_words["error"]["message"]
            )
            too_long = await _json(await http.get("/api/v1/events", params={"q": "x" * 201}), 400)
            assert "q" in too_long["error"]["message"]
            page = await _json(await http.get("/api/v1/events", params={"q": "person", "limit": "1"}), 200)
            mixed = await _json(
                await http.get("/api/v1/events", params={"q": "person", "sort": "time", "cursor": page["next_cursor"]}),
                400,
            )
            assert mixed["error"]["code"] == "bad_cursor" and "relevance" in mixed["error"]["message"]
            garbage = await _json(await http.get("/api/v1/events", params={"q": "person", "cursor": "cjpuYW58eA"}), 400)
            assert garbage["error"]["code"] == "bad_cursor"


async def test_summary_counts_a_period_and_refuses_bad_ones(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(role="api")) as server:
        made = await _seed(server.pool)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=await auth_headers(server)) as http:
            period = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=1)).isoformat()}
            summary = await _json(await http.get("/api/v1/events/summary", params=period | {"top": "2"}), 200)
            assert summary["total"] == 4
            assert summary["by_level"] == {"low": 2, "medium": 1, "high": 0, "critical": 1}
            assert [(c["camera_id"], c["n"], c["high_or_critical"]) for c in summary["by_camera"]] == [
                ("front", 2, 0),
                ("yard", 2, 1),
            ]
            assert [(h["n"], h["max_risk"]) for h in summary["by_hour"]] == [(4, 90)]
            assert [e["id"] for e in summary["top"]] == [str(made["shed"]), str(made["courier"])]
            yard = await _json(await http.get("/api/v1/events/summary", params=period | {"camera": "yard"}), 200)
            assert yard["total"] == 2 and yard["camera"] == "yard"
            # Default period: the last 24 hours (these events are older).
            assert (await _json(await http.get("/api/v1/events/summary"), 200))["total"] == 0
            backwards = {"since": period["until"], "until": period["since"]}
            assert (await _json(await http.get("/api/v1/events/summary", params=backwards), 400))["error"][
                "message"
            ] == "since must be before until"
            await _json(await http.get("/api/v1/events/summary", params={"since": "yesterday"}), 400)
            await _json(await http.get("/api/v1/events/summary", params={"camera": "Not A Camera"}), 400)
            openapi = await _json(await http.get("/api/v1/openapi.json"), 200)
            assert "/api/v1/events/summary" in openapi["paths"] and "/api/v1/digest" in openapi["paths"]
            names = {p["name"] for p in openapi["paths"]["/api/v1/events"]["get"]["parameters"]}
            assert {"q", "sort"} <= names


async def test_other_methods_on_the_summary_path_are_405_not_an_event_id(
    make_settings: Callable[..., Settings],
) -> None:
    async with running(make_settings(role="api")) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            resp = await http.patch("/api/v1/events/summary", json={"reviewed": True})
            assert resp.status == 405 and resp.headers["Allow"] == "GET"
            assert (await resp.json())["error"]["code"] == "method_not_allowed"
            assert (await http.get(f"/api/v1/events/{uuid.uuid4()}")).status == 404  # the event route still works

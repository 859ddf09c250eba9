"""Schemathesis against the running server: no 5xx, and every answer matches the OpenAPI document.

The server is the real one (embedded PostgreSQL, the real detector) holding real data made the way a
user makes it: cameras created over REST, a real photo uploaded and turned into an event with
detections, and a job in the dead-letter queue. Schemathesis reads ``GET /api/v1/openapi.json`` from
that server and sends what the document allows, and what it forbids, to every operation.

It runs schemathesis' engine (what ``schemathesis run`` runs: examples, coverage and fuzzing phases)
from Python, in a worker thread while the server serves on the test's event loop. Not the pytest
integration: its fixture-based loader (``schemathesis.pytest.from_fixture``) reads
``request.node._nodeid``, which pytest 9 no longer has, and the eager one needs the document at
import time, before any server runs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import Status, StopReason, events
from schemathesis.engine import from_schema as engine_for
from schemathesis.transport.serialization import Binary

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.schemas import CAMERA_ID_PATTERN
from tests.support.waiting import wait_until

from ..conftest import auth_headers, running

pytestmark = pytest.mark.slow

#: Fixed, so a failure found in CI is found again, the same way, on a developer's machine.
SEED = 20261124
#: Generated cases per operation and phase (the coverage phase has its own fixed, finite set).
MAX_EXAMPLES = 100
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

#: Chosen one by one; each is a promise the document makes to a client.
CHECKS = {
    # Bad input never becomes a 500 (docs/architecture.md, "REST").
    "not_a_server_error",
    # Every status the server answers with is listed for that operation...
    "status_code_conformance",
    # ...with the documented media type...
    "content_type_conformance",
    # ...and a body that validates against the documented schema (ErrorBody for errors).
    "response_schema_conformance",
    # Data the document forbids (wrong types, out-of-range numbers, missing required fields, extra
    # properties where the models forbid them, bad path ids) is refused with a 4xx, never accepted.
    "negative_data_rejection",
    # A method the document does not list for a path gets 405 with an Allow header.
    "unsupported_method",
}
# Left out on purpose:
# - positive_data_acceptance: "valid by the schema" is not "acceptable" here. A random camera id or
#   event UUID is valid and rightly 404; since after until is valid per parameter and rightly 400;
#   random bytes are a valid `format: binary` upload and rightly 415. It would only measure how often
#   random ids hit real rows.
# - ignored_auth, missing_required_header: tests/server/api/test_auth.py covers auth with real keys;
#   here, requests without the key would trip the failed-auth limiter (429 for this client for a
#   minute) and hide every other result.
# - use_after_free, ensure_resource_availability: need OpenAPI links between operations, which the
#   document does not declare (the stateful phase is off for the same reason).
# - max_response_time: timings on a 2-core CI machine say nothing about the contract.


@dataclass(frozen=True, slots=True)
class RealIds:
    """Ids of real rows, mixed into the generated path parameters."""

    camera_id: str
    doomed_camera_id: str
    event_id: str
    job_id: int
    dead_job_id: int
    #: Known people: one to enrol into, one for DELETE (0: none).
    person_id: int = 0
    doomed_person_id: int = 0
    #: An event seen in a video clip (GET /events/{id}/clip).
    clip_event_id: str = ""
    #: A camera whose learned scene is reset (DELETE /cameras/{id}/tamper).
    aimed_camera_id: str = "aimed"


@dataclass(slots=True)
class Outcome:
    operations: set[str] = field(default_factory=set)
    #: Operations that answered 2xx at least once: real rows were reached, not only 4xx paths.
    succeeded: set[str] = field(default_factory=set)
    requests: int = 0
    failures: list[str] = field(default_factory=list)


CLIP = demo_assets.clip("carphone_pristine.mp4").read_bytes()  # 176x144, 4 s: a man in a car


def _photo(marker: bytes) -> bytes:
    """bus.jpg with a JPEG comment (COM segment) after SOI: new bytes each time, so no dedupe."""
    jpeg = demo_assets.image("bus.jpg").read_bytes()
    return jpeg[:2] + b"\xff\xfe" + (len(marker) + 2).to_bytes(2, "big") + marker + jpeg[2:]


async def _upload(http: aiohttp.ClientSession, camera_id: str, marker: bytes) -> dict[str, Any]:
    async with http.post(
        f"/api/v1/cameras/{camera_id}/images",
        data=_photo(marker),
        params={"captured_at": "2026-11-24T02:10:00+00:00"},
        headers={"Content-Type": "image/jpeg"},
    ) as resp:
        assert resp.status == 202, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def _clip_event(http: aiohttp.ClientSession, pool: asyncpg.Pool) -> str:
    """Upload a real clip (a man in a car) to ``front``; the id of the event its frames made."""
    async with http.post(
        "/api/v1/cameras/front/clips",
        data=CLIP,
        params={"captured_at": "2026-11-24T03:10:00+00:00"},
        headers={"Content-Type": "video/mp4"},
    ) as resp:
        assert resp.status == 202, await resp.text()
        accepted = await resp.json()

    async def event_id() -> str | None:
        found = await pool.fetchval(
            "SELECT b.event_id FROM batch_images bi JOIN batches b ON b.id = bi.batch_id"
            " WHERE bi.image_id = ANY($1::bigint[]) AND b.event_id IS NOT NULL LIMIT 1",
            accepted["image_ids"],
        )
        return str(found) if found is not None else None

    found: str = await wait_until(event_id, timeout=90, what="the clip's event")
    return found


async def _create_camera(http: aiohttp.ClientSession, camera_id: str, name: str) -> None:
    async with http.post("/api/v1/cameras", json={"id": camera_id, "name": name}) as resp:
        assert resp.status == 201, await resp.text()


async def _dead_letter(settings: Settings) -> tuple[dict[str, str], int]:
    """On an API-only server (no worker to race), upload a photo and dead-letter its job.

    Returns the API key header (keys live in the database: it stays valid) and the dead job's id.
    """
    async with running(settings) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            await _create_camera(http, "front", "Front Door")
            accepted = await _upload(http, "front", b"dead letter")
        (job,) = await server.queue.claim(1)
        assert job.id == accepted["job_id"]
        assert await server.queue.fail(job, "decoder gave up (made by the test)", retryable=False) == "dead"
        return headers, job.id


def _valid_id(name: str, value: object) -> bool:
    """Whether a generated path parameter is valid per the document (so a real id may replace it)."""
    if name == "camera_id":
        return isinstance(value, str) and re.fullmatch(CAMERA_ID_PATTERN, value) is not None
    if name == "event_id":
        return isinstance(value, str) and re.fullmatch(_UUID, value) is not None
    if name in ("job_id", "person_id"):
        return type(value) is int and 1 <= value <= 2**63 - 1
    if name == "n":
        return type(value) is int and 0 <= value <= 999
    return False


def _schema(url: str, headers: dict[str, str], ids: RealIds) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": url,
            "headers": headers,
            "workers": 1,  # one request at a time, in a fixed order: the same run every time
            "generation": {
                "mode": "all",  # positive and negative data
                "max-examples": MAX_EXAMPLES,
                "database": "none",  # no replay of earlier runs' examples
                # The key is sent on every request (headers above), never generated: requests
                # without it would trip the failed-auth limiter (429 for a minute) and hide every
                # other result. tests/server/api/test_auth.py covers auth.
                "with-security-parameters": False,
            },
            # Ids come from the hooks below, not from earlier responses: with response data on,
            # fuzzing DELETE /cameras/{id} removed every camera it had seen listed, and the routes
            # fuzzed after it could never reach a real one.
            "phases": {
                "stateful": {"enabled": False},
                "fuzzing": {"extra-data-sources": {"responses": False}},
                "coverage": {"extra-data-sources": {"responses": False}},
                "examples": {"extra-data-sources": {"responses": False}},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "cache": {"enabled": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json", config=config)

    @schema.hook
    def flatmap_path_parameters(context: schemathesis.HookContext, params: dict[str, Any] | None) -> Any:
        """About half the fuzzed ids name real rows, so the 200 paths run too, not only 404s.

        Only a valid generated id is swapped for a real one: an invalid one is the point of a
        negative case, and swapping it would make negative_data_rejection expect a 4xx for a request
        that is in fact valid.
        """
        operation = context.operation
        assert operation is not None
        if not params:
            return st.just(params)
        real: dict[str, Any] = {
            "camera_id": ids.camera_id,
            "event_id": ids.event_id,
            "job_id": ids.job_id,
            "person_id": ids.person_id,
            "n": 0,  # the event's most confident detection: a person, embedded
        }
        if operation.method.upper() == "DELETE" and operation.path.endswith("/people/{person_id}"):
            real["person_id"] = ids.doomed_person_id  # keep the person enrolments go to
        if operation.method.upper() == "DELETE" and operation.path.endswith("/cameras/{camera_id}"):
            real["camera_id"] = ids.doomed_camera_id  # keep the camera that owns the event
        if "/dlq/" in operation.path:
            real["job_id"] = ids.dead_job_id
        if operation.method.upper() == "DELETE" and operation.path.endswith("/tamper"):
            real["camera_id"] = ids.aimed_camera_id  # its own camera: a reset must not disturb "front"
        if operation.path.endswith("/clip"):
            real["event_id"] = ids.clip_event_id
        swapped = {name: real[name] if _valid_id(name, value) else value for name, value in params.items()}
        if operation.method.upper() == "DELETE" or (
            operation.method.upper() == "POST" and operation.path.endswith(("/photos", "/enroll", "/clips"))
        ):
            # A DELETE always goes to its doomed row: a generated id such as 1 is also a real one
            # (the person enrolments go to). Few valid examples are drawn for the enrolments and the
            # clip uploads (a fresh CI run once drew none that reached a 202): each goes to the real
            # person or camera.
            return st.just(swapped)
        return st.sampled_from([params, swapped])

    photo = Binary(_photo(b"schemathesis"))
    portrait = Binary(demo_assets.image("astronaut.png").read_bytes())  # one person: an enrolment photo
    clip = Binary(CLIP)

    @schema.hook
    def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
        """About half the image uploads are a real photo, so the 202 path runs too.

        Always the same bytes: one job for the detector, then duplicates (also 202). Only a
        generated image is swapped, never a mutated field of a negative case.
        """
        operation = context.operation
        assert operation is not None
        if operation.path.endswith("/photos") and isinstance(body, Binary):
            return st.just(portrait)  # few are drawn: each is a real portrait (garbage bytes: test_people)
        if operation.path.endswith("/clips") and isinstance(body, Binary):
            return st.sampled_from([body, clip])  # the same clip: accepted once, then a duplicate (202)
        if operation.path.endswith("/clips") and isinstance(body, dict) and isinstance(body.get("clip"), Binary):
            # Generated extra parts often carry header names aiohttp refuses: the clip alone too.
            return st.sampled_from([body, {**body, "clip": clip}, {"clip": clip}])
        if (
            operation.path.endswith("/enroll")
            and isinstance(body, dict)
            and _valid_id("person_id", body.get("person_id"))
        ):
            return st.sampled_from([body, {**body, "person_id": ids.person_id}])
        if not operation.path.endswith("/images"):
            return st.just(body)
        if isinstance(body, Binary):
            return st.sampled_from([body, photo])
        if isinstance(body, dict) and isinstance(body.get("image"), Binary):
            return st.sampled_from([body, {**body, "image": photo}])
        return st.just(body)

    return schema


def _run(schema: Any) -> Outcome:
    """Run every phase; collect the operations tested and each failed check with its curl."""
    outcome = Outcome()
    for event in engine_for(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.status != Status.SKIP:
            outcome.requests += len(event.recorder.interactions)
            if event.recorder.interactions and event.label:
                outcome.operations.add(event.label)
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None and 200 <= interaction.response.status_code < 300:
                    outcome.succeeded.add(event.label or "?")
            for nodes in event.recorder.checks.values():
                for node in nodes:
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        outcome.failures.append(
                            f"[{event.phase.value}] {event.label}: {node.name}: {failure.title}\n"
                            f"{failure.message}\n{node.failure_info.code_sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            outcome.failures.append(f"[{event.phase}] {event.label}: error: {event.value!r}")
        elif isinstance(event, events.FatalError):
            outcome.failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            outcome.failures.extend(f"after run: {f.title}\n{f.message}" for f in event.failures)
            if event.stop_reason != StopReason.COMPLETED:
                outcome.failures.append(f"the run stopped early: {event.stop_reason}")
    return outcome


async def test_every_answer_matches_the_openapi_document(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    headers, dead_job_id = await _dead_letter(make_settings(role="api"))
    # A short activity batch, so the photo's event is there in a second, not after 30 s of quiet.
    recognition = {f"{s}_embedder_model": demo_assets.embedder_model(s) for s in ("face", "body")}
    async with running(make_settings(batch_idle_s=0.2, batch_window_s=1, **recognition), pose_detector) as server:
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            await _create_camera(http, "spare", "Spare")
            await _create_camera(http, "aimed", "Aimed")
            # Ids no generator picks: the coverage phase sends boundary values such as 1 as they
            # are, without the hooks below, and DELETE /people/1 would remove the enrolled person.
            await server.pool.execute("SELECT setval(pg_get_serial_sequence('people', 'id'), 73000)")
            people = []
            for name in ("Anna", "Doomed"):
                async with http.post("/api/v1/people", json={"name": name}) as r:
                    people.append((await r.json())["id"])
            accepted = await _upload(http, "front", b"event")

            async def done() -> dict[str, Any] | None:
                async with http.get(f"/api/v1/jobs/{accepted['job_id']}") as r:
                    body: dict[str, Any] = await r.json()
                    return body if body["event_id"] is not None else None

            job = await wait_until(done, timeout=60)
            clip_event_id = await _clip_event(http, server.pool)
        assert job["event_id"] is not None
        assert await server.pool.fetchval("SELECT count(*) FROM detections") > 0

        ids = RealIds("front", "spare", job["event_id"], job["id"], dead_job_id, *people, clip_event_id=clip_event_id)
        # Loading the schema and running schemathesis block on HTTP (requests), so both run in a
        # thread while this event loop serves them.
        schema = await asyncio.to_thread(_schema, server.api_url, headers, ids)
        # Every operation but the one that served the document: schemathesis leaves that one out by
        # design; loading the schema from it above (fetched over HTTP and parsed) is its test.
        expected = {
            f"{method.upper()} {path}" for path, ops in schema.raw_schema["paths"].items() for method in ops
        } - {"GET /api/v1/openapi.json"}
        started = time.monotonic()
        outcome = await asyncio.to_thread(_run, schema)
        elapsed = time.monotonic() - started

    print(f"schemathesis: {len(outcome.operations)} operations, {outcome.requests} requests, {elapsed:.0f} s")
    assert not outcome.failures, "\n\n".join(outcome.failures)
    assert outcome.operations, "schemathesis tested no operation"
    assert outcome.operations == expected
    # Each operation also reached a real row and answered 2xx at least once, so its success body
    # was checked too (a new route with a new path parameter needs its real id in the hooks above).
    # Except DELETE /dlq/{job_id}: schemathesis learns the dead job's id from GET /dlq and requeues
    # it (POST .../requeue runs first), so no job is dead by then; its 204 has no body anyway.
    never = expected - outcome.succeeded
    assert never <= {"DELETE /api/v1/dlq/{job_id}"}, f"never 2xx: {sorted(never)}"

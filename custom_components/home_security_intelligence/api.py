"""REST client for the Home Security Intelligence server (its ``/api/v1`` contract)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import yarl

API_PREFIX = "/api/v1"
TIMEOUT = aiohttp.ClientTimeout(total=15)
#: A clip (up to the server's clip_max_bytes) streams as long as it keeps coming.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=30)
#: The server's 429 message says "retry in N s" where no Retry-After header came with it.
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?) s")


def normalize_url(url: str) -> str:
    """The server's base URL as the client wants it: no trailing slashes and no ``/api/v1``
    (users paste the API's address too). ValueError for anything but an http(s) URL with a host."""
    text = url.strip()
    parsed = yarl.URL(text)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    text = text.rstrip("/")
    while text.lower().endswith(API_PREFIX):
        text = text[: -len(API_PREFIX)].rstrip("/")
    return text


class HsiError(Exception):
    """Any failure talking to the server."""


class HsiConnectionError(HsiError):
    """The server cannot be reached or answered garbage."""


class HsiAuthError(HsiError):
    """The API key was rejected (401/403)."""


class HsiApiError(HsiError):
    """The server refused the request with its JSON error shape."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Seconds the server asked to wait (its Retry-After header, or the "retry in N s" of a 429).
        self.retry_after = retry_after


def _retry_after(resp: aiohttp.ClientResponse, message: str) -> float | None:
    header = resp.headers.get("Retry-After", "")
    if header.isdigit():
        return float(header)
    match = _RETRY_IN.search(message)
    return float(match.group(1)) if match is not None else None


class HsiClient:
    """Thin async client over HA's shared aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        api_key: str,
        on_auth_error: Callable[[], None] | None = None,
    ) -> None:
        self._session = session
        self.url = url.rstrip("/")  # the config flow stores `normalize_url`'s form
        self._headers = {"Authorization": f"Bearer {api_key}"}
        #: Called when the server rejects the key (revoked or rotated): the integration starts reauth.
        self.on_auth_error = on_auth_error

    async def _request(self, method: str, path: str, *, content_type: str | None = None, **kwargs: Any) -> Any:
        headers = {**self._headers, "Content-Type": content_type} if content_type else self._headers
        try:
            async with self._session.request(
                method, f"{self.url}{API_PREFIX}{path}", headers=headers, timeout=TIMEOUT, **kwargs
            ) as resp:
                if resp.status in (401, 403):
                    if self.on_auth_error is not None:
                        self.on_auth_error()
                    raise HsiAuthError(f"API key rejected ({resp.status})")
                if resp.content_type == "image/jpeg":
                    if resp.status != 200:
                        raise HsiApiError(resp.status, "http_error", resp.reason or "")
                    return await resp.read()
                if resp.status == 204:  # a DELETE's answer: nothing to read
                    return None
                try:
                    body = await resp.json()
                except (aiohttp.ContentTypeError, ValueError) as err:
                    raise HsiConnectionError(f"not an HSI server answer ({resp.status})") from err
                if resp.status >= 400:
                    error = body.get("error", {}) if isinstance(body, dict) else {}
                    message = str(error.get("message", ""))
                    raise HsiApiError(
                        resp.status, str(error.get("code", "error")), message, _retry_after(resp, message)
                    )
                return body
        except (aiohttp.ClientError, TimeoutError) as err:
            raise HsiConnectionError(str(err) or type(err).__name__) from err

    async def health_ready(self) -> dict[str, Any]:
        """Readiness: 503 bodies still describe the dependencies, so they are returned too."""
        try:
            result: dict[str, Any] = await self._request("GET", "/health/ready")
        except HsiApiError as err:
            if err.status == 503:
                return {"ready": False}
            raise
        return result

    async def system_status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", "/system/status")
        return result

    async def list_cameras(self) -> list[dict[str, Any]]:
        body = await self._request("GET", "/cameras")
        cameras: list[dict[str, Any]] = body["cameras"]
        return cameras

    async def set_camera_enabled(self, camera_id: str, enabled: bool) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("PATCH", f"/cameras/{camera_id}", json={"enabled": enabled})
        return result

    async def get_events(self, **filters: Any) -> dict[str, Any]:
        params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in filters.items() if v is not None}
        result: dict[str, Any] = await self._request("GET", "/events", params=params)
        return result

    async def events_summary(self, **filters: Any) -> dict[str, Any]:
        """Counts of a period's events by level, camera and hour, and the most important ones."""
        params = {k: str(v) for k, v in filters.items() if v is not None}
        result: dict[str, Any] = await self._request("GET", "/events/summary", params=params)
        return result

    async def make_digest(self, **body: Any) -> dict[str, Any]:
        """A digest of a period, made now (``POST /digest``)."""
        result: dict[str, Any] = await self._request(
            "POST", "/digest", json={k: v for k, v in body.items() if v is not None}
        )
        return result

    async def get_event(self, event_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/events/{event_id}")
        return result

    async def patch_event(self, event_id: str, **changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("PATCH", f"/events/{event_id}", json=changes)
        return result

    async def event_snapshot(self, event_id: str) -> bytes:
        result: bytes = await self._request("GET", f"/events/{event_id}/snapshot.jpg")
        return result

    @asynccontextmanager
    async def event_clip(self, event_id: str, range_header: str | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        """The event's video clip as the server streams it (``range_header``: a ``Range`` passed on,
        answered 206 with that part). Errors as the other calls raise them; 416 for a bad range."""
        headers = self._headers | ({"Range": range_header} if range_header else {})
        try:
            response = await self._session.get(
                f"{self.url}{API_PREFIX}/events/{event_id}/clip", headers=headers, timeout=STREAM_TIMEOUT
            )
        except (aiohttp.ClientError, TimeoutError) as err:
            raise HsiConnectionError(str(err) or type(err).__name__) from err
        try:
            if response.status in (401, 403):
                if self.on_auth_error is not None:
                    self.on_auth_error()
                raise HsiAuthError(f"API key rejected ({response.status})")
            if response.status >= 400:
                try:
                    error = (await response.json()).get("error", {})
                except (aiohttp.ClientError, ValueError, AttributeError):
                    error = {}
                raise HsiApiError(response.status, str(error.get("code", "http_error")), str(error.get("message", "")))
            yield response
        finally:
            response.release()

    async def upload_image(self, camera_id: str, jpeg: bytes) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", f"/cameras/{camera_id}/images", data=jpeg, content_type="image/jpeg"
        )
        return result

    async def get_job(self, job_id: int | str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", f"/jobs/{job_id}")
        return result

    async def list_dlq(self) -> list[dict[str, Any]]:
        body = await self._request("GET", "/dlq")
        jobs: list[dict[str, Any]] = body["jobs"]
        return jobs

    async def requeue_dlq(self, job_id: int | str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", f"/dlq/{job_id}/requeue")
        return result

    async def get_context(self) -> dict[str, Any]:
        """The household context the server holds (``{"context", "set_at", "set_by"}``)."""
        result: dict[str, Any] = await self._request("GET", "/context")
        return result

    async def put_context(self, context: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("PUT", "/context", json=context)
        return result

    async def update_context(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change only the fields in ``changes``: the server's ``PUT /context`` replaces the whole
        context, so the fields another writer (the options forwarder, ``set_context``) set are
        read first and sent back unchanged."""
        current: dict[str, Any] = (await self.get_context())["context"]
        return await self.put_context(current | changes)

    async def list_people(self) -> list[dict[str, Any]]:
        """The enrolled people (names, person entities, embedding counts: never the embeddings)."""
        result: dict[str, Any] = await self._request("GET", "/people")
        people: list[dict[str, Any]] = result["people"]
        return people

    async def create_person(self, name: str, entity_id: str | None) -> dict[str, Any]:
        body = {"name": name} | ({"entity_id": entity_id} if entity_id else {})
        result: dict[str, Any] = await self._request("POST", "/people", json=body)
        return result

    async def enroll_detection(self, event_id: str, detection: int, person_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self._request(
            "POST", f"/events/{event_id}/detections/{detection}/enroll", json={"person_id": person_id}
        )
        return result

    async def delete_person(self, person_id: int) -> None:
        await self._request("DELETE", f"/people/{person_id}")

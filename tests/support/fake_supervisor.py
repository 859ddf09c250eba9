"""FAKE of the Home Assistant Supervisor API calls the add-on makes (nothing else can stand for the
Supervisor here): ``GET /services/mqtt`` and ``POST /discovery``, in bashio's wire format
(``{"result": "ok", "data": ...}``) behind the add-on's bearer token.

``POST /discovery`` checks the body as the Supervisor does, before and after its add-on -> app
rename alike (``supervisor/api/discovery.py``: a voluptuous schema of exactly ``service`` and
``config``, extra keys refused, and the service must be one the add-on's ``config.yaml`` lists
under ``discovery``). ``message(generation)`` is the stored message as that Supervisor hands it
to Home Assistant: the sender's slug under ``addon`` (before) or ``app`` (after)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from aiohttp import web

TOKEN = "fake-supervisor-token"
#: The slug the Supervisor gives a locally installed add-on.
SLUG = "local_home_security_intelligence"
_CONFIG = Path(__file__).resolve().parents[2] / "addon" / "config.yaml"


def _listed_services() -> list[str]:
    config = yaml.safe_load(_CONFIG.read_text(encoding="utf-8"))
    services: list[str] = config.get("discovery", [])
    return services


@dataclass
class FakeSupervisor:
    """FAKE Supervisor: what the add-on sent, what it refused, and how many calls lacked the token."""

    mqtt: dict[str, Any] = field(default_factory=dict)
    discoveries: list[dict[str, Any]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    unauthorised: int = 0
    _uuids: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/services/mqtt", self._mqtt)
        app.router.add_post("/discovery", self._discovery)
        return app

    def message(self, index: int, generation: Literal["addon", "app"]) -> dict[str, Any]:
        """Discovery message ``index`` as a Supervisor of that generation returns it to Home Assistant."""
        body = self.discoveries[index]
        return {generation: SLUG, "service": body["service"], "uuid": self._uuids[index], "config": body["config"]}

    def _authorised(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {TOKEN}"
        self.unauthorised += not ok
        return ok

    def _error(self, status: int, message: str) -> web.Response:
        self.refused.append((status, message))
        return web.json_response({"result": "error", "message": message}, status=status)

    async def _mqtt(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "unauthorised")
        return web.json_response({"result": "ok", "data": self.mqtt})

    async def _discovery(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, "unauthorised")
        body = await request.json()
        if not isinstance(body, dict) or set(body) != {"service", "config"}:
            keys = sorted(body) if isinstance(body, dict) else type(body).__name__
            return self._error(400, f"discovery needs exactly service and config, got {keys}")
        if not isinstance(body["service"], str) or not isinstance(body["config"], dict):
            return self._error(400, "service must be a string and config an object")
        if body["service"] not in _listed_services():
            return self._error(403, "Add-ons must list services they provide via discovery in their config!")
        self.discoveries.append(body)
        self._uuids.append(uuid.uuid4().hex)
        return web.json_response({"result": "ok", "data": {"uuid": self._uuids[-1]}})

"""The add-on's page behind Home Assistant's ingress: ``GET /ui`` (HTML).

Open Web UI in the add-on lands here: the server's status, its recent events and links to the
API. Like every route it needs an API key or the trusted proxy (the Supervisor's ingress, whose
requests Home Assistant has authenticated); links carry the ``X-Ingress-Path`` prefix the proxy
sends, so they work through ingress and directly alike.
"""

from __future__ import annotations

import re
from html import escape

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.registry import API
from inference_server.schemas import Event, SystemStatus
from inference_server.store import events as events_store

#: What the Supervisor sends (``/api/hassio_ingress/<token>``); anything else is ignored.
_INGRESS_PATH = re.compile(r"^/api/hassio_ingress/[A-Za-z0-9_-]+$")
RECENT = 10

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1c1c1c}"
    "table{border-collapse:collapse}td,th{padding:.25rem .75rem;border-bottom:1px solid #ddd;text-align:left}"
    ".high,.critical{color:#b00020;font-weight:600}.missing{color:#b00020}"
)


def ingress_prefix(request: web.Request) -> str:
    """The path prefix of links on the page: the ingress path when it is a well-formed one."""
    path = request.headers.get("X-Ingress-Path", "")
    return path if _INGRESS_PATH.fullmatch(path) else ""


def render(status: SystemStatus, recent: list[Event], prefix: str) -> str:
    """The page. Every value from the database or the settings is escaped."""
    models = "".join(
        f"<tr><td>{escape(m.name)}</td><td>{escape(m.device)}</td>"
        f'<td class="{escape(m.state)}">{escape(m.state)}</td><td>{escape(m.detail or "")}</td></tr>'
        for m in status.models
    )
    rows = "".join(
        f"<tr><td>{escape(e.started_at.isoformat(timespec='seconds'))}</td><td>{escape(e.camera_name)}</td>"
        f'<td class="{escape(e.risk_level)}">{escape(e.risk_level)} ({e.risk_score})</td>'
        f"<td>{escape(e.summary)}</td></tr>"
        for e in recent
    )
    queue = ", ".join(f"{escape(k)} {v}" for k, v in status.queue.items())
    api = escape(f"{prefix}/api/v1")
    models_table = (
        f"<h2>Models</h2><table><tr><th>Model</th><th>Device</th><th>State</th><th></th></tr>{models}</table>"
        if models
        else ""
    )
    events_table = (
        f"<table><tr><th>Started</th><th>Camera</th><th>Risk</th><th>Summary</th></tr>{rows}</table>"
        if rows
        else "<p>No events yet.</p>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>Home Security Intelligence</title><style>{_STYLE}</style></head><body>"
        f"<h1>Home Security Intelligence {escape(status.version)}</h1>"
        "<h2>Status</h2><table>"
        f"<tr><th>Detector</th><td>{escape(status.detector or 'none: see the models below')}</td></tr>"
        f"<tr><th>Reasoner</th><td>{escape(status.reasoner or 'none')}</td></tr>"
        f"<tr><th>MQTT</th><td>{'connected' if status.mqtt_connected else 'not connected'}</td></tr>"
        f"<tr><th>Queue</th><td>{queue}; dead letters {status.dlq_size}</td></tr>"
        f"<tr><th>Images/s</th><td>{status.images_per_s:.2f}</td></tr>"
        f"</table>{models_table}<h2>Recent events</h2>{events_table}<h2>API</h2><ul>"
        f'<li><a href="{api}/openapi.json">OpenAPI document</a></li>'
        f'<li><a href="{api}/events">Events (JSON)</a></li>'
        f'<li><a href="{api}/system/status">Status (JSON)</a></li>'
        f'<li><a href="{api}/metrics">Prometheus metrics</a></li>'
        "</ul></body></html>"
    )


@API.route("GET", "/ui", summary="The add-on's page: status, recent events, links", tag="system", response="text/html")
async def page(request: web.Request, _: None, __: None) -> web.Response:
    context = ctx(request)
    status = await context.status.current()
    recent, _cursor = await events_store.list_page(context.pool, events_store.EventFilter(), RECENT, None)
    return web.Response(text=render(status, recent, ingress_prefix(request)), content_type="text/html")

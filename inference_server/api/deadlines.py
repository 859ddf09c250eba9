"""Read deadlines: a client sends its request headers, and then its body, in bounded time.

aiohttp's server bounds neither: a connection that sends its headers a byte at a time (slowloris)
or trickles an upload body is held until the keep-alive timer (75 s, and only while no request is
being handled) or for ever. Here:

- headers: the request line and headers must be complete within ``header_timeout_s`` of the
  connection opening, or of the first byte of a later request on a kept-alive connection; else
  the server answers 408 and closes. An idle kept-alive connection is left to the keep-alive timer.
- body: ``body_timeout_s`` to start with, extended by one second for every ``body_min_rate`` bytes
  received (Apache's ``mod_reqtimeout`` rule), so a slow but honest camera finishes and a trickle
  does not; a late body gets 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

from inference_server.api.errors import Handler, error_response

log = logging.getLogger(__name__)

_TIMEOUT_BODY = json.dumps(
    {"error": {"code": "request_timeout", "message": "request headers not received in time"}}
).encode()
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_TIMEOUT_BODY)}\r\n\r\n".encode()
    + _TIMEOUT_BODY
)


class BodyReadTimeout(TimeoutError):
    """The request body did not arrive in time. A ``TimeoutError``, so that aiohttp's lingering
    read of an unread body after the response stops quietly instead of logging an error."""


class _HeaderDeadlineHandler(web.RequestHandler):
    """aiohttp's connection protocol with a deadline on each request's headers."""

    def __init__(self, manager: web.Server, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        #: Between a response and the first byte of the next request (the keep-alive timer's time).
        self._between_requests = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests:
            self._between_requests = False
            self._arm()
        super().data_received(data)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._disarm()
        self._between_requests = True
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = asyncio.get_running_loop().call_later(self._header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        # aiohttp waits on ``_waiter`` exactly while no complete request has arrived (its own
        # keep-alive check reads it the same way); otherwise a request is being handled.
        waiter = self._waiter
        if waiter is None or waiter.done() or self.transport is None:
            return
        peer = self.transport.get_extra_info("peername")
        log.info("request headers not received in time, closing client=%s timeout_s=%s", peer, self._header_timeout_s)
        self.transport.write(_TIMEOUT_RESPONSE)
        self.force_close()  # closes the transport once the 408 is flushed


class _HeaderDeadlineServer(web.Server):
    def __init__(self, *args: Any, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = header_timeout_s

    def __call__(self) -> web.RequestHandler:
        return _HeaderDeadlineHandler(self, loop=self._loop, header_timeout_s=self._header_timeout_s, **self._kwargs)


class DeadlineAppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections have a header read deadline (see the module doc)."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        # The application's own server (it carries the app's handler and request factory), rebuilt
        # with the deadline protocol: aiohttp has no public hook for the protocol class.
        base = await super()._make_server()
        return _HeaderDeadlineServer(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            header_timeout_s=self._header_timeout_s,
            **base._kwargs,
        )


def body_deadline_middleware(timeout_s: float, min_rate: float) -> Any:
    """A middleware failing body reads with 408 once the body is late (see the module doc)."""

    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        content = request.content
        if not request.body_exists or content.is_eof():
            return await handler(request)
        loop = asyncio.get_running_loop()
        started = loop.time()
        timer: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal timer
            if content.is_eof():
                return
            due = started + timeout_s + content.total_bytes / min_rate
            if loop.time() < due:
                timer = loop.call_at(due, check)
                return
            content.set_exception(BodyReadTimeout(f"body not received in time ({content.total_bytes} bytes)"))

        timer = loop.call_at(started + timeout_s, check)
        try:
            return await handler(request)
        except BodyReadTimeout as err:
            log.info(
                "request body not received in time, closing client=%s method=%s path=%s detail=%s",
                request.remote,
                request.method,
                request.path,
                err,
            )
            response = error_response(408, "request_timeout", "request body not received in time")
            response.force_close()
            return response
        finally:
            timer.cancel()

    return body_deadline

"""Connections that must deliver their request's headers in time.

uvicorn closes idle keep-alive connections, but a client that sends a few header bytes a
second (slowloris) keeps its socket, and the server's memory for it, for ever: no ASGI app can
see a request before its headers are complete. So `facemargin serve` runs this protocol: a
connection has FACEMARGIN_HEADER_TIMEOUT_S from opening (or from its previous response) to
deliver a complete request line and headers, else it is closed. The body has its own
deadline (app.py, BodyLimits)."""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.settings import get_settings

log = logging.getLogger("facemargin")


class HeaderDeadline(H11Protocol):
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request line and headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        timeout = get_settings().header_timeout_s
        self._header_deadline = self.loop.call_later(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection whose request headers did not arrive in time")
            self.transport.close()

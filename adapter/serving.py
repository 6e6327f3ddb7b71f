"""How `infusion-adapter serve` runs the app under uvicorn: no access log, forwarded headers
left to the app (which trusts only ADAPTER_TRUSTED_PROXIES), and connections that take too long
to send their headers closed."""

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from adapter.settings import Settings

TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 35\r\nconnection: close\r\n\r\nthe request's headers came too late"
)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers: from the
    connection's start (and from the first byte of each later request) to the headers' end.
    Without it a caller sending a header a minute keeps a connection open for ever."""

    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self.header_deadline is None:
            self.header_deadline = self.loop.call_later(self.header_timeout, self._too_late)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _too_late(self) -> None:
        self.header_deadline = None
        if not self.transport.is_closing():
            self.transport.write(TIMED_OUT)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration of the service."""
    timeout = {"header_timeout": settings.header_timeout_seconds}
    protocol = type("ServiceProtocol", (HeaderTimeoutProtocol,), timeout)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level=settings.log_level.lower(),
        # No access log: request lines carry search parameters, and those can name a patient.
        access_log=False,
        # The app reads X-Forwarded-For itself, and only from ADAPTER_TRUSTED_PROXIES.
        proxy_headers=False,
        server_header=False,
    )

"""The guard in Ray Serve's HTTP proxy: slow, incomplete or oversized requests are answered there, and never hold
a slot of the application (docs/serving.md, "Slow and oversized requests").

Serve 2.60's proxy is a uvicorn server whose settings Serve fixes itself: no time limit for a request's headers
or body, no limit on the size of its headers, and the body is pulled by the application replica while it holds
one of its `max_ongoing_requests` slots. Serve's one supported hook into that process is
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``: a function it calls once per proxy, before the server starts, that
returns ASGI middlewares. `install` is that function. It

- selects `GuardedHttpToolsProtocol` as uvicorn's HTTP protocol: a request's line and headers must arrive within
  the time limit (408 and the connection closed) and within the size limit (431 and closed);
- returns `WholeBodies`: the body is read in full, within the time limit (408) and the size limit (413),
  before the request is forwarded, so a replica only ever sees whole requests.

The settings travel as environment variables of the proxy process (`proxy_env`), set through Serve's controller
options, whose environment the proxies inherit: by `loopfree serve` (serve/app.py `start`), and in
platform/serve_config.yaml and the RayService (infra/kuberay) for `serve deploy` and KubeRay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger("ray.serve")  # the proxy's own log (serve.log for `loopfree serve`)
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "loopfree_platform.serve.guard:install"
TIMEOUT_ENV, HEADER_ENV, BODY_ENV = ("LOOPFREE_SERVE_REQUEST_TIMEOUT_S", "LOOPFREE_SERVE_MAX_HEADER_BYTES",
                                     "LOOPFREE_SERVE_MAX_BODY_BYTES")


@dataclass(frozen=True)
class Limits:
    request_timeout_s: float = 10.0  # for the request line and headers, then again for the body
    max_header_bytes: int = 16 << 10  # request line plus headers
    max_body_bytes: int = 1 << 20

    @classmethod
    def from_env(cls) -> Limits:
        return cls(float(os.environ.get(TIMEOUT_ENV, cls.request_timeout_s)),
                   int(os.environ.get(HEADER_ENV, cls.max_header_bytes)),
                   int(os.environ.get(BODY_ENV, cls.max_body_bytes)))


def proxy_env(limits: Limits) -> dict[str, str]:
    """The environment that installs the guard in a Serve proxy (Serve reads it when the proxy starts)."""
    return {CALLBACK_ENV: CALLBACK, TIMEOUT_ENV: f"{limits.request_timeout_s:g}",
            HEADER_ENV: str(limits.max_header_bytes), BODY_ENV: str(limits.max_body_bytes)}


def install() -> list:
    """Serve's proxy callback: the guarded protocol for this process's uvicorn, and the body middleware."""
    from starlette.middleware import Middleware
    from uvicorn import config

    config.HTTP_PROTOCOLS["auto"] = f"{__name__}:GuardedHttpToolsProtocol"  # Serve builds its Config with "auto"
    return [Middleware(WholeBodies, limits=Limits.from_env())]


def refusal(status: int, message: str, client) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a JSON refusal that closes the connection (its unread rest is never read); logged."""
    logger.warning(f"refused {status} to {client[0] if client else 'a client'}: {message}")
    body = json.dumps({"error": message}).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")], body


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


async def read_whole_body(receive, limit: int, declared: str) -> bytes:
    """All of a request's body from ASGI `receive`; BodyTooLarge as soon as it (or its declared length) passes
    `limit`, ClientGone if the client disconnects first."""
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body: {declared} bytes, at most {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge(f"body: more than {limit} bytes")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class WholeBodies:
    """ASGI middleware: forward an HTTP request only once its whole body has arrived, within the time limit.

    Serve's proxy otherwise starts the request on a replica at once and lets it wait there for the body: a
    hundred stalled uploads would hold a hundred of the replica's slots."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-length"), "")
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                body = await read_whole_body(receive, self.limits.max_body_bytes, declared)
        except TimeoutError:
            timeout = f"the request body did not arrive within {self.limits.request_timeout_s:g} s"
            return await self._refuse(send, 408, timeout, scope.get("client"))
        except BodyTooLarge as err:
            return await self._refuse(send, 413, str(err), scope.get("client"))
        except ClientGone:  # nothing to answer, nothing forwarded
            return
        await self.app(scope, self._replay(body, receive), send)

    @staticmethod
    def _replay(body: bytes, receive):
        sent = False

        async def replayed():
            nonlocal sent
            if sent:  # after the body: what the client does next (a disconnect), as Serve expects
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replayed

    @staticmethod
    async def _refuse(send, status: int, message: str, client) -> None:
        headers, body = refusal(status, message, client)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a time and a size limit on each request's line and headers.

    The clock starts when a connection opens and again when a request's first byte arrives on a kept-alive one;
    it stops when the headers are complete. Late: 408 (or, before any byte, a silent close). Too large: 431.
    Either way the connection is closed and what else it sends is never read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = Limits.from_env()
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_bytes = 0  # bytes received while the current request's headers are incomplete
        self.refused = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self.head_timer is None:
            self.head_bytes = 0
            self.head_timer = self.loop.call_later(self.limits.request_timeout_s, self._head_late)

    def _stop_head_clock(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        waiting = self.head_timer is not None
        super().data_received(data)
        if waiting and self.head_timer is not None and not self.refused:  # still no complete head: count it
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"request headers: more than {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_head()

    def on_headers_complete(self) -> None:
        self._stop_head_clock()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            return self._refuse(431, f"request headers: {size} bytes, at most {self.limits.max_header_bytes}")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.refused:
            super().on_message_complete()

    def _head_late(self) -> None:
        self.head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined request is late: close once the current answer is sent
        elif self.head_bytes or getattr(self, "url", b""):  # (uvicorn sets url at the first byte)
            self._refuse(408, f"the request headers did not arrive within {self.limits.request_timeout_s:g} s")
        else:
            self.transport.close()  # an idle connection that never sent a request

    def _refuse(self, status: int, message: str) -> None:
        self.refused = True
        self._stop_head_clock()
        headers, body = refusal(status, message, self.client)
        self.transport.write(STATUS_LINE[status] + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + body)
        self.transport.close()

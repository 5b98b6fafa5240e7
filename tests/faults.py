"""A fault-injecting HTTP proxy for the S3 endpoint, on 127.0.0.1: the storage faults of docs/reliability.md.

Every request is forwarded to the real endpoint (moto) unless the proxy's rule picks it: then it answers
503 with S3's SlowDown error (what S3 sends when throttling), or cuts the transfer (a GET's body stops
half-way with the connection closed; a PUT's body is read half-way and the connection closed unanswered).
"""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    """proxy = FaultProxy(endpoint); proxy.url is the endpoint to use; set proxy.every (fail every Nth
    request, 0: none), proxy.mode ("503", "cut", or a tuple of them taken in turn: "503", "cut", "503", ...)
    and proxy.methods (which HTTP methods may be picked). proxy.injected counts the faults injected,
    proxy.by_kind counts them per kind and method ("cut PUT": 2), proxy.requests the requests seen and
    proxy.per_method them per method.

    by_method=True counts the Nth request and takes the modes in turn for each method on its own, so which
    faults a test meets does not depend on how concurrent requests interleave: the 10th GET is cut whatever
    HEADs and PUTs came between. A test that asserts on kinds ("cut GET") needs it: counted over all
    requests, one run's picks fell on HEADs and it saw no cut GET."""

    def __init__(self, target: str, every: int = 0, mode: str | tuple[str, ...] = "503",
                 methods: tuple[str, ...] = ("GET", "PUT", "POST"), by_method: bool = False):
        self.target = urllib.parse.urlsplit(target)
        self.every, self.mode, self.methods, self.by_method = every, mode, methods, by_method
        self.requests = self.injected = 0
        self.by_kind: dict[str, int] = {}
        self.per_method: dict[str, int] = {}  # requests per method
        self._picked: dict[str, int] = {}  # faults picked per method ("": all, without by_method)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _pick(self, method: str) -> str | None:
        with self._lock:
            self.requests += 1
            self.per_method[method] = self.per_method.get(method, 0) + 1
            seen = self.per_method[method] if self.by_method else self.requests
            if method in self.methods and self.every and seen % self.every == 0:
                modes = (self.mode,) if isinstance(self.mode, str) else self.mode
                key = method if self.by_method else ""
                self._picked[key] = self._picked.get(key, 0) + 1
                return modes[(self._picked[key] - 1) % len(modes)]
        return None

    def _injected(self, fault: str, method: str) -> None:
        """Count a fault that was applied (a cut of an empty body is not one: the request goes through)."""
        with self._lock:
            self.injected += 1
            self.by_kind[f"{fault} {method}"] = self.by_kind.get(f"{fault} {method}", 0) + 1

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
                length = int(self.headers.get("Content-Length") or 0)
                fault = proxy._pick(self.command)
                if fault == "cut" and self.command in ("PUT", "POST") and (length > 1 or chunked):
                    proxy._injected(fault, self.command)
                    self.rfile.read(length // 2) if length else self.rfile.readline()  # part of the upload
                    self.connection.shutdown(socket.SHUT_RDWR)  # then the line drops
                    self.close_connection = True
                    return
                body = self._chunked_body() if chunked else (self.rfile.read(length) if length else b"")
                if fault == "503":
                    proxy._injected(fault, self.command)
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "expect")}
                upstream.request(self.command, self.path, body=body, headers=headers)  # sets Content-Length
                reply = upstream.getresponse()
                data = reply.read()
                self.send_response(reply.status, reply.reason)
                for key, value in reply.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                head_length = reply.getheader("Content-Length", "0")  # a HEAD tells the object's size
                self.send_header("Content-Length", head_length if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if fault == "cut" and self.command == "GET" and len(data) > 1:
                    proxy._injected(fault, self.command)
                    self.wfile.write(data[:len(data) // 2])  # the download stops half-way
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            def _chunked_body(self) -> bytes:
                """An HTTP/1.1 chunked request body, de-chunked (the AWS SDK streams uploads this way)."""
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler

"""The fault-injecting proxy the S3 fault tests go through (tests/faults.py): which request it spoils, and how."""

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.faults import FaultProxy

BODY = b"0123456789" * 10


class _Origin(BaseHTTPRequestHandler):
    """A stand-in upstream on 127.0.0.1: every request gets 200 and BODY."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(BODY)

    do_HEAD = do_GET


@pytest.fixture
def origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _outcome(url: str, method: str) -> str:
    """'200', '503' or 'cut' (the body stopped short of its Content-Length)."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        conn.request(method, "/object")
        reply = conn.getresponse()
        try:
            body = reply.read()
        except http.client.IncompleteRead:
            return "cut"
        assert method == "HEAD" or reply.status != 200 or body == BODY
        return str(reply.status)
    finally:
        conn.close()


@pytest.mark.parametrize("by_method, expected", [
    # counted per method: the 2nd and 4th GET, whatever HEAD came first
    (True, ["200", "200", "503", "200", "cut"]),
    # counted over all requests: the 2nd and 4th request (the 1st and 3rd GET)
    (False, ["200", "503", "200", "cut", "200"]),
])
def test_the_proxy_spoils_every_nth_request_counted_per_method_or_over_all(origin, by_method, expected):
    with FaultProxy(origin, every=2, mode=("503", "cut"), methods=("GET",), by_method=by_method) as proxy:
        got = [_outcome(proxy.url, method) for method in ("HEAD", "GET", "GET", "GET", "GET")]
    assert got == expected
    assert proxy.by_kind == {"503 GET": 1, "cut GET": 1} and proxy.per_method == {"HEAD": 1, "GET": 4}

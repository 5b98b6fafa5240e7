"""HTTP clients that misbehave on purpose (stall, send headers without end, hang up), written on raw sockets, and
the log files of a Serve application, for the serving tests (docs/serving.md, "Slow and oversized requests")."""

import selectors
import socket
import time
from pathlib import Path

import psutil

# Requests that stop half-way and then wait, each kind of stall a slow or hostile client can hold open.
STALLS = {
    "declared length never sent": b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"prompts\"",
    "chunked body that never ends": b"POST /generate HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                    b"40\r\n{\"prompts\"",
    "headers never finished": b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n",
    "nothing sent": b"",
}


def post(body: bytes) -> bytes:
    return b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def opened(port: int, data: bytes) -> socket.socket:
    """A connection to 127.0.0.1:port that has sent `data` and waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def answered(sock: socket.socket) -> bool:
    """Whether the server has written to (or closed) the connection already."""
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(timeout=0))


def answers(socks: list[socket.socket], deadline: float) -> list[bytes | None]:
    """What the server wrote on each connection before closing it (b"" for a close without a word); None where
    it was still open at `deadline` (time.monotonic)."""
    got: list[bytes | None] = [None] * len(socks)
    parts: dict[int, list[bytes]] = {i: [] for i in range(len(socks))}
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sel.register(sock, selectors.EVENT_READ, i)
        while parts and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                i = key.data
                try:
                    chunk = socks[i].recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    parts[i].append(chunk)
                else:  # closed: what it said is complete
                    got[i] = b"".join(parts.pop(i))
                    sel.unregister(socks[i])
    for sock in socks:
        sock.close()
    return got


def endless_headers(port: int, limit_bytes: int, chunk: int = 8192) -> tuple[bytes, int]:
    """Send one header that never ends, a chunk at a time, until the server answers; returns its answer and the
    bytes sent by then (at most `limit_bytes`)."""
    sock = opened(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: ")
    sent = 0
    with sock:
        while sent < limit_bytes:
            sock.sendall(b"a" * chunk)
            sent += chunk
            with selectors.DefaultSelector() as sel:  # the server refuses as soon as it can: stop sending then
                sel.register(sock, selectors.EVENT_READ)
                if sel.select(timeout=1.0):
                    break
        return b"".join(iter(lambda: sock.recv(65536), b"")), sent


def serve_log_sizes(logs_dir: str | Path, app: str) -> dict[Path, int]:
    """The files that Serve's proxy and `app`'s replicas log to (Serve's own logs, and the stdout and stderr of
    their worker processes, where Python prints unhandled errors) with their sizes now."""
    logs = Path(logs_dir)
    pids = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(k in " ".join(p.info["cmdline"] or []) for k in (f"ServeReplica:{app}:", "ProxyActor"))]
    files = [f for pid in pids for f in logs.glob(f"worker-*-{pid}.*")]
    files += [*logs.glob(f"serve/replica_{app}_*.log"), *logs.glob("serve/proxy_*.log")]
    return {f: f.stat().st_size for f in files}


def written_since(sizes: dict[Path, int]) -> str:
    return "".join(f.read_bytes()[size:].decode(errors="replace") for f, size in sizes.items())

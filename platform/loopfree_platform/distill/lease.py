"""One driver per run: a lease file in the run folder (docs/reliability.md, "One run per name").

Two drivers started with the same job name would write the same checkpoints, metrics and MLflow run. The
first driver writes `<run_dir>/driver.lease.json` (host, pid, start, last renewal) and renews it every
RENEW_S seconds from a daemon thread; a second driver refuses, naming the holder, until the lease is
released, or is stale: not renewed for STALE_S seconds (the holder's machine is gone), or held by a
process of this host that no longer exists (a killed driver, resubmitted at once).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from loopfree_platform import storage

STALE_S = 90.0
RENEW_S = 15.0


class RunLeaseError(RuntimeError):
    """Another live driver holds this run."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale(holder: dict, now: float | None = None) -> bool:
    if (now or time.time()) - holder["renewed"] > STALE_S:
        return True
    return holder["host"] == socket.gethostname() and not _alive(int(holder["pid"]))


class RunLease:
    def __init__(self, run_dir: str, endpoint_url: str | None = None):
        self.uri, self.endpoint = storage.join(run_dir, "driver.lease.json"), endpoint_url
        self.me = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        if not storage.exists(self.uri, self.endpoint):
            return None
        try:
            return json.loads(storage.read_bytes(self.uri, self.endpoint))
        except (ValueError, OSError):
            return None  # unreadable: treated as no lease (writes are atomic, so this is not a live holder)

    def _write(self) -> None:
        storage.write_bytes(self.uri, json.dumps({**self.me, "renewed": time.time()}).encode(), self.endpoint)

    def acquire(self) -> None:
        for _ in range(2):  # write, then read back: of two drivers racing, the last writer wins, the other refuses
            held = self.holder()
            if held and held["id"] != self.me["id"] and not stale(held):
                age = time.time() - held["renewed"]
                raise RunLeaseError(
                    f"{self.uri}: this run is held by another driver (pid {held['pid']} on {held['host']}, started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(held['started']))}, renewed {age:.0f} s ago); "
                    f"stop it, or use another job name (a lease not renewed for {STALE_S:.0f} s is taken over)")
            self._write()
            time.sleep(0.2)
        self._thread = threading.Thread(target=self._renew, name="run-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                self._write()
            except OSError:
                pass  # a storage hiccup: the next renewal retries; the lease stays valid for STALE_S

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        held = self.holder()
        if held and held["id"] == self.me["id"]:
            storage.delete(self.uri, self.endpoint)

    def __enter__(self) -> "RunLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

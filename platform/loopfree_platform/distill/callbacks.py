"""Driver-side seams on Ray Train's reports (they run in the Train controller, not in the workers)."""

from __future__ import annotations

import json
import os
import threading
from typing import Callable

from ray.train import UserCallback

from loopfree_platform import storage


class MetricsLog(UserCallback):
    """Rank 0's reported metrics as ``metrics.jsonl`` in the run folder, one row per reported step.

    Rows are keyed by step: after a restart from a checkpoint the re-run steps replace their earlier
    rows, so every step is counted once. Existing rows are read back when a job resumes.
    """

    def __init__(self, run_dir: str, endpoint_url: str | None = None):
        self.uri = storage.join(run_dir, "metrics.jsonl")
        self.endpoint_url = endpoint_url
        self.rows: dict[int, dict] | None = None

    def after_report(self, run_context, metrics, checkpoint):
        if self.rows is None:
            self.rows = {r["step"]: r for r in read_metrics(self.uri, self.endpoint_url)}
        row = {k: v for k, v in metrics[0].items() if isinstance(v, (int, float, str))}
        self.rows[int(row["step"])] = row
        text = "".join(json.dumps(self.rows[s]) + "\n" for s in sorted(self.rows))
        storage.write_bytes(self.uri, text.encode(), self.endpoint_url)


def read_metrics(uri: str, endpoint_url: str | None = None) -> list[dict]:
    if not storage.exists(uri, endpoint_url):
        return []
    return [json.loads(line) for line in storage.read_bytes(uri, endpoint_url).decode().splitlines() if line]


class MetricsFeed:
    """Reads metrics.jsonl files (MetricsLog's rows) from the driver while a run goes on, and hands every
    file's rows to `on_rows` (a list of row lists, in `uris` order) whenever one changed: the command's progress
    bar follows the run without a hook in the training run, also for a sweep's trials and after restarts.

    Used as a context manager around ``trainer.fit()``; polls in a daemon thread, once more at the end."""

    def __init__(self, uris: list[str], endpoint_url: str | None, on_rows: Callable[[list[list[dict]]], None],
                 interval: float = 1.0):
        self.uris, self.endpoint_url, self.on_rows = list(uris), endpoint_url, on_rows
        self.interval = interval if not any(storage.is_s3(u) for u in uris) else max(interval, 3.0)
        self._seen: dict[str, object] = {}
        self._tables: dict[str, list[dict]] = {u: [] for u in self.uris}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-feed", daemon=True)

    def _version(self, uri: str):
        if storage.is_s3(uri):
            return object()  # always re-read (every few seconds)
        try:
            st = os.stat(uri)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def poll(self) -> None:
        changed = False
        for uri in self.uris:
            version = self._version(uri)
            if version is None or version == self._seen.get(uri):
                continue
            try:
                self._tables[uri] = read_metrics(uri, self.endpoint_url)
            except Exception:  # a file being replaced, a storage hiccup: the next poll reads it
                continue
            self._seen[uri], changed = version, True
        if changed:
            self.on_rows([self._tables[u] for u in self.uris])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "MetricsFeed":
        self.poll()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

"""Driver-side seams on Ray Train's reports (they run in the Train controller, not in the workers)."""

from __future__ import annotations

import json

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

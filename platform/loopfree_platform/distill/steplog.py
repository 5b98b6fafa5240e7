"""The step-execution log: one line per step that rank 0 executed, per attempt, never deduplicated.

`metrics.jsonl` keys its rows by step (a step run again after a restart replaces its row), so it shows that
no step is missing, not how often each one ran. This log keeps every execution: after a crash, a lost node
or a resubmission it shows which steps ran twice, which must be exactly those after the checkpoint the run
resumed from (docs/reliability.md).

An attempt is one start of the worker group: the first, each restart by Ray Train, each re-run of the job.
Object storage has no append, so an attempt never writes into another's object: its lines go to
``steps/attempt_AAAA_BBBBBBBBB.jsonl`` (attempt, first step of a block of `BLOCK` steps), and only the
current block's object is rewritten at each step, so a write stays small however long the run.
"""

from __future__ import annotations

import json
import re

from loopfree_platform import storage

FOLDER = "steps"
BLOCK = 100
NAME = re.compile(r"attempt_(\d+)_(\d+)\.jsonl$")


def _objects(run_dir: str, endpoint_url: str | None) -> list[str]:
    try:
        return [u for u in storage.list_files(storage.join(run_dir, FOLDER), endpoint_url) if NAME.search(u)]
    except FileNotFoundError:
        return []


class StepLog:
    """Rank 0's writer. The attempt number follows the highest one in storage (an attempt that executed no
    step left no object, and its number is taken again)."""

    def __init__(self, run_dir: str, endpoint_url: str | None, resumed_at: int):
        self.run_dir, self.endpoint_url, self.resumed_at = run_dir, endpoint_url, resumed_at
        self.attempt = 1 + max((int(NAME.search(u)[1]) for u in _objects(run_dir, endpoint_url)), default=-1)
        self.block, self.lines = -1, []

    def append(self, step: int, **results: float) -> None:
        """Record that `step` (1-based, as in metrics.jsonl) ran, with rank 0's own results of it."""
        block = (step - 1) // BLOCK * BLOCK + 1
        if block != self.block:
            self.block, self.lines = block, []
        row = {"step": step, "attempt": self.attempt, "resumed_at": self.resumed_at, **results}
        self.lines.append(json.dumps(row) + "\n")
        uri = storage.join(self.run_dir, FOLDER, f"attempt_{self.attempt:04d}_{block:09d}.jsonl")
        storage.write_bytes(uri, "".join(self.lines).encode(), self.endpoint_url)


def read_steps(run_dir: str, endpoint_url: str | None = None) -> list[dict]:
    """Every recorded execution, in the order they ran (attempt, then step)."""
    rows = []
    for uri in _objects(run_dir, endpoint_url):
        rows += [json.loads(line) for line in storage.read_bytes(uri, endpoint_url).decode().splitlines() if line]
    return sorted(rows, key=lambda r: (r["attempt"], r["step"]))

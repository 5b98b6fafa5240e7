"""The repository speaks for itself: its text refers to its own docs and results, never to numbered
tickets of the tracker it was developed with (docs/architecture.md, principle 13)."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".cfg", ".txt"}
SKIP = {".venv", ".git", "runs", "data", "node_modules"}
TICKET = re.compile(r"\bissues? ?#?\d+", re.IGNORECASE)


def _text_files() -> list[Path]:
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in SKIP and not d.endswith(".egg-info")]
        files += [Path(folder) / n for n in names if Path(n).suffix in TEXT]
    return files


def test_no_numbered_ticket_references():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _text_files()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if TICKET.search(line)]
    assert not hits, "name the feature or the doc section instead:\n" + "\n".join(hits)

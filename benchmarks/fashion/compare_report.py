"""The parts of the Fashion-MNIST comparison (compare.py) that read its outputs: prompt alignment with the
committed classifier, time and memory per image through benchmarks/latency_memory.py, sample grids and
the Markdown report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.fashion.teacher_fid import prompt_classes

CLASSIFIER = Path("models/fashion-classifier")


def _load_images(image_dir: Path, ids: list[int]) -> torch.Tensor:
    """Saved PNGs <id>.png -> uint8 (N, 3, H, W)."""
    import PIL.Image

    arrays = [np.asarray(PIL.Image.open(image_dir / f"{i}.png").convert("RGB")) for i in ids]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@torch.no_grad()
def alignment(image_dir: Path, prompts: list[str]) -> float:
    """Accuracy of the Fashion-MNIST classifier on the generated images against the class in each prompt
    (our stand-in for the CLIP score: the evaluation job has no classifier metric)."""
    from loopfree.classifier import load_classifier

    model, _ = load_classifier(CLASSIFIER)
    images = _load_images(image_dir, list(range(len(prompts))))
    predicted = torch.cat([model(b.float() / 127.5 - 1).argmax(1) for b in images.split(250)])
    return (predicted == prompt_classes(prompts)).float().mean().item()


def grid(image_dir: Path, ids: list[int], columns: int, out: Path) -> Path:
    """A small PNG grid of the saved images `ids`, row-major, 1 px black gutters."""
    import PIL.Image

    images = _load_images(image_dir, ids).permute(0, 2, 3, 1).numpy()
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    canvas = np.zeros((rows * (h + 1) - 1, columns * (w + 1) - 1, 3), np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, columns)
        canvas[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w] = im
    out.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(canvas).save(out, optimize=True)
    return out


def latency(job_yaml: Path, out: Path, repeats: int) -> dict[str, tuple[float, float]]:
    """Time and peak memory per image (batch 1) of every system of the job, in a fresh process so the
    peak resident set is the system's, not this driver's (Ray, cached features)."""
    cmd = [sys.executable, "-m", "benchmarks.latency_memory", "--job", str(job_yaml), "--out", str(out),
           "--repeats", str(repeats)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return parse_latency(out)


def parse_latency(out: Path) -> dict[str, tuple[float, float]]:
    """method -> (ms, GB) from latency_memory.py's Markdown table."""
    timings = {}
    for line in out.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].replace(".", "", 1).isdigit():
            timings[cells[0]] = (float(cells[2]), float(cells[3]))
    return timings


def _fmt(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    columns = ("method", "steps", "FID", "precision", "recall", "F1", "density", "coverage", "alignment",
               "time ms / image", "peak memory GB", "images")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, r in results.items():
        lines.append("| " + " | ".join([
            name, str(r.get("steps", "-")), _fmt(r.get("fid"), 2),
            *(_fmt(r.get(k), 3) for k in ("precision", "recall", "f1", "density", "coverage", "alignment")),
            _fmt(r.get("time_ms"), 1), _fmt(r.get("memory_gb"), 2), str(r.get("images", "-"))]) + " |")
    return lines


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def targets(results: dict[str, dict[str, Any]], tiue: str, sb: str, t50: str, t4: str) -> list[str]:
    """The comparison's four targets, each as 'held' / 'missed' with the numbers (rows that are missing: 'n/a')."""
    def get(name: str, key: str) -> float | None:
        return results.get(name, {}).get(key)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("**held**" if ok else "**missed**")

    f_tiue, f50, f4 = get(tiue, "fid"), get(t50, "fid"), get(t4, "fid")
    r, rs, c, cs = get(tiue, "recall"), get(sb, "recall"), get(tiue, "coverage"), get(sb, "coverage")
    ms, ms4 = get(tiue, "time_ms"), get(t4, "time_ms")
    known = lambda *v: all(x is not None for x in v)  # noqa: E731
    return [
        f"1. TiUE FID within 1.25x of the teacher's 50-step FID: {verdict(f_tiue <= 1.25 * f50 if known(f_tiue, f50) else None)}"
        f" ({_fmt(f_tiue, 2)} vs 1.25 x {_fmt(f50, 2)} = {_fmt(1.25 * f50 if f50 else None, 2)})",
        f"2. TiUE FID better than the teacher at 4 steps: {verdict(f_tiue < f4 if known(f_tiue, f4) else None)}"
        f" ({_fmt(f_tiue, 2)} vs {_fmt(f4, 2)})",
        f"3. TiUE recall and coverage at least the SwiftBrush student's: "
        f"{verdict(r >= rs and c >= cs if known(r, rs, c, cs) else None)} (recall {_fmt(r, 3)} vs {_fmt(rs, 3)}, "
        f"coverage {_fmt(c, 3)} vs {_fmt(cs, 3)})",
        f"4. TiUE time per image below 0.7x the teacher's 4 steps: {verdict(ms < 0.7 * ms4 if known(ms, ms4) else None)}"
        f" ({_fmt(ms, 1)} ms vs 0.7 x {_fmt(ms4, 1)} = {_fmt(0.7 * ms4 if ms4 else None, 1)} ms)",
    ]


READING = "<!-- reading: kept when the report is regenerated -->"


def kept_reading(path: Path) -> str:
    """The hand-written reading below the marker of an existing report (regenerating keeps it)."""
    if path.is_file() and READING in (text := path.read_text()):
        return text.split(READING, 1)[1].strip()
    return "(no reading written yet)"

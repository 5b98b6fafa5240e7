"""Where evaluation numbers go: a Markdown and a CSV table in the paper's column order, MLflow metrics,
and the feature-similarity CSV and plot of `loopfree analyze-features`."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from loopfree.analysis import StepSimilarity
from loopfree_platform import tracking
from loopfree_platform.evaluate.job import EvaluateJob
from loopfree_platform.evaluate.stages import SystemResult
from loopfree_platform.tracking import Run

# The paper's Table 1 order (method, steps, FID, CLIP; docs/method.md), then the distribution metrics, then the image count.
# Time and memory come from benchmarks/latency_memory.py, measured on one device in one run.
COLUMNS = ("method", "steps", "FID", "CLIP", "precision", "recall", "F1", "density", "coverage", "images")
PRDC_KEYS = ("precision", "recall", "f1", "density", "coverage")


def table_rows(results: Sequence[SystemResult]) -> list[list[str]]:
    def fmt(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return [[r.name, r.steps, fmt(r.fid, 2), fmt(r.clip, 3), *(fmt(r.prdc.get(k), 3) for k in PRDC_KEYS), str(r.images)]
            for r in results]


def markdown(job: EvaluateJob, results: Sequence[SystemResult], num_prompts: int) -> str:
    ref = job.reference.images or job.reference.stats
    lines = [f"# Evaluation: {job.name}", "",
             f"Prompts: {job.prompts.path} ({job.prompts.format}, {num_prompts} used); "
             f"reference: {ref}. FID on Inception pool features; CLIP score as mean cosine (paper scale); "
             f"precision/recall/F1/density/coverage with k = {job.metrics.nearest_k}.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def write_tables(job: EvaluateJob, results: Sequence[SystemResult], num_prompts: int) -> dict[str, Path]:
    out = job.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    md, table = out / "results.md", out / "results.csv"
    md.write_text(markdown(job, results, num_prompts))
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(table_rows(results))
    return {"markdown": md, "csv": table}


def open_run(job: EvaluateJob) -> Run | None:
    """The evaluation's MLflow run when a tracking URI is set, opened before any work: a server that does not
    answer fails the job now (loopfree_platform.tracking), not after the images are made."""
    uri = job.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    return tracking.open_run(uri, job.tracking.experiment, job.name, {"loopfree.evaluate": job.name})


def log_results(run: Run, job: EvaluateJob, results: Sequence[SystemResult]) -> None:
    """Metrics named "<system>/<metric>", the prompts, reference and steps as params; the run ends."""
    points = []
    for r in results:
        values = {"fid": r.fid, "clip": r.clip, "images": r.images, **r.prdc}
        points += [(f"{_key(r.name)}/{k}", float(v), 0) for k, v in values.items() if v is not None]
    run.log_metrics(points)
    run.log_params({"prompts": job.prompts.path, "reference": job.reference.images or job.reference.stats,
                    **{f"{_key(r.name)}/steps": r.steps for r in results}})
    run.end()


def _key(name: str) -> str:
    """MLflow keys allow alphanumerics, _ - . / and spaces."""
    return "".join(c if c.isalnum() or c in "_-. " else "_" for c in name)


def write_similarity(rows: Sequence[StepSimilarity], out: Path, title: str) -> dict[str, Path]:
    """feature_similarity.csv and .png: encoder vs decoder cosine between adjacent sampling steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table, png = out / "feature_similarity.csv", out / "feature_similarity.png"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "timestep", "encoder_cosine", "decoder_cosine"])
        writer.writerows([r.step, r.timestep, f"{r.encoder_cosine:.6f}", f"{r.decoder_cosine:.6f}"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r.step for r in rows]
    ax.plot(steps, [r.encoder_cosine for r in rows], marker=".", label="encoder (mid block output)")
    ax.plot(steps, [r.decoder_cosine for r in rows], marker=".", label="decoder (last up block output)")
    ax.set(xlabel="sampling step i (compared with step i - 1)", ylabel="cosine similarity", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return {"csv": table, "png": png}

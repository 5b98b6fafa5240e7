"""Sweeps: one job file names a base distillation job and its variants; Ray Tune runs them (docs/sweeps.md).

A variant is the base job with dotted overrides (``method.fake_score_updates: 5``), from an explicit list,
a grid (every combination), or both, each run once per seed in ``seeds`` (the training seed,
``data.seed``). Every variant is validated as a whole distillation job when the sweep file is loaded,
before Ray starts. Each variant runs as one Ray Tune trial that drives its own Ray Train run (its own
MLflow run, a child of the sweep's parent run); trials run as concurrently as the cluster allows
(``max_concurrent`` caps them). The summary table (final and best ``eval/fid``, recall, alignment,
steps/s) is written to ``<storage.path>/<sweep name>/summary.{md,csv}`` and logged to the parent run.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import math
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from loopfree_platform import storage
from loopfree_platform.distill.callbacks import read_metrics
from loopfree_platform.distill.job import DistillJob, check_method, check_paths, check_submitted
from loopfree_platform.jobfile import NAME_PATTERN, JobError, Section, format_errors, overlapping, read_yaml, validate_file

COLUMNS = ("variant", "seed", "steps", "final_fid", "best_fid", "best_step", "recall", "coverage", "alignment", "steps_per_s")


class Variant(Section):
    name: str = Field(pattern=NAME_PATTERN)
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted keys of the base job, e.g. method.fake_score_lr")


class SweepJob(Section):
    name: str = Field(pattern=NAME_PATTERN, description="sweep name: the parent MLflow run, the prefix of every variant's run")
    base: str = Field(description="the base distillation job file (path relative to the working directory)")
    variants: list[Variant] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted key -> values; every combination runs")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    max_concurrent: int | None = Field(None, ge=1, description="at most this many trials at once (default: as resources allow)")
    cpus_per_trial: float = Field(0.25, gt=0, description="CPUs of a trial's own driver process (its workers ask for theirs)")

    @model_validator(mode="after")
    def _some_variant(self):
        if not self.variants and not self.grid:
            raise ValueError("a sweep needs variants, a grid, or both")
        if any(not values for values in self.grid.values()):
            raise ValueError("every grid key needs at least one value")
        names = [v.name for v in self.variants] + [n for n, _ in self._grid_variants()]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be distinct, got {names}")
        for name, overrides in self.all_variants():
            _refuse_overlaps(name, list(overrides))
        return self

    def _grid_variants(self) -> list[tuple[str, dict[str, Any]]]:
        if not self.grid:  # the product of no axes is one empty combination, not "no grid"
            return []
        keys = list(self.grid)
        combos = itertools.product(*(self.grid[k] for k in keys))
        return [("_".join(f"{k.split('.')[-1]}-{v}" for k, v in zip(keys, values)).replace("/", "-"), dict(zip(keys, values)))
                for values in combos]

    def all_variants(self) -> list[tuple[str, dict[str, Any]]]:
        return [(v.name, v.overrides) for v in self.variants] + self._grid_variants()


SWEEP_SETS = ("name", "data.seed", "tracking.registered_model")  # what `expand` sets in every run


def _refuse_overlaps(variant: str, keys: list[str]) -> None:
    """A key a variant names twice (``method`` and ``method.x``), or one the sweep sets itself, would be
    silently replaced: refused, naming both."""
    for i, key in enumerate(keys):
        if (other := overlapping(key, keys[:i])) is not None:
            raise ValueError(f"variant {variant!r}: {key} is named twice (also as {other})")
        if (other := overlapping(key, SWEEP_SETS)) is not None:
            raise ValueError(f"variant {variant!r}: {key}: the sweep sets {other} itself (seeds, run names, no registration)")


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the job dict with dotted keys set (``method.x`` creates ``method`` if needed)."""
    out = copy.deepcopy(base)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{dotted}: {part!r} is not a section")
        node[leaf] = value
    return out


def expand(sweep: SweepJob, base: dict[str, Any]) -> list[tuple[str, int, DistillJob]]:
    """(variant, seed, job) for every run of the sweep; an invalid variant names itself and the key."""
    runs = []
    for name, overrides in sweep.all_variants():
        for seed in sweep.seeds:
            data = apply_overrides(base, {**overrides, "data.seed": seed, "name": f"{sweep.name}-{name}-s{seed}"})
            data.setdefault("tracking", {})["registered_model"] = None  # variants are compared, not released
            try:
                job = DistillJob.model_validate(data)
                check_paths(job)
                check_method(job)
                check_submitted(job)
            except ValidationError as err:
                raise JobError(f"variant {name!r} (seed {seed}): {format_errors(err)}") from None
            except JobError as err:
                raise JobError(f"variant {name!r} (seed {seed}): {err}") from None
            runs.append((name, seed, job))
    return runs


def load_sweep(path: str | Path) -> tuple[SweepJob, list[tuple[str, int, DistillJob]]]:
    sweep = validate_file(path, SweepJob)
    if not Path(sweep.base).is_file():
        raise JobError(f"{path}: base: job file {sweep.base!r} does not exist")
    base = read_yaml(sweep.base)  # as strict as the sweep file; its errors name the base file
    try:
        return sweep, expand(sweep, base)
    except JobError as err:
        raise JobError(f"{path}: {err}") from None


def summary_row(variant: str, seed: int, job: DistillJob) -> dict[str, Any]:
    """One line of the table, from the run's metrics.jsonl."""
    try:
        rows = read_metrics(storage.join(job.run_dir(), "metrics.jsonl"), job.storage.endpoint_url)
    except FileNotFoundError:
        rows = []
    evals = [r for r in rows if "eval/fid" in r]
    best = min(evals, key=lambda r: r["eval/fid"]) if evals else {}
    final = evals[-1] if evals else {}
    trained = [r for r in rows if "samples_per_s" in r]
    rate = trained[-1]["samples_per_s"] / job.scaling.global_batch_size if trained else math.nan
    return {"variant": variant, "seed": seed, "steps": max((r["step"] for r in rows), default=0),
            "final_fid": final.get("eval/fid", math.nan), "best_fid": best.get("eval/fid", math.nan),
            "best_step": best.get("step", math.nan), "recall": final.get("eval/recall", math.nan),
            "coverage": final.get("eval/coverage", math.nan), "alignment": final.get("eval/alignment", math.nan),
            "steps_per_s": rate}


def tables(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """(markdown, csv) of the summary rows."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    md = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    md += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return "\n".join(md) + "\n", buf.getvalue()

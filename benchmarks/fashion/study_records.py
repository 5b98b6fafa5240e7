"""The study's run records, read and grouped: what every table, target line and plot of the report is computed from.

A record is `<run>.jsonl` (the validation curve: FID and PRDC against 1000 TRAINING images, one row per evaluation)
and `<run>.test.json` (the final row: 1000 generated images against the first 1000 TEST images). Run names:
`<recipe>-s<seed>` (600 updates, or 0), `<recipe>@<updates>-s<seed>`, `teacher<S>-g<G>-s0` (the teacher's S-step
sampler at guidance G), `k<K>ft-<recipe>...` (a K-step student initialised from a finished K = 4 run).
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

METRICS = ("fid", "precision", "recall", "f1", "density", "coverage", "alignment")
RUN_NAME = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")
TEACHER = re.compile(r"^teacher(?P<steps>\d+)-g(?P<guidance>[\d.]+)$")
TRANSFER = re.compile(r"^k(?P<k>\d+)ft-(?P<source>.+)$")
KINDS = ("teacher", "init", "tiue", "swiftbrush", "transfer")  # the final table's order


class RecordError(ValueError):
    """A record the report must not use (a reconstructed row, an unreadable name)."""


@dataclass
class Run:
    name: str
    group: str
    seed: int
    curve: list[dict]
    test: dict | None


@dataclass
class Group:
    """The runs of one recipe at one length (or one teacher sampler), by seed. Only runs with a test row count:
    their test rows are the final table's, and their last validation rows are what every choice is made on."""

    name: str
    kind: str
    updates: int
    runs: list[Run] = field(default_factory=list)
    k: int | None = None  # the student's decoder steps (TiUE); the teacher's sampler steps
    guidance: float | None = None  # teacher rows only
    regression: bool = False  # its recipe has DMD's regression loss (regression_weight > 0)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def test(self, metric: str) -> float:
        return statistics.fmean(r.test[metric] for r in self.runs)

    def val(self, metric: str) -> float:
        return statistics.fmean(r.curve[-1][metric] for r in self.runs)

    def per_seed(self, metric: str) -> list[float]:
        return [r.test[metric] for r in self.runs]

    @property
    def uses_training_images(self) -> bool | None:
        """None for the teacher (the reference, not a distillation). Records written before the key existed come
        from recipes without any option that reads training images (docs/method.md)."""
        if self.kind == "teacher":
            return None
        return any(r.test.get("uses_training_images", False) for r in self.runs)

    @property
    def pair_noise_is_test_noise(self) -> bool:
        """A regression recipe run before records named their first pair seed: its pairs came from seeds 2**40 + i,
        whose noise is test seed i's (torch's CPU generator keeps a seed's low 32 bits; docs/method.md)."""
        return self.regression and any("first_pair_seed" not in r.test for r in self.runs)


def _refuse_reconstructed(path: Path, rows: list[dict]) -> None:
    if any("reconstructed" in row for row in rows):
        raise RecordError(f"{path} is marked 'reconstructed' (copied from an old table, not measured): no row of "
                          "the report may be reconstructed; re-measure the run and replace its record")


def _read(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = [json.loads(path.read_text())]
    _refuse_reconstructed(path, rows)
    return rows


def load_runs(records: Path) -> list[Run]:
    """Every run with at least one validation row, by name. Refuses the whole set if any record (curve or test row)
    is reconstructed, naming the file: a report silently without that row would read as complete."""
    names = sorted({p.name.removesuffix(".test.json").removesuffix(".jsonl") for p in records.iterdir()
                    if p.name.endswith((".jsonl", ".test.json"))})
    runs = []
    for name in names:
        curve_path, test_path = records / f"{name}.jsonl", records / f"{name}.test.json"
        curve = _read(curve_path) if curve_path.is_file() else []
        test = _read(test_path)[0] if test_path.is_file() else None
        match = RUN_NAME.match(name)
        if match is None:
            raise RecordError(f"{records / name}: a run name ends with -s<seed>")
        if curve:  # an empty curve is a run that started over and has not evaluated yet
            runs.append(Run(name, match["group"], int(match["seed"]), curve, test))
    return runs


def _updates(run: Run) -> int:
    return run.test["steps"] if run.test else run.curve[-1]["step"]


def _describe(group: str, run: Run, recipes: dict, base: dict) -> dict:
    """kind, K and guidance of a group, from its record where it says, else from its name and recipe."""
    if teacher := TEACHER.match(group):
        return {"kind": "teacher", "k": int(teacher["steps"]), "guidance": float(teacher["guidance"])}
    if group == "init":
        return {"kind": "init", "k": base["num_steps"]}
    if transfer := TRANSFER.match(group):
        return {"kind": "transfer", "k": int(transfer["k"])}
    recipe = group.split("@")[0]
    config = {**base, **recipes.get(recipe, {})}
    k = run.test.get("num_steps", config["num_steps"]) if run.test else config["num_steps"]
    return {"kind": "swiftbrush" if group.startswith("sb-") else "tiue", "k": k,
            "regression": config.get("regression_weight", 0) > 0}


def group_runs(runs: list[Run], recipes: dict, base: dict) -> dict[str, Group]:
    """Runs with a test row, by group name (the run name without its seed), in the final table's order."""
    groups: dict[str, Group] = {}
    for run in runs:
        if run.test is None:
            continue
        if run.group not in groups:
            groups[run.group] = Group(run.group, updates=_updates(run), **_describe(run.group, run, recipes, base))
        groups[run.group].runs.append(run)
    order = sorted(groups.values(), key=lambda g: (KINDS.index(g.kind), g.k or 0, g.guidance or 0, g.name))
    return {g.name: g for g in order}


def transfer_source(group: Group, run: Run) -> str:
    """The K = 4 run a K-transfer run was initialised from: its record's init_from, else its name
    (`k<K>ft-<source group>[-with-<recipe>][@<fine-tune updates>]-s<seed>`, the same seed as its source)."""
    if run.test and run.test.get("init_from"):
        return run.test["init_from"]
    source = TRANSFER.match(group.name)["source"].removesuffix(f"@{group.updates}").split("-with-")[0]
    return f"{source}-s{run.seed}"

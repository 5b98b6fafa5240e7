"""Reading the step-execution log (loopfree_platform.distill.steplog) in the fault tests: which attempt ran
which steps, from which checkpoint, and which steps ran more than once."""

from collections import Counter

import pytest

RESULTS = ("loss_student", "loss_fake_score")  # rank 0's own, as the log records them


def attempts(executions: list[dict]) -> dict[int, tuple[int, list[int]]]:
    """attempt -> (the step of the checkpoint it resumed from, 0 for a fresh start; the steps it ran, in order)."""
    out: dict[int, tuple[int, list[int]]] = {}
    for row in executions:
        out.setdefault(row["attempt"], (row["resumed_at"], []))[1].append(row["step"])
    return out


def ran_again(executions: list[dict]) -> list[int]:
    """The steps that ran more than once, each named once, in order."""
    return sorted(step for step, n in Counter(r["step"] for r in executions).items() if n > 1)


def same_results(executions: list[dict]) -> None:
    """Every execution of a step had the results of its first one: same state, data and noise."""
    first: dict[int, dict] = {}
    for row in executions:
        ref = first.setdefault(row["step"], row)
        for key in RESULTS:
            assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), (key, row, ref)

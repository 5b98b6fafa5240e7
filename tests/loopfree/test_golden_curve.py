"""Golden curves: 10 alternating iterations on the tiny preset must reproduce the committed numbers.

Refactors that change the maths (losses, schedule, turn order, randomness) change these curves. After
an intended change, regenerate with ``LOOPFREE_UPDATE_GOLDEN=1 pytest tests/loopfree/test_golden_curve.py``
and say why in the commit. The student learning rate is raised from 1e-6 to 1e-4 so that 10 steps move
the student enough for the curve to see the optimizer.
"""

import os
from pathlib import Path

import pytest
import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.presets import tiny
from loopfree.training import cycle_batches, distill_local

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "losses"
KEYS = ("loss_vsd", "loss_kl", "loss_fake_score", "vsd_g_norm", "grad_norm_student", "grad_norm_fake_score")
PROMPTS = ["a photo of a cat", "a red sneaker", "a bowl of fruit", "a lighthouse at dusk"]


def curve(**overrides) -> list[list[float]]:
    components = tiny().build(seed=0)
    distiller = Distiller(components, DistillConfig(student_lr=1e-4, **overrides))
    history = distill_local(distiller, cycle_batches(distiller.tokenize(PROMPTS), 2), iterations=10, seed=0)
    return [[row[k] for k in KEYS] for row in history]


@pytest.mark.integration  # slow: 10 distillation iterations per curve
@pytest.mark.parametrize("name, overrides", [("tiue_k4", {}), ("one_step", {"mode": "one_step"})])
def test_golden_curve(name, overrides):
    got = curve(**overrides)
    path = ASSETS / f"{name}.txt"
    if os.environ.get("LOOPFREE_UPDATE_GOLDEN"):
        path.write_text("# " + " ".join(KEYS) + "\n" + "".join(" ".join(f"{v:.9e}" for v in row) + "\n" for row in got))
    rows = [line.split() for line in path.read_text().splitlines() if not line.startswith("#")]
    expected = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), expected, rtol=1e-5, atol=1e-5)

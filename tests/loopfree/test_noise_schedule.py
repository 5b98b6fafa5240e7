"""The annealed noise schedule (vsd_t_max_from_step): the whole noise ranges before the given update, the configured
maxima from it on, for VSD and the fake score alike (docs/method.md)."""

import copy

import pytest

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.rng import IterationRNG
from loopfree.training import local_engines, train_iteration

LOW = dict(lora_rank=4, lora_alpha=8.0, vsd_t_max=100, fake_score_t_max=150)


class RangeSpy(IterationRNG):
    """An IterationRNG that notes the (low, high) of every integer draw: the timestep ranges a turn samples from."""

    def __init__(self, *args):
        super().__init__(*args)
        self.ranges: list[tuple[int, int]] = []

    def randint(self, low, high_inclusive, device="cpu"):
        self.ranges.append((low, high_inclusive))
        return super().randint(low, high_inclusive, device)


def ranges_of_iteration(tiny_components, step: int, **overrides) -> list[tuple[int, int]]:
    d = Distiller(copy.deepcopy(tiny_components), DistillConfig(**{**LOW, **overrides}))
    rng = RangeSpy(0, step, 0, 2)
    train_iteration(d, *local_engines(d), {"input_ids": d.tokenize(["a red sneaker", "a bag"])}, rng, step)
    return rng.ranges


@pytest.mark.parametrize("step, expected", [
    (2, [(20, 980), (0, 999), (0, 999)]),  # before update 3: VSD's and the fake score's whole ranges
    (3, [(20, 100), (0, 150), (0, 150)]),  # from it on: the configured maxima
])
def test_the_whole_ranges_before_the_switch_and_the_configured_maxima_from_it(tiny_components, step, expected):
    # one student turn, then two fake-score updates
    assert ranges_of_iteration(tiny_components, step, vsd_t_max_from_step=3, fake_score_updates=2) == expected


def test_without_the_schedule_the_configured_maxima_hold_from_the_first_update(tiny_components):
    assert ranges_of_iteration(tiny_components, 0) == [(20, 100), (0, 150)]


@pytest.mark.parametrize("overrides, words", [
    ({"vsd_t_max_from_step": -1}, "vsd_t_max_from_step must be an integer >= 0"),
    ({"vsd_t_max_from_step": 1.5}, "vsd_t_max_from_step must be an integer >= 0"),
    ({"vsd_t_max_from_step": 300, "vsd_t_max": 980, "fake_score_t_max": 999}, "vsd_t_max_from_step 300 changes nothing"),
])
def test_a_schedule_that_cannot_work_is_refused_naming_the_field(overrides, words):
    with pytest.raises(ValueError, match=words):
        DistillConfig(**{**LOW, **overrides})

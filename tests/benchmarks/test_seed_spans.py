"""The study's noise spans never meet: the test protocol's seeds, the validation protocol's, those of the recall-spread
and refine-ceiling scripts, the pair-noise check's unseen seeds and the regression pairs' seeds are pairwise
disjoint modulo 2**32 (torch's CPU generator keeps a seed's low 32 bits, so seeds equal there draw the same noise).
Each span is taken from the code that uses it, at the largest size it is run with."""

import itertools

import pytest

from benchmarks.fashion import study  # not its test_set by name: pytest would collect it
from benchmarks.fashion.pair_noise_check import UNSEEN_FROM
from benchmarks.fashion.recall_spread import IMAGES, SEED0
from benchmarks.fashion.refine_ceiling import NOISE_SEED0
from loopfree.pairs import MAX_PAIRS, pair_seeds


def low_bits_span(seeds) -> range:
    """Consecutive seeds as the range of their low 32 bits (they must not wrap past 2**32)."""
    first, last = seeds[0] % 2**32, seeds[-1] % 2**32
    assert last - first == seeds[-1] - seeds[0], "the span wraps in the low 32 bits"
    return range(first, last + 1)


def overlap(x: range, y: range) -> bool:
    return not (x.stop <= y.start or y.stop <= x.start)


def consecutive(seeds: tuple[int, ...]) -> tuple[int, ...]:
    assert seeds == tuple(range(seeds[0], seeds[0] + len(seeds))), "not one run of consecutive seeds"
    return seeds


SPANS = {
    "test (1000 images)": consecutive(study.test_set(1000).seeds),
    "validation (the reference's 1000)": consecutive(study.validation_set(1000).seeds),
    "recall spread and class recall": (spread := consecutive(study.validation_set(IMAGES, SEED0).seeds)),
    "refine ceiling's fresh re-noising": tuple(NOISE_SEED0 + s for s in spread),
    "pair-noise check's unseen noise": tuple(range(UNSEEN_FROM, UNSEEN_FROM + 1000)),
    # pair seeds are one linear numbering (loopfree.pairs.pair_seeds): the first and the last pair bound them all
    "regression pairs (all of them)": (pair_seeds(0, 1)[0], pair_seeds(MAX_PAIRS - 1, 1)[0]),
}


@pytest.mark.parametrize("a, b", list(itertools.combinations(SPANS, 2)))
def test_two_noise_spans_share_no_seed_in_the_low_32_bits(a, b):
    x, y = low_bits_span(SPANS[a]), low_bits_span(SPANS[b])
    assert not overlap(x, y), f"{a} {x} and {b} {y} overlap"


def test_the_check_sees_the_collision_that_seeds_2_40_plus_i_made():
    # the regression pairs' old seeds, 2**40 + i, drew test image i's noise (docs/method.md)
    assert overlap(low_bits_span((2**40, 2**40 + 1023)), low_bits_span(SPANS["test (1000 images)"]))

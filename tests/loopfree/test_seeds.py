"""Image seeds (loopfree.seeds): the range torch's CPU generator tells apart, and the span a job's images use."""

from loopfree.seeds import MAX_SEED, is_seed, span_error


def test_is_seed_takes_ints_from_0_to_2_to_the_32_minus_1_and_nothing_else():
    assert MAX_SEED == 4294967295
    assert all(is_seed(s) for s in (0, 1, 2**31, 2**32 - 1))
    assert not any(is_seed(s) for s in (-1, 2**32, 2**40, True, 1.0, "1", None))


def test_span_error_names_the_key_and_the_last_seed_only_when_it_passes_2_to_the_32():
    assert span_error("seed", 2**32 - 3, 3) is None  # seeds 4294967293..4294967295
    assert span_error("seed", 0, 1) is None
    assert span_error("evaluation.seed", 2**32 - 3, 4) == \
        "evaluation.seed: images use seeds 4294967293 to 4294967296, which must stay in [0, 2**32)"

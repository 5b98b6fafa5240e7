"""Image seeds: integers in [0, 2**32).

torch's CPU generator keeps only a seed's low 32 bits (seeds s and s + 2**32 draw the same noise), so a larger
seed would silently repeat an image: every entry that takes one (the pipeline, the HTTP endpoint, batch
generation, the jobs' seed fields) refuses it instead. No torch here, so job validation can use it.
"""

MAX_SEED = 2**32 - 1
SEED_RANGE = "[0, 2**32)"


def is_seed(value) -> bool:
    """An int (a bool is not a seed) in [0, MAX_SEED]."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED

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


def span_error(key: str, first: int, count: int) -> str | None:
    """None if the seeds first, first + 1, ..., first + count - 1 (image i's seed is first + i) are all seeds; else
    what is wrong, naming the key that sets `first`: checked where the count is known, so a job is refused at load
    instead of when its last images are drawn."""
    last = first + count - 1
    return None if last <= MAX_SEED else f"{key}: images use seeds {first} to {last}, which must stay in {SEED_RANGE}"

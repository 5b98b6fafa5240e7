"""Every number of the method's config refuses NaN, infinity and a string with an error that names the field.

A NaN guidance or weight passes every `<`/`>` check (all comparisons with NaN are false) and would reach the
losses, where the VSD gradient's NaNs are replaced by 0 (docs/method.md): the run would train on nothing, silently.
The fields come from DistillConfig's own type hints, so a new float field is checked without editing this file."""

import math
import typing

import pytest

from loopfree.config import ConfigError, DistillConfig

HINTS = typing.get_type_hints(DistillConfig)
FLOAT_FIELDS = sorted(name for name, hint in HINTS.items() if hint is float or hint == (float | None))
INT_FIELDS = sorted(name for name, hint in HINTS.items() if hint is int)


def test_the_field_lists_are_not_empty_and_hold_the_knobs_a_sweep_turns():
    assert {"guidance_scale", "lambda_kl", "student_lr", "ema_decay", "fake_guidance_scale"} <= set(FLOAT_FIELDS)
    assert {"num_steps", "vsd_t_max", "fake_score_updates"} <= set(INT_FIELDS)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "2.0"], ids=["nan", "inf", "-inf", "string"])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_a_float_field_refuses_a_value_that_is_not_a_finite_number_naming_the_field(name, value):
    with pytest.raises(ConfigError) as err:
        DistillConfig(**{name: value})
    assert [p for p in err.value.problems if p.startswith(name)], err.value.problems


@pytest.mark.parametrize("value", [1.5, "3", True, None], ids=["float", "string", "bool", "none"])
@pytest.mark.parametrize("name", INT_FIELDS)
def test_an_int_field_refuses_a_value_that_is_not_an_integer_naming_the_field(name, value):
    with pytest.raises(ConfigError) as err:
        DistillConfig(**{name: value})
    # a noise range's two ends are reported together ("vsd_t_min/vsd_t_max ..."), under the first one's name
    assert [p for p in err.value.problems if name in p.split(" ")[0]], err.value.problems


def test_finite_values_of_every_float_field_at_their_defaults_are_accepted():
    DistillConfig(**{name: getattr(DistillConfig(), name) for name in FLOAT_FIELDS})

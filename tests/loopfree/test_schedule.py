import pytest
import torch
from diffusers import DDIMScheduler

from loopfree.presets import SD_SCHEDULER
from loopfree.schedule import check_timesteps, ddim_plan, ddim_timesteps, one_step_plan, plan_for


@pytest.fixture(scope="module")
def alphas():
    return DDIMScheduler(**SD_SCHEDULER).alphas_cumprod


# The reference values table of docs/method.md. The trailing row is printed to 2 decimals, so its tolerance is half the
# last printed digit on top of the 1e-3 asked for.
@pytest.mark.parametrize(
    "spacing, timesteps, S, E, tol",
    [
        ("leading", [751, 501, 251, 1], 4.2346, [-2.4919, -0.9249, -0.6568, -0.0121], 1e-3),
        ("trailing", [999, 749, 499, 249], 14.64, [-10.53, -2.47, -0.92, -0.66], 1e-3 + 5e-3),
    ],
)
def test_closed_form_S_and_E_match_the_reference_table_for_leading_and_trailing_spacing(alphas, spacing, timesteps, S, E, tol):
    plan = ddim_plan(alphas, 4, spacing)
    assert list(plan.timesteps) == timesteps
    assert plan.S == pytest.approx(S, abs=tol)
    assert plan.E == pytest.approx(E, abs=tol)


def test_spec_alphas(alphas):
    expected = {999: 0.00466, 751: 0.0557, 501: 0.2750, 251: 0.6722, 1: 0.99830, 0: 0.99915}
    for t, a in expected.items():
        assert float(alphas[t]) == pytest.approx(a, abs=6e-5)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("K", [1, 2, 3, 4, 6, 8])
def test_timesteps_match_diffusers(spacing, K):
    scheduler = DDIMScheduler(**dict(SD_SCHEDULER, timestep_spacing=spacing))
    scheduler.set_timesteps(K)
    assert ddim_timesteps(K, spacing) == scheduler.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("K", [1, 2, 4, 6, 8])
def test_closed_form_equals_ddim_scheduler_steps(alphas, spacing, K):
    """Running DDIMScheduler.step K times with fixed eps_k equals S*z + sum E_k eps_k."""
    g = torch.Generator().manual_seed(K)
    z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(K, 2, 4, 8, 8, generator=g, dtype=torch.float64)
    scheduler = DDIMScheduler(**dict(SD_SCHEDULER, timestep_spacing=spacing))
    scheduler.set_timesteps(K)
    x = z
    for k, t in enumerate(scheduler.timesteps):
        x = scheduler.step(eps[k], t, x, eta=0.0).prev_sample
    plan = ddim_plan(alphas, K, spacing)
    torch.testing.assert_close(plan.apply(z.float(), eps.float()), x.float(), rtol=1e-5, atol=1e-4)


def test_explicit_timesteps_step_to_the_next_listed(alphas):
    plan = ddim_plan(alphas, 3, [900, 500, 100])
    assert plan.alpha_bar_prev == pytest.approx([float(alphas[500]), float(alphas[100]), float(alphas[0])])


@pytest.mark.parametrize("timestep", [None, 751, 501])
def test_one_step_plan_is_x0_inversion_at_its_timestep(alphas, timestep):
    """SwiftBrush's map at t = 999 by default, or at the timestep a job names (method.timesteps: [t])."""
    plan = one_step_plan(alphas) if timestep is None else plan_for(alphas, "one_step", 1, "custom", [timestep])
    a = float(alphas[timestep or 999])
    assert tuple(plan.timesteps) == (timestep or 999,)
    z, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 1, 4, 2, 2)
    torch.testing.assert_close(plan.apply(z, eps), (z - (1 - a) ** 0.5 * eps[0]) / a**0.5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda a: ddim_plan(a, 0), "num_steps"),
        (lambda a: ddim_plan(a, 2.5), "num_steps"),
        (lambda a: ddim_plan(a, 4, "linspace"), "spacing"),
        (lambda a: ddim_plan(a, 2, [500, 700]), "strictly decreasing"),
        (lambda a: ddim_plan(a, 2, [1000, 10]), r"\[0, 1000\)"),
        (lambda a: ddim_plan(a, 2, [500, -1]), r"\[0, 1000\)"),
        (lambda a: ddim_plan(a, 3, [500, 100]), "num_steps"),
    ],
)
def test_bad_num_steps_spacing_or_timesteps_raise_a_value_error_naming_the_problem(alphas, call, match):
    with pytest.raises(ValueError, match=match):
        call(alphas)


def test_apply_checks_shapes(alphas):
    with pytest.raises(ValueError, match="eps must have shape"):
        ddim_plan(alphas, 4).apply(torch.zeros(1, 4, 2, 2), torch.zeros(3, 1, 4, 2, 2))


def test_check_timesteps_rejects_empty():
    with pytest.raises(ValueError, match="at least one"):
        check_timesteps([])

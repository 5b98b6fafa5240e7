"""SiD's student loss (docs/method.md, "Keeping the teacher's diversity"): the loss against hand-computed values
and against VSD's gradient when both score networks are held fixed, its refusals, and in the Distiller: the
gradient goes through both networks, reaches the student only, and vanishes when fake score and teacher agree."""

import pytest
import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.losses import sid_loss, vsd_loss, x0_from_eps
from loopfree.rng import IterationRNG
from loopfree.training import distill_local
from tests.loopfree.test_stability_options import batch, make  # the small Distiller on the tiny model, two prompts


def student_grads(d: Distiller) -> list[torch.Tensor]:
    d.student_turn(batch(d), IterationRNG(0, 0, 0, 2)).loss.backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in d.student_parameters()]


@pytest.mark.parametrize("weighting, w", [("x0_error", 2.0), ("one_minus_alpha_bar", 0.48)])
def test_sid_loss_and_its_gradients_match_a_hand_computed_case(weighting, w):
    x0 = torch.tensor([[[[1.0]]]], requires_grad=True)
    x0_teacher = torch.tensor([[[[0.5]]]], requires_grad=True)
    x0_fake = torch.tensor([[[[0.25]]]], requires_grad=True)
    # w: 1 / |x0 - x0_teacher| = 2, or sqrt(a (1 - a)) = sqrt(0.36 * 0.64) = 0.48; d = T - F = 0.25, alpha = 1.2
    loss, logs = sid_loss(x0, x0_teacher, x0_fake, torch.tensor([0.36]), weighting, alpha=1.2)
    assert loss.item() == pytest.approx(w * 0.25 * ((0.5 - 1.0) - 1.2 * 0.25))  # w d ((T - x) - alpha d)
    loss.backward()
    assert x0.grad.item() == pytest.approx(-w * 0.25)  # -w d: w carries no gradient
    assert x0_teacher.grad.item() == pytest.approx(w * ((0.5 - 1.0) - 1.2 * 0.25 + 0.25 * (1 - 1.2)))
    assert x0_fake.grad.item() == pytest.approx(w * (-(0.5 - 1.0) + 2 * 1.2 * 0.25))
    assert logs["sid_nonfinite"].item() == 0


@pytest.mark.parametrize("weighting", ["x0_error", "one_minus_alpha_bar"])
def test_sid_gradient_with_both_score_networks_held_fixed_is_vsds_gradient(weighting):
    """What SiD adds to VSD is the gradient through the networks (and alpha, which then drops out)."""
    g = torch.Generator().manual_seed(0)
    x_t, eps_teacher, eps_fake = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    alpha_bar_t = torch.tensor([0.05, 0.5, 0.95])
    x0_sid = torch.randn(3, 2, 4, 4, generator=g).requires_grad_(True)
    x0_vsd = x0_sid.detach().clone().requires_grad_(True)
    x0_teacher, x0_fake = x0_from_eps(x_t, eps_teacher, alpha_bar_t), x0_from_eps(x_t, eps_fake, alpha_bar_t)
    sid_loss(x0_sid, x0_teacher, x0_fake, alpha_bar_t, weighting, alpha=1.2)[0].backward()
    vsd_loss(x0_vsd, x_t, eps_teacher, eps_fake, alpha_bar_t, weighting)[0].backward()
    torch.testing.assert_close(x0_sid.grad, x0_vsd.grad, rtol=1e-5, atol=1e-8)


def test_x0_from_eps_inverts_add_noise():
    x0, eps, a = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3), torch.tensor([0.2, 0.9])
    x_t = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(x0_from_eps(x_t, eps, a), x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("values, key", [({"student_loss": "fisher"}, "student_loss"),
                                         ({"student_loss": "sid", "divergence": "js"}, "student_loss sid"),
                                         ({"sid_alpha": float("nan")}, "sid_alpha"), ({"sid_alpha": "1.2"}, "sid_alpha")])
def test_bad_sid_settings_are_refused_naming_the_key(values, key):
    with pytest.raises(ValueError, match=key):
        DistillConfig(**values)


@pytest.mark.parametrize("fake_score", ["lora", "full"])
def test_sid_gradient_reaches_the_student_and_leaves_none_on_the_score_networks(tiny_components, fake_score):
    d = make(tiny_components, fake_score=fake_score, student_loss="sid", guidance_scale=2.0, fake_guidance_scale=1.0)
    grads = student_grads(d)
    assert any(float(g.abs().max()) > 0 for g in grads)
    fake = d.fake_score_parameters()
    assert fake and all(p.requires_grad for p in fake)  # unfrozen again after the turn
    assert all(p.grad is None for p in d.unet.parameters()) and all(p.grad is None for p in fake)


def test_sid_gradient_vanishes_when_the_fake_score_equals_the_teacher(tiny_components):
    """At initialisation the full-copy fake score is the teacher, so with equal guidance x0_teacher == x0_fake for
    every x_t: the loss and its gradient through both networks are exactly 0."""
    d = make(tiny_components, fake_score="full", student_loss="sid", guidance_scale=2.0)
    assert all(float(g.abs().max()) == 0.0 for g in student_grads(d))


def test_sid_differentiates_through_both_score_networks(tiny_components):
    """Held fixed, the networks would give VSD's gradient exactly (the test above on the loss); the Distiller's SiD
    gradient at the same draws must differ from its VSD gradient."""
    common = dict(fake_score="full", guidance_scale=2.0, fake_guidance_scale=1.0, vsd_weighting="x0_error")
    sid = torch.cat([g.flatten() for g in student_grads(make(tiny_components, student_loss="sid", **common))])
    vsd = torch.cat([g.flatten() for g in student_grads(make(tiny_components, **common))])
    assert float(vsd.norm()) > 0 and float((sid - vsd).norm()) > 0.01 * float(vsd.norm())


@pytest.mark.integration  # slow: distillation iterations
def test_sid_training_updates_both_networks_with_finite_losses(tiny_components):
    d = make(tiny_components, fake_score="full", student_loss="sid", guidance_scale=2.0, fake_guidance_scale=1.0,
             student_lr=1e-3)
    student0 = [p.detach().clone() for p in d.student_parameters()]
    fake0 = [p.detach().clone() for p in d.fake_score_parameters()]
    logs = distill_local(d, [batch(d)] * 2, 2)
    assert any(not torch.equal(a, b) for a, b in zip(student0, d.student_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(fake0, d.fake_score_parameters()))
    assert all(torch.isfinite(torch.as_tensor(row["loss_sid"])) for row in logs)

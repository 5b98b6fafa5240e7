"""DMD2's GAN term (docs/method.md, "Keeping the teacher's diversity"): the losses, what trains on what, and that
the option off changes nothing."""

import copy
import math

import pytest
import torch
from diffusers import UNet2DConditionModel

import loopfree.distiller as distiller_module
from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.losses import gan_discriminator_loss, gan_generator_loss
from loopfree.rng import IterationRNG
from loopfree.training import LocalEngine, local_engines, train_iteration

PROMPTS = ["a photo of a cat", "a red sneaker"]
SMALL = dict(lora_rank=4, lora_alpha=8.0, lambda_kl=0.0, gan_head_channels=16)


def make(tiny_components, **overrides) -> Distiller:
    return Distiller(copy.deepcopy(tiny_components), DistillConfig(**{**SMALL, **overrides}))


def batch(d: Distiller) -> dict:
    return {"input_ids": d.tokenize(PROMPTS)}


def test_gan_losses_are_the_non_saturating_softplus_losses_of_a_hand_computed_case():
    real, fake = torch.tensor([0.0, 2.0]), torch.tensor([0.0, -1.0], requires_grad=True)
    loss_d, logs = gan_discriminator_loss(real, fake.detach())
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert loss_d.item() == pytest.approx((softplus(0) + softplus(-2)) / 2 + (softplus(0) + softplus(-1)) / 2)
    assert logs["disc_accuracy"].item() == pytest.approx(2 / 4)  # real 2.0 and fake -1.0 right; the two zeros not
    loss_g, g_logs = gan_generator_loss(fake, weight=0.5)
    assert loss_g.item() == pytest.approx(0.5 * (softplus(0) + softplus(1)) / 2)
    loss_g.backward()  # d/dl softplus(-l) = -sigmoid(-l): the generator pushes its logits up
    torch.testing.assert_close(fake.grad, -0.5 * torch.sigmoid(-fake.detach()) / 2)
    assert g_logs["loss_gan"].item() == pytest.approx(loss_g.item())


@pytest.mark.parametrize("bad, key", [(dict(gan_weight=-0.01), "gan_weight"), (dict(gan_weight="0.01"), "gan_weight"),
                                      (dict(gan_disc_weight=-1.0), "gan_disc_weight"),
                                      (dict(gan_weight=0.01, gan_disc_weight=0.0), "gan_disc_weight"),
                                      (dict(gan_head_channels=0), "gan_head_channels")])
def test_bad_gan_settings_are_refused_naming_the_key(bad, key):
    with pytest.raises(ValueError, match=f"invalid DistillConfig: {key}"):
        DistillConfig(**bad)


def test_gan_is_off_by_default_with_plain_defaults():
    config = DistillConfig()
    assert (config.gan_weight, config.gan_disc_weight, config.gan_head_channels) == (0.0, 0.01, 64)


def test_gan_needs_a_fake_score_with_a_mid_block_and_real_images_of_the_students_shape(tiny_components):
    no_mid = copy.deepcopy(tiny_components)
    no_mid.unet = UNet2DConditionModel.from_config(no_mid.unet.config, mid_block_type=None)
    with pytest.raises(ValueError, match="gan_weight"):
        Distiller(no_mid, DistillConfig(**SMALL, gan_weight=0.01))
    d = make(tiny_components, gan_weight=0.01)
    with pytest.raises(ValueError, match="real images hold latents"):
        d.set_real_images(torch.randn(3, 4, 4, 4))
    turn = d.student_turn(batch(d), IterationRNG(0, 0, 0, 2))
    with pytest.raises(RuntimeError, match="set_real_images"):
        d.fake_score_turn(turn.x0.detach(), batch(d), IterationRNG(0, 0, 0, 2))


def test_the_generator_term_trains_the_student_only_and_the_discriminator_loss_never_reaches_it(tiny_components):
    grads = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        d = make(tiny_components, fake_score="full", gan_weight=weight)
        d.set_real_images(torch.randn(5, 4, 8, 8))
        turn = d.student_turn(batch(d), IterationRNG(0, 0, 0, 2))
        turn.loss.backward()
        judge = d.fake_score_parameters() + d.discriminator_parameters()
        assert judge and all(p.grad is None for p in judge)  # nothing leaks into the fake-score step
        assert all(p.requires_grad for p in judge)  # frozen for the generator term only
        grads[weight] = torch.cat([p.grad.flatten() for p in d.student_parameters() if p.grad is not None])
        if weight:
            assert turn.logs["loss_gan"] > 0
            x0 = turn.x0.detach().requires_grad_(True)
            loss, logs = d.fake_score_turn(x0, batch(d), IterationRNG(0, 0, 0, 2))
            d.student.zero_grad(set_to_none=True)
            loss.backward()
            assert x0.grad is None and all(p.grad is None for p in d.student_parameters())
            assert all(p.grad is not None for p in d.discriminator_parameters()) and "loss_disc" in logs
    assert not torch.allclose(grads[0.0], grads[1.0])  # the generator term's gradient reached the student


def test_the_discriminator_learns_to_tell_real_latents_from_the_students(tiny_components):
    torch.manual_seed(0)
    d = make(tiny_components, fake_score="full", gan_weight=0.01, gan_disc_weight=1.0, fake_score_t_max=100)
    d.set_real_images(torch.randn(16, 4, 8, 8) * 0.3 + 1.5)  # real latents far from the student's samples
    with torch.no_grad():
        x0 = d.student_turn(batch(d), IterationRNG(0, 0, 0, 2)).x0
    engine = LocalEngine(d.fake_score_parameters() + d.discriminator_parameters(), 1e-2, (0.9, 0.999), d.config)
    losses = []
    for step in range(25):
        loss, logs = d.fake_score_turn(x0, batch(d), IterationRNG(1, step, 0, 2))
        engine.backward(loss)
        engine.step()
        losses.append(float(logs["loss_disc"]))
    assert losses[0] == pytest.approx(2 * math.log(2), abs=0.3)  # an untrained head: chance
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5  # measured: 1.38 -> 1.13


def test_gan_weight_zero_never_enters_the_gan_code_and_leaves_every_loss_unchanged(tiny_components, monkeypatch):
    runs = {}
    for name, overrides in (("default", {}), ("zero", dict(gan_weight=0.0, gan_disc_weight=0.5, gan_head_channels=8))):
        torch.manual_seed(0)
        d = make(tiny_components, **overrides)
        assert d.discriminator is None and not d.discriminator_parameters()
        if name == "zero":
            d.set_real_images(torch.randn(4, 4, 8, 8))
            for fn in ("gan_generator_loss", "gan_discriminator_loss", "bottleneck"):
                monkeypatch.setattr(distiller_module, fn, lambda *a, **k: pytest.fail("the GAN code ran"))
        engines = local_engines(d)
        runs[name] = [train_iteration(d, *engines, batch(d), IterationRNG(0, s, 0, 2), s) for s in range(2)]
    assert runs["default"] == runs["zero"]  # identical keys and bit-identical losses
    assert not any(k in runs["zero"][0] for k in ("loss_gan", "loss_disc"))


@pytest.mark.integration  # slow: distillation iterations
def test_a_gan_run_logs_both_terms_and_trains_the_head_with_the_fake_score(tiny_components):
    torch.manual_seed(0)
    d = make(tiny_components, gan_weight=0.01)  # the paper's LoRA fake score: the head trains beside the adapter
    d.set_real_images(torch.randn(8, 4, 8, 8))
    head0 = [p.detach().clone() for p in d.discriminator_parameters()]
    engines = local_engines(d)
    logs = [train_iteration(d, *engines, batch(d), IterationRNG(0, s, 0, 2), s) for s in range(3)]
    assert all(math.isfinite(row["loss_gan"]) and math.isfinite(row["loss_disc"]) for row in logs)
    assert not all(torch.equal(a, b) for a, b in zip(head0, d.discriminator_parameters()))

"""f-distill's f-divergence weights (docs/method.md, "Keeping the teacher's diversity"): the weights against
their closed forms, that they scale each sample's VSD gradient, and that the option is wired and validated."""

import copy
import math

import pytest
import torch

from loopfree.config import ConfigError, DistillConfig
from loopfree.distiller import Distiller
from loopfree.losses import f_divergence_weights, vsd_loss
from loopfree.rng import IterationRNG
from loopfree.training import local_engines, train_iteration

PROMPTS = ["a photo of a cat", "a red sneaker"]
SMALL = dict(lora_rank=4, lora_alpha=8.0, lambda_kl=0.0, gan_head_channels=16)


def test_the_weights_are_h_of_the_density_ratio_exp_logit_divided_by_their_batch_mean():
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])  # r = 1, 3, 1/3
    fkl = [1.0, 3.0, 1 / 3]  # h(r) = r
    js = [1 / 2, 3 / 4, 1 / 4]  # h(r) = r / (1 + r)
    for name, h in (("forward_kl", fkl), ("js", js)):
        expected = torch.tensor(h) / (sum(h) / 3)
        torch.testing.assert_close(f_divergence_weights(logits, name), expected)
    torch.testing.assert_close(f_divergence_weights(logits, "reverse_kl"), torch.ones(3))
    big = f_divergence_weights(torch.tensor([1000.0, 0.0]), "forward_kl")  # exp(1000) overflows; softmax does not
    assert torch.isfinite(big).all() and big.sum().item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="divergence must be one of"):
        f_divergence_weights(logits, "hellinger")


@pytest.mark.parametrize("weighting", ["one_minus_alpha_bar", "x0_error"])
def test_sample_weights_scale_each_samples_vsd_gradient_and_nothing_else(weighting):
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, requires_grad=True)
    x_t, eps_teacher, eps_fake = torch.randn(3, 2, 4, 8, 8).unbind(0)
    alpha_bar_t = torch.tensor([0.3, 0.8])
    grads = []
    for weight in (None, torch.tensor([2.0, 0.5])):
        x0.grad = None
        vsd_loss(x0, x_t, eps_teacher, eps_fake, alpha_bar_t, weighting, weight)[0].backward()
        grads.append(x0.grad.clone())
    torch.testing.assert_close(grads[1][0], 2.0 * grads[0][0])
    torch.testing.assert_close(grads[1][1], 0.5 * grads[0][1])


@pytest.mark.parametrize("bad, message", [
    (dict(divergence="hellinger"), "divergence must be one of"),
    (dict(divergence="js", gan_disc_weight=0.0), "gan_disc_weight must be > 0"),
])
def test_a_bad_divergence_is_refused_naming_the_field_and_only_an_f_divergence_uses_real_images(bad, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**bad)
    assert DistillConfig().divergence == "reverse_kl" and not DistillConfig().uses_real_images
    assert DistillConfig(divergence="js").uses_real_images


def test_an_f_divergence_run_builds_and_trains_the_head_without_a_gan_term_and_logs_its_weights(tiny_components):
    torch.manual_seed(0)
    d = Distiller(copy.deepcopy(tiny_components), DistillConfig(**SMALL, fake_score="full", divergence="forward_kl"))
    assert d.discriminator is not None  # the head exists without a GAN term
    d.set_real_images(torch.randn(8, 4, 8, 8))
    head0 = [p.detach().clone() for p in d.discriminator_parameters()]
    engines = local_engines(d)
    batch = {"input_ids": d.tokenize(PROMPTS)}
    logs = [train_iteration(d, *engines, batch, IterationRNG(0, s, 0, 2), s) for s in range(2)]
    assert all(row["fdiv_weight_max"] >= 1.0 for row in logs)  # mean-1 weights: the largest is at least 1
    assert "loss_gan" not in logs[0] and math.isfinite(logs[-1]["loss_disc"])
    assert not all(torch.equal(a, b) for a, b in zip(head0, d.discriminator_parameters()))

"""MSGAN's mode-seeking term (docs/method.md, "Keeping the teacher's diversity"): the loss against a hand-computed
case, its refusal of bad weights, and, on the tiny model, a student that spreads its samples of one prompt apart."""

import copy

import pytest
import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.losses import mode_seeking_loss
from loopfree.rng import IterationRNG
from loopfree.training import LocalEngine, train_iteration

PROMPTS = ["a photo of a cat", "a red sneaker"]


def test_mode_seeking_loss_is_the_weighted_inverse_distance_ratio_and_its_gradient_pushes_the_pair_apart():
    x0_a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)  # (1, 1, 2, 2)
    x0_b = torch.tensor([[[[0.0, 2.0], [3.0, 6.0]]]])
    z_a, z_b = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    loss, logs = mode_seeking_loss(x0_a, x0_b, z_a, z_b, weight=0.3, eps=0.0)
    # hand-computed: mean|x0_a - x0_b| = (1 + 0 + 0 + 2) / 4 = 0.75, mean|z_a - z_b| = 0.5, r = 1.5, L = 0.3 / 1.5
    assert loss.item() == pytest.approx(0.2)
    assert logs["mode_seeking_ratio"].item() == pytest.approx(1.5)
    loss.backward()
    # dL/dx0_a = -w / r^2 * sign(x0_a - x0_b) / (N * d_z): away from x0_b where they differ, zero where equal
    expected = -0.3 / 1.5**2 * torch.sign(x0_a.detach() - x0_b) / (4 * 0.5)
    torch.testing.assert_close(x0_a.grad, expected)
    stepped = x0_a.detach() - 0.5 * x0_a.grad
    assert (stepped - x0_b).abs().mean() > 0.75  # a gradient step moves the pair apart


def test_mode_seeking_loss_averages_pairs_and_is_finite_for_identical_samples():
    x0 = torch.randn(3, 2, 4, 4)
    z_a, z_b = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    loss, _ = mode_seeking_loss(x0, x0.clone(), z_a, z_b, weight=1.0)
    assert loss.item() == pytest.approx(1e5)  # r = 0: 1 / eps, the default eps 1e-5
    x0_b = x0 + torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1, 1)
    loss, _ = mode_seeking_loss(x0, x0_b, z_a, z_b, weight=1.0)
    d_z = (z_a - z_b).abs().flatten(1).mean(1)
    assert loss.item() == pytest.approx(float((d_z / torch.tensor([1.0, 2.0, 4.0])).mean()), rel=1e-4)


@pytest.mark.parametrize("bad", [-0.1, "0.1", float("nan")])
def test_a_bad_mode_seeking_weight_is_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match="mode_seeking_weight"):
        DistillConfig(mode_seeking_weight=bad)


def _spread(d: Distiller, text: torch.Tensor, noises: torch.Tensor) -> float:
    """Mean L1 distance between the student's samples of one prompt from two noises."""
    with torch.no_grad():
        x0, _ = d.student(noises, text)
    return float((x0[0] - x0[1]).abs().mean())


@pytest.mark.integration  # slow: distillation iterations
def test_mode_seeking_spreads_one_prompts_samples_apart_and_off_leaves_the_first_losses_unchanged(tiny_components):
    spread, first = {}, {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        config = DistillConfig(lora_rank=4, lora_alpha=8.0, lambda_kl=0.0, mode_seeking_weight=weight, student_lr=1e-3)
        d = Distiller(copy.deepcopy(tiny_components), config)
        text = d.encode_text(d.tokenize(PROMPTS[:1] * 2))
        noises = torch.randn((2, *d._latent_shape()), generator=torch.Generator().manual_seed(7))
        start = _spread(d, text, noises)
        student, fake = (LocalEngine(p, 1e-3, (0.9, 0.999), d.config)
                         for p in (d.student_parameters(), d.fake_score_parameters()))
        logs = [train_iteration(d, student, fake, {"input_ids": d.tokenize(PROMPTS)}, IterationRNG(0, s, 0, 2), s)
                for s in range(6)]
        spread[weight], first[weight] = _spread(d, text, noises) / start, logs[0]
    assert spread[1.0] > 1.2 * spread[0.0]  # the term spread the samples of one prompt
    assert "loss_mode_seeking" in first[1.0] and "loss_mode_seeking" not in first[0.0]
    assert first[0.0]["loss_vsd"] == first[1.0]["loss_vsd"]  # drawn after VSD: the VSD randomness is unchanged

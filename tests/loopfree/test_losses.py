import pytest
import torch

from loopfree.losses import add_noise, cfg, fake_score_loss, kl_loss, vsd_loss


def test_vsd_gradient_is_g_over_n():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, 5, generator=g, requires_grad=True)
    e_t, e_l = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    a = torch.tensor([0.1, 0.5, 0.9])
    loss, logs = vsd_loss(x0, torch.zeros_like(e_t), e_t, e_l, a)
    loss.backward()
    grad_target = (1 - a).view(-1, 1, 1, 1) * (e_t - e_l)
    torch.testing.assert_close(x0.grad, grad_target / x0.numel(), rtol=0, atol=1e-9)
    assert float(loss.detach()) == pytest.approx(0.5 * float(grad_target.square().mean()), rel=1e-6)
    assert float(logs["vsd_nonfinite"]) == 0


def test_vsd_x0_error_weighting_matches_the_x0_space_formula():
    """DMD's normalisation computed independently in x0 space: (x0_fake - x0_teacher) / mean|x0 - x0_teacher|."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    x_t, e_t, e_f = (torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    a = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64).view(-1, 1, 1, 1)
    x0_teacher = (x_t - (1 - a).sqrt() * e_t) / a.sqrt()
    x0_fake = (x_t - (1 - a).sqrt() * e_f) / a.sqrt()
    expected = (x0_fake - x0_teacher) / (x0 - x0_teacher).abs().mean(dim=(1, 2, 3), keepdim=True)

    x0_leaf = x0.float().requires_grad_(True)
    loss, _ = vsd_loss(x0_leaf, x_t.float(), e_t.float(), e_f.float(), a.flatten().float(), "x0_error")
    loss.backward()
    torch.testing.assert_close(x0_leaf.grad.double(), expected / x0.numel(), rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="weighting"):
        vsd_loss(x0_leaf, x_t.float(), e_t.float(), e_f.float(), a.flatten().float(), "snr")


def test_vsd_zeroes_nonfinite_g():
    x0 = torch.zeros(2, 1, 2, 2, requires_grad=True)
    e_t = torch.ones(2, 1, 2, 2)
    e_t[0, 0, 0, 0], e_t[1, 0, 1, 1], e_t[1, 0, 0, 1] = float("nan"), float("inf"), -float("inf")
    loss, logs = vsd_loss(x0, torch.zeros_like(e_t), e_t, torch.zeros_like(e_t), torch.tensor([0.5, 0.5]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x0.grad).all()
    assert x0.grad[0, 0, 0, 0] == 0 and x0.grad[1, 0, 1, 1] == 0 and x0.grad[1, 0, 0, 1] == 0
    assert x0.grad[0, 0, 1, 1] == pytest.approx(0.5 / 8)
    assert int(logs["vsd_nonfinite"]) == 3


def standard_map(shape, mean=0.0, var=1.0, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = (x - x.mean()) / x.std(unbiased=True)  # exactly mean 0, unbiased variance 1
    return (x * var**0.5 + mean).float()


def test_kl_is_zero_for_standard_maps():
    eps_all = torch.stack([torch.stack([standard_map((4, 8, 8), seed=10 * k + b) for b in range(3)]) for k in range(2)])
    loss, _ = kl_loss(eps_all)
    assert abs(float(loss)) < 1e-6


def test_kl_grows_with_mean_and_log_variance():
    def kl(mean, var):
        return float(kl_loss(standard_map((1, 1, 4, 8, 8), mean, var), lambda_kl=1.0)[0])

    assert 0 < kl(0.5, 1) < kl(1.0, 1) < kl(2.0, 1)
    assert kl(-1.0, 1) == pytest.approx(kl(1.0, 1), rel=1e-5)
    assert 0 < kl(0, 2) < kl(0, 4) and 0 < kl(0, 0.5) < kl(0, 0.25)
    # closed form for one map: -0.5 (1 + log v - m^2 - v)
    assert kl(1.0, 2.0) == pytest.approx(-0.5 * (1 + torch.tensor(2.0).log().item() - 1 - 2), rel=1e-5)


def test_kl_reductions():
    eps_all = torch.randn(4, 3, 2, 4, 4) * 1.5 + 0.3
    total, _ = kl_loss(eps_all, lambda_kl=0.1, reduction="sum")
    mean, _ = kl_loss(eps_all, lambda_kl=0.1, reduction="mean")
    assert float(total) == pytest.approx(12 * float(mean), rel=1e-5)  # K*B = 12 maps
    with pytest.raises(ValueError, match="reduction"):
        kl_loss(eps_all, reduction="max")


def test_kl_is_fp32_under_autocast():
    eps_all = (torch.randn(2, 2, 4, 8, 8) * 1.3).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = kl_loss(eps_all)
    ref, _ = kl_loss(eps_all.double())
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_lora_loss_weighting_by_alpha_bar():
    eps = torch.zeros(3, 1, 2, 2)
    eps_lora = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 2.0, 3.0)])  # squared errors 1, 4, 9
    a = torch.tensor([0.5, 0.25, 0.1])
    loss, logs = fake_score_loss(eps_lora, eps, a)
    assert float(loss) == pytest.approx((0.5 * 1 + 0.25 * 4 + 0.1 * 9) / 3)
    assert float(logs["loss_fake_score"]) == float(loss)


def test_cfg_and_add_noise():
    e_u, e_c = torch.tensor([1.0]), torch.tensor([3.0])
    assert float(cfg(e_u, e_c, 4.5)) == 1 + 4.5 * 2
    x0, eps, a = torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0), torch.tensor([0.64])
    assert float(add_noise(x0, eps, a)) == pytest.approx(0.8 + 0.6 * 2)

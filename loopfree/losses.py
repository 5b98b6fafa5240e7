"""The distillation losses of docs/method.md ("Training"), as small pure functions returning (loss, logs).

Shapes: x0 / eps maps are (B, C, H, W); eps_all is (K, B, C, H, W); alpha_bar_t is (B,).
Every coefficient and reduction runs in fp32 with autocast off, whatever the caller's precision
(the reference code computed them in fp16: docs/method.md, "Decisions").
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

KL_REDUCTIONS = ("sum", "mean")
VSD_WEIGHTINGS = ("one_minus_alpha_bar", "x0_error")
DIVERGENCES = ("reverse_kl", "forward_kl", "js")
STUDENT_LOSSES = ("vsd", "sid")


def fp32(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on this device type, so explicit .float() math stays fp32."""
    return torch.autocast(device_type=device.type, enabled=False)


def _per_sample(coef: torch.Tensor) -> torch.Tensor:
    return coef.float().view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance (docs/method.md, "Training", step 2): e = e_u + s (e_c - e_u)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion in fp32: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    with fp32(x0.device):
        a = _per_sample(alpha_bar_t)
        return a.sqrt() * x0.float() + (1 - a).sqrt() * eps.float()


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """The clean estimate of a noise prediction, in fp32: x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    with fp32(x_t.device):
        a = _per_sample(alpha_bar_t)
        return (x_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()


def x0_weight(x0: torch.Tensor, x0_teacher: torch.Tensor, alpha_bar_t: torch.Tensor, weighting: str) -> torch.Tensor:
    """VSD's per-sample weight w in x0 space (B, 1, 1, 1), no gradient: g = w (x0_fake - x0_teacher).
    "one_minus_alpha_bar": w = sqrt(a_t (1 - a_t)), which is (1 - a_t) (e_teacher - e_fake) written in x0;
    "x0_error": w = 1 / mean_CHW |x0 - x0_teacher| (DMD's normalisation)."""
    if weighting not in VSD_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VSD_WEIGHTINGS}, got {weighting!r}")
    with fp32(x0.device):
        if weighting == "one_minus_alpha_bar":
            a = _per_sample(alpha_bar_t)
            return (a * (1 - a)).sqrt()
        return 1 / _x0_error(x0, x0_teacher)


def _x0_error(x0: torch.Tensor, x0_teacher: torch.Tensor) -> torch.Tensor:
    """mean_CHW |x0 - x0_teacher| per sample (B, 1, 1, 1), fp32, no gradient, at least 1e-6."""
    return (x0.detach().float() - x0_teacher.detach().float()).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def vsd_loss(x0: torch.Tensor, x_t: torch.Tensor, eps_teacher: torch.Tensor, eps_fake: torch.Tensor,
             alpha_bar_t: torch.Tensor, weighting: str = "one_minus_alpha_bar",
             sample_weight: torch.Tensor | None = None):
    """Variational score distillation (docs/method.md, "Training", step 2).

    The direction is the teacher's minus the fake score's noise prediction; the weighting sets its scale:
      "one_minus_alpha_bar" (the paper): g = (1 - a_t) (e_teacher - e_fake);
      "x0_error" (DMD, Yin et al. CVPR 2024, eq. 8; SiD): the same direction in x0 space, divided per
        sample by how far the teacher's clean estimate is from x0:
        g = (x0_fake - x0_teacher) / mean_CHW |x0 - x0_teacher|,  x0_* = (x_t - sqrt(1 - a_t) e_*) / sqrt(a_t),
        where x0_fake - x0_teacher = sqrt((1 - a_t) / a_t) (e_teacher - e_fake).
    sample_weight (B,), if given, scales each sample's g (the f-divergence weights, f_divergence_weights).
    NaN/Inf in g -> 0; L_vsd = 0.5 * mean((x0 - stopgrad(x0 - g))^2), so dL/dx0 = g / N (N elements).
    """
    if weighting not in VSD_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VSD_WEIGHTINGS}, got {weighting!r}")
    with fp32(x0.device):
        a = _per_sample(alpha_bar_t)  # (B, 1, 1, 1)
        diff = eps_teacher.float() - eps_fake.float()  # (B, C, H, W)
        if weighting == "one_minus_alpha_bar":
            g = (1 - a) * diff
        else:
            g = ((1 - a) / a).sqrt() * diff / _x0_error(x0, x0_from_eps(x_t, eps_teacher, alpha_bar_t))
        if sample_weight is not None:
            g = _per_sample(sample_weight) * g
        nonfinite = (~torch.isfinite(g)).sum()
        g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
        target = (x0.float() - g).detach()
        loss = 0.5 * F.mse_loss(x0.float(), target, reduction="mean")
    return loss, {"loss_vsd": loss.detach(), "vsd_g_norm": g.norm().detach(), "vsd_nonfinite": nonfinite}


def sid_loss(x0: torch.Tensor, x0_teacher: torch.Tensor, x0_fake: torch.Tensor, alpha_bar_t: torch.Tensor,
             weighting: str = "x0_error", alpha: float = 1.2):
    """Score identity Distillation's student loss (Zhou et al., "Score identity Distillation", ICML 2024, with its
    alpha = 1.2; docs/method.md, "Keeping the teacher's diversity").

    x0_teacher and x0_fake are the teacher's and the fake score's clean estimates at x_t = sqrt(a_t) x0 +
    sqrt(1 - a_t) n, computed WITH gradient through both networks back to x0 (the caller's job); all (B, C, H, W).
      L_sid = mean over elements of w (x0_teacher - x0_fake) . ((x0_teacher - x0) - alpha (x0_teacher - x0_fake)),
    w the per-sample VSD weight in x0 space (x0_weight, no gradient). Holding both estimates fixed, dL/dx0 =
    w (x0_fake - x0_teacher) / N, VSD's gradient; what SiD adds is the gradient through the two score networks
    (a Fisher-divergence estimate instead of VSD's reverse KL) and the alpha term. Non-finite elements count as 0.
    """
    with fp32(x0.device):
        w = x0_weight(x0, x0_teacher, alpha_bar_t, weighting)  # (B, 1, 1, 1)
        diff = x0_teacher.float() - x0_fake.float()  # (B, C, H, W)
        term = w * diff * ((x0_teacher.float() - x0.float()) - alpha * diff)
        finite = torch.isfinite(term)
        loss = torch.where(finite, term, torch.zeros_like(term)).mean()
    return loss, {"loss_sid": loss.detach(), "sid_diff_norm": diff.detach().norm(), "sid_nonfinite": (~finite).sum()}


def f_divergence_weights(logits: torch.Tensor, divergence: str) -> torch.Tensor:
    """Per-sample weights h(r) of f-distill (Xu et al., "One-step Diffusion Models with f-Divergence Distribution
    Matching", 2025; docs/method.md, "Keeping the teacher's diversity").

    The gradient of D_f(p || q) scales each sample's score difference by h(r) = f''(r) r^2, r = p_t(x_t) / q_t(x_t).
    A discriminator trained with the logistic loss estimates log r by its logit, so from logits (B,):
      "reverse_kl" f = -log r:                 h = 1 (VSD as it is: mode-seeking);
      "forward_kl" f = r log r:                h = r = exp(logit) (mode-covering);
      "js"         f = r log r - (1 + r) log((1 + r) / 2):  h = r / (1 + r) = sigmoid(logit).
    The weights are divided by their batch mean: the gradient's scale stays that of reverse KL and only its
    spread over the samples changes (forward KL through a softmax, so exp never overflows). Returns (B,) fp32.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    with fp32(logits.device):
        z = logits.detach().float()
        if divergence == "reverse_kl":
            return torch.ones_like(z)
        if divergence == "forward_kl":
            return len(z) * torch.softmax(z, dim=0)
        h = torch.sigmoid(z)
        return h / h.mean().clamp_min(1e-12)


def kl_loss(eps_all: torch.Tensor, lambda_kl: float = 0.1, reduction: str = "sum"):
    """KL of each predicted noise map to N(0, 1) (docs/method.md, "Training", step 3).

    Per map n (statistics over its C*H*W elements, unbiased variance):
    KL_n = -0.5 (1 + log var_n - mu_n^2 - var_n); L_kl = lambda_kl * sum_n KL_n ("sum", paper parity:
    grows with K*B) or lambda_kl * mean_n KL_n ("mean").
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    with fp32(eps_all.device):
        maps = eps_all.float().reshape(-1, eps_all[0, 0].numel())  # (K*B, C*H*W)
        mu, var = maps.mean(dim=1), maps.var(dim=1, unbiased=True)
        kl = -0.5 * (1 + var.log() - mu.square() - var)  # (K*B,)
        loss = lambda_kl * (kl.sum() if reduction == "sum" else kl.mean())
    return loss, {"loss_kl": loss.detach(), "kl_mean_per_map": kl.mean().detach()}


def fake_score_loss(eps_fake: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor):
    """Denoising loss of the fake score (the LoRA teacher, or a full copy) on the student's samples
    (docs/method.md, "Training", step 5): L_fake = mean(a_t * (eps_fake(x_t, t, c) - eps)^2)."""
    with fp32(eps.device):
        loss = (_per_sample(alpha_bar_t) * (eps_fake.float() - eps.float()).square()).mean()
    return loss, {"loss_fake_score": loss.detach()}


def regression_loss(x0: torch.Tensor, x0_teacher: torch.Tensor, weight: float, pool: int = 1):
    """DMD's regression loss (Yin et al., CVPR 2024, eq. 6; docs/method.md, "Keeping the teacher's diversity").

    x0 is the student's sample from a stored noise z and prompt c, x0_teacher the teacher's multi-step sample
    from the same (z, c). DMD compares them with LPIPS in pixel space; here the distance is the mean squared
    error of the latents, which keeps the loss image-free and needs no extra network:
    L_reg = weight * mean((A(x0) - A(x0_teacher))^2), where A averages each pool x pool block of a latent
    (A = identity for pool 1). Pooling keeps the pair's layout as the target and drops the detail the student
    cannot predict from (z, c). Both (P, C, H, W); the teacher side carries no gradient.
    """
    if x0.shape[-1] % pool or x0.shape[-2] % pool:
        raise ValueError(f"regression_pool {pool} must divide the latent's height and width, got {tuple(x0.shape[-2:])}")
    with fp32(x0.device):
        x0, x0_teacher = x0.float(), x0_teacher.detach().float()
        if pool > 1:
            x0, x0_teacher = F.avg_pool2d(x0, pool), F.avg_pool2d(x0_teacher, pool)  # (P, C, H / pool, W / pool)
        loss = weight * F.mse_loss(x0, x0_teacher, reduction="mean")
    return loss, {"loss_regression": loss.detach()}


def mode_seeking_loss(x0_a: torch.Tensor, x0_b: torch.Tensor, z_a: torch.Tensor, z_b: torch.Tensor, weight: float,
                      eps: float = 1e-5):
    """MSGAN's mode-seeking term (Mao et al., CVPR 2019, eq. 3; docs/method.md, "Keeping the teacher's diversity").

    x0_a, x0_b are the student's samples for the SAME prompts from two noises z_a, z_b, all (B, C, H, W). A
    generator that answers every noise with one image has a small ratio r = mean|x0_a - x0_b| / mean|z_a - z_b|
    (per pair); the term L_ms = weight * mean_B 1 / (r + eps) grows without bound as r -> 0, so minimising it
    spreads the samples of a prompt apart. The noises carry no gradient.
    """
    with fp32(x0_a.device):
        d_x = (x0_a.float() - x0_b.float()).abs().flatten(1).mean(1)  # (B,)
        d_z = (z_a.float() - z_b.float()).abs().flatten(1).mean(1).detach()  # (B,)
        ratio = d_x / d_z
        loss = weight * (1.0 / (ratio + eps)).mean()
    return loss, {"loss_mode_seeking": loss.detach(), "mode_seeking_ratio": ratio.detach().mean()}


def gan_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor):
    """DMD2's discriminator loss (Yin et al., NeurIPS 2024, section 4.3; docs/method.md, "Keeping the teacher's
    diversity"), the non-saturating GAN loss on logits (B,) of noised real latents and noised stopgrad(x0):
    L_D = mean(softplus(-D(real))) + mean(softplus(D(fake))). Unweighted: the caller weighs it (gan_disc_weight)."""
    with fp32(logits_real.device):
        real, fake = logits_real.float(), logits_fake.float()
        loss = F.softplus(-real).mean() + F.softplus(fake).mean()
        accuracy = torch.cat([real > 0, fake < 0]).float().mean()
    return loss, {"loss_disc": loss.detach(), "disc_accuracy": accuracy.detach()}


def gan_generator_loss(logits_fake: torch.Tensor, weight: float):
    """DMD2's generator loss (non-saturating) on the logits (B,) of the noised student x0, with gradient:
    L_G = weight * mean(softplus(-D(x0_t))); DMD2 weighs it 1e-3 to 1e-2 against the distribution-matching loss."""
    with fp32(logits_fake.device):
        loss = weight * F.softplus(-logits_fake.float()).mean()
    return loss, {"loss_gan": loss.detach()}

"""DDIM timesteps and the closed form of K deterministic DDIM steps (docs/method.md).

Notation (diffusers / DDIM paper): ``alpha_bar_t = alphas_cumprod[t]``. One DDIM step with eta = 0
from timestep t to its predecessor ``t_prev`` with noise prediction eps is

    x0_hat = (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
    x_prev = sqrt(alpha_bar_prev) * x0_hat + sqrt(1 - alpha_bar_prev) * eps
           = c_x * x_t + c_eps * eps

with ``c_x = sqrt(alpha_bar_prev / alpha_bar_t)`` and
``c_eps = sqrt(1 - alpha_bar_prev) - sqrt(alpha_bar_prev) * sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t)``.

In TiUE the K noise predictions do not depend on the running latent (one-way ticket), so the K
steps compose into one fixed linear map of the initial noise z and the K predictions:

    z_final = S * z + sum_k E_k * eps_k,   S = prod_k c_x[k],   E_k = c_eps[k] * prod_{j>k} c_x[j].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

SPACINGS = ("leading", "trailing")
MODES = ("tiue", "one_step")  # K-step TiUE student, or the 1-step SwiftBrush baseline (docs/method.md)


def ddim_timesteps(
    num_steps: int,
    spacing: str = "leading",
    num_train_timesteps: int = 1000,
    steps_offset: int = 1,
) -> list[int]:
    """The K timesteps diffusers' DDIMScheduler uses for ``num_steps`` inference steps.

    ``leading`` (diffusers' default with ``steps_offset=1``, what the paper's code ran) gives
    751, 501, 251, 1 for K = 4; ``trailing`` gives 999, 749, 499, 249.
    """
    _check_num_steps(num_steps, num_train_timesteps)
    if spacing == "leading":
        step_ratio = num_train_timesteps // num_steps
        return [i * step_ratio + steps_offset for i in reversed(range(num_steps))]
    if spacing == "trailing":
        # Same arithmetic as diffusers: round(arange(T, 0, -T/K)) - 1.
        ratio = num_train_timesteps / num_steps
        return [int(round(num_train_timesteps - i * ratio)) - 1 for i in range(num_steps)]
    raise ValueError(f"spacing must be one of {SPACINGS} or an explicit list of timesteps, got {spacing!r}")


def _check_num_steps(num_steps: int, num_train_timesteps: int) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps (K) must be an integer >= 1, got {num_steps!r}")
    if num_steps > num_train_timesteps:
        raise ValueError(f"num_steps (K) must be <= num_train_timesteps={num_train_timesteps}, got {num_steps}")


def check_timesteps(timesteps: Sequence[int], num_train_timesteps: int = 1000) -> list[int]:
    """Validate an explicit timestep list: integers, strictly decreasing, in [0, num_train_timesteps)."""
    ts = list(timesteps)
    if not ts:
        raise ValueError("timesteps must hold at least one timestep")
    for t in ts:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < num_train_timesteps:
            raise ValueError(f"timesteps must be integers in [0, {num_train_timesteps}), got {t!r} in {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {ts}")
    return ts


@dataclass(frozen=True)
class DDIMPlan:
    """K DDIM steps as a fixed linear map (see module docstring). Coefficients are float64 numbers."""

    timesteps: tuple[int, ...]
    alpha_bar: tuple[float, ...]  # alpha_bar at t_k
    alpha_bar_prev: tuple[float, ...]  # alpha_bar at the step's target
    c_x: tuple[float, ...]
    c_eps: tuple[float, ...]
    S: float
    E: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_alphas(
        cls, alphas_cumprod: torch.Tensor, timesteps: Sequence[int], alpha_bar_prev: Sequence[float]
    ) -> "DDIMPlan":
        a = [float(alphas_cumprod[t]) for t in timesteps]
        c_x = [math.sqrt(ap / at) for at, ap in zip(a, alpha_bar_prev)]
        c_eps = [math.sqrt(1 - ap) - math.sqrt(ap) * math.sqrt(1 - at) / math.sqrt(at) for at, ap in zip(a, alpha_bar_prev)]
        # E_k = c_eps[k] * prod_{j>k} c_x[j]: the later steps rescale what step k added.
        E = [c_eps[k] * math.prod(c_x[k + 1 :]) for k in range(len(c_x))]
        return cls(tuple(timesteps), tuple(a), tuple(alpha_bar_prev), tuple(c_x), tuple(c_eps), math.prod(c_x), tuple(E))

    def apply(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z: (B, C, H, W); eps: (K, B, C, H, W) -> z_final (B, C, H, W) = S*z + sum_k E_k*eps_k.

        Coefficients stay fp32 (docs/method.md, "Training") whatever the dtype of eps.
        """
        if eps.dim() != z.dim() + 1 or eps.shape[0] != self.num_steps or eps.shape[1:] != z.shape:
            raise ValueError(f"eps must have shape (K={self.num_steps}, *z.shape={tuple(z.shape)}), got {tuple(eps.shape)}")
        E = torch.tensor(self.E, dtype=torch.float32, device=z.device).view(-1, *([1] * z.dim()))  # (K,1,1,1,1)
        return self.S * z.float() + (E * eps.float()).sum(dim=0)


def ddim_plan(
    alphas_cumprod: torch.Tensor,
    num_steps: int = 4,
    spacing: str | Sequence[int] = "leading",
    steps_offset: int = 1,
    final_alpha_cumprod: float | None = None,
) -> DDIMPlan:
    """The DDIM plan diffusers' DDIMScheduler would run (eta = 0).

    spacing: "leading", "trailing", or an explicit strictly decreasing list of timesteps.
    For named spacings each step targets ``t - T // K`` exactly as ``DDIMScheduler.step`` does; for an
    explicit list each step targets the next listed timestep. Past the end the target is
    ``final_alpha_cumprod`` (default ``alphas_cumprod[0]``, i.e. ``set_alpha_to_one=False`` as in SD).
    """
    T = len(alphas_cumprod)
    final = float(alphas_cumprod[0]) if final_alpha_cumprod is None else float(final_alpha_cumprod)
    if isinstance(spacing, str):
        timesteps = ddim_timesteps(num_steps, spacing, T, steps_offset)
        prev = [t - T // num_steps for t in timesteps]
    else:
        timesteps = check_timesteps(spacing, T)
        if num_steps != len(timesteps):
            raise ValueError(f"num_steps (K={num_steps}) must equal the number of explicit timesteps ({len(timesteps)})")
        prev = timesteps[1:] + [-1]
    alpha_prev = [float(alphas_cumprod[p]) if p >= 0 else final for p in prev]
    return DDIMPlan.from_alphas(alphas_cumprod, timesteps, alpha_prev)


def one_step_plan(alphas_cumprod: torch.Tensor, timestep: int = 999) -> DDIMPlan:
    """SwiftBrush's 1-step map: x0_hat = (z - sqrt(1 - a_t) eps) / sqrt(a_t) at t = 999.

    It is a DDIM step whose target has alpha_bar = 1 (a clean sample), so it shares DDIMPlan.
    """
    check_timesteps([timestep], len(alphas_cumprod))
    return DDIMPlan.from_alphas(alphas_cumprod, [timestep], [1.0])


def plan_for(alphas_cumprod: torch.Tensor, mode: str, num_steps: int, spacing: str,
             timesteps: Sequence[int] | None = None, steps_offset: int = 1) -> DDIMPlan:
    """THE plan a (mode, K, spacing, timesteps) configuration names: the Distiller, the pipeline and the
    export all call this one function, so training and inference can never disagree.

    mode "one_step": SwiftBrush's map at ``timesteps[0]`` (default t = 999); mode "tiue": spacing
    "leading" / "trailing" (``timesteps``, if given, must agree) or "custom" with an explicit list.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "one_step":
        return one_step_plan(alphas_cumprod, timesteps[0] if timesteps else len(alphas_cumprod) - 1)
    if spacing == "custom":
        if not timesteps:
            raise ValueError("spacing 'custom' needs an explicit timesteps list")
        return ddim_plan(alphas_cumprod, num_steps, list(timesteps))
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS + ('custom',)}, got {spacing!r}")
    plan = ddim_plan(alphas_cumprod, num_steps, spacing, steps_offset=steps_offset)
    if timesteps is not None and list(timesteps) != list(plan.timesteps):
        raise ValueError(f"timesteps {list(timesteps)} disagree with spacing {spacing!r} for K={num_steps}: "
                         f"{list(plan.timesteps)}; use spacing 'custom' for an explicit list")
    return plan

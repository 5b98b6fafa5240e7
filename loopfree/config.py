"""Typed, validated configuration of the distillation method.

Every default is the paper's value (docs/method.md, "Training"). The options beyond the paper
(docs/method.md, "Stability options") default to the paper's behaviour: switching one on is a
deliberate, visible change in the job file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from loopfree.losses import DIVERGENCES, KL_REDUCTIONS, STUDENT_LOSSES, VSD_WEIGHTINGS
from loopfree.schedule import MODES, SPACINGS, check_timesteps

FAKE_SCORES = ("lora", "full")
RENOISE = ("mirrored_z", "fresh")  # the noise that re-noises a refined regression pair's student sample (loopfree.pairs)
VSD_T_TOP, FAKE_SCORE_T_TOP = 980, 999  # the whole ranges' highest timesteps: vsd_t_max's and fake_score_t_max's defaults
# Keys renamed because they train the fake score whether it is a LoRA or a full copy (docs/jobs.md).
RENAMED = {"lora_lr": "fake_score_lr", "lora_warmup_steps": "fake_score_warmup_steps",
           "lora_adam_betas": "fake_score_adam_betas", "lora_t_min": "fake_score_t_min",
           "lora_t_max": "fake_score_t_max", "lora_prompt_dropout": "fake_score_prompt_dropout"}


class ConfigError(ValueError):
    """DistillConfig's refusal: every problem found, each a message that starts with the field it names."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid DistillConfig: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class DistillConfig:
    # student (docs/method.md: the student, the closed-form DDIM map, the 1-step mode)
    mode: str = "tiue"  # "tiue" or "one_step" (SwiftBrush baseline)
    num_steps: int = 4  # K decoder timesteps
    spacing: str = "leading"  # "leading" (paper parity), "trailing", or "custom" with `timesteps`
    timesteps: tuple[int, ...] | None = None
    # VSD (3.2) and KL (3.3)
    guidance_scale: float = 4.5  # CFG of the teacher branch
    fake_guidance_scale: float | None = None  # CFG of the fake-score branch; None: same as guidance_scale (paper);
    # 0: the fake score's unconditional prediction (Zero-CFG), < 0: negative guidance (Anti-CFG)
    vsd_weighting: str = "one_minus_alpha_bar"  # paper's w(t) = 1 - a_t, or "x0_error" (DMD/SiD normalisation)
    vsd_t_min: int = 20
    vsd_t_max: int = VSD_T_TOP
    # An annealed noise schedule (ProlificDreamer, DreamTime; docs/method.md): before this update VSD and the fake
    # score use their whole ranges (up to 980 and 999: the layout), from it on vsd_t_max and fake_score_t_max (the
    # detail). 0: the configured maxima from the first update.
    vsd_t_max_from_step: int = 0
    lambda_kl: float = 0.1
    kl_reduction: str = "sum"  # paper parity; "mean" keeps the weight independent of K*B
    # fake score (3.5): the paper's LoRA on the shared base UNet, or a full trainable copy of the teacher
    fake_score: str = "lora"
    fake_score_updates: int = 1  # fake-score updates per student update (DMD2's two time-scale rule uses 5-10)
    lora_rank: int = 64
    lora_alpha: float = 108.0
    lora_target_modules: tuple[str, ...] = ("to_q", "to_v")
    fake_score_t_min: int = 0
    fake_score_t_max: int = FAKE_SCORE_T_TOP
    fake_score_prompt_dropout: float = 0.1
    # DMD's regression loss (docs/method.md, "Keeping the teacher's diversity"): the student's x0 for a fixed set of
    # (noise, prompt) pairs is pulled towards the teacher's multi-step sample from the same noise. 0 = off.
    regression_weight: float = 0.0
    regression_pairs: int = 1024  # pairs generated once per run
    regression_teacher_steps: int = 50  # the teacher's DDIM steps per pair
    regression_guidance_scale: float | None = None  # the teacher's CFG for the pairs; None: guidance_scale
    # Compare the latents average-pooled over regression_pool x regression_pool blocks: 1 compares them whole; 2 pulls
    # only the layout towards the pair and leaves the detail within each block to distribution matching.
    regression_pool: int = 1
    # None: the pairs are the teacher's own samples from z. A timestep t: the initial student's sample from z, noised to
    # t (with regression_renoise's noise) and finished by the teacher (its layout, the teacher's finish; loopfree.pairs).
    regression_finish_from: int | None = None
    # The noise that re-noises the student's sample: "mirrored_z" (z flipped left to right) or "fresh" (its own
    # draw per pair, from a seed no other noise uses): garments are near-symmetric, so mirrored z keeps some layout.
    regression_renoise: str = "mirrored_z"
    # DMD2's GAN term (docs/method.md, "Keeping the teacher's diversity"): a discriminator head on the fake score's
    # bottleneck tells noised real training images from noised student samples; the student gets the
    # non-saturating generator loss at this weight. 0 = off (no head, no real images).
    gan_weight: float = 0.0
    gan_disc_weight: float = 0.01  # the discriminator loss's weight in the fake score's loss (DMD2: 1e-2)
    gan_head_channels: int = 64  # width of the discriminator head's two conv blocks
    # f-distill (docs/method.md, "Keeping the teacher's diversity"): which f-divergence the student minimises. Other
    # than "reverse_kl" (VSD as it is), each sample's VSD gradient is weighted by h(r) from the same discriminator head.
    divergence: str = "reverse_kl"
    # MSGAN's mode-seeking term (docs/method.md, "Keeping the teacher's diversity"): a second student sample per
    # prompt from another noise; the student is paid for the distance between the two. 0 = off (no second sample).
    mode_seeking_weight: float = 0.0
    # SiD (docs/method.md, "Keeping the teacher's diversity"): "sid" replaces VSD's student loss by Score identity
    # Distillation's, which differentiates through both score networks; sid_alpha is its alpha (SiD: 1.2).
    student_loss: str = "vsd"
    sid_alpha: float = 1.2
    # optimisation (3.4, 3.5): Adam, learning rates constant after an optional linear warm-up, grad-norm
    # clipping. The fake_score_* fields train the fake score, LoRA or full copy; lora_* shape the LoRA only.
    student_lr: float = 1e-6
    fake_score_lr: float = 1e-3
    student_warmup_steps: int = 0
    fake_score_warmup_steps: int = 0
    student_adam_betas: tuple[float, float] = (0.9, 0.999)
    fake_score_adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # EMA of the student (3.6): decay min((1 + s) / (10 + s), ema_decay)
    ema_decay: float = 0.9999
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        errors = list(self._errors())
        if errors:
            raise ConfigError(errors)

    def _errors(self):
        for group in (self._key_errors, self._sampler_errors, self._noise_range_errors, self._fake_score_errors,
                      self._diversity_errors, self._optimiser_errors):
            yield from group()

    def _key_errors(self):
        for old in sorted(set(self.extra) & set(RENAMED)):
            yield f"{old} was renamed: use {RENAMED[old]}"
        if set(self.extra) - set(RENAMED):
            yield f"unknown keys {sorted(set(self.extra) - set(RENAMED))}"

    def _sampler_errors(self):
        """The student's map: mode, spacing and its timesteps (docs/method.md, the closed-form DDIM map)."""
        if self.mode not in MODES:
            yield f"mode must be one of {MODES}, got {self.mode!r}"
        if self.spacing not in (*SPACINGS, "custom"):
            yield f"spacing must be one of {(*SPACINGS, 'custom')}, got {self.spacing!r}"
        yield from self._integers(("num_steps",), 1)
        if self.spacing == "custom":
            try:
                check_timesteps(list(self.timesteps or []))
            except ValueError as err:
                yield f"timesteps: {err}"
            else:
                if self.mode == "tiue" and len(self.timesteps) != self.num_steps:
                    yield f"timesteps: {len(self.timesteps)} listed but num_steps is {self.num_steps}; they must agree"

    def _noise_range_errors(self):
        for lo, hi in (("vsd_t_min", "vsd_t_max"), ("fake_score_t_min", "fake_score_t_max")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not (_is_int(a) and _is_int(b) and 0 <= a <= b <= 999):
                yield f"{lo}/{hi} must be integers with 0 <= {lo} <= {hi} <= 999, got {a!r}/{b!r}"
        if not _is_int(self.vsd_t_max_from_step) or self.vsd_t_max_from_step < 0:
            yield f"vsd_t_max_from_step must be an integer >= 0, got {self.vsd_t_max_from_step!r}"
        elif self.vsd_t_max_from_step > 0 and (self.vsd_t_max, self.fake_score_t_max) == (VSD_T_TOP, FAKE_SCORE_T_TOP):
            yield (f"vsd_t_max_from_step {self.vsd_t_max_from_step} changes nothing: vsd_t_max and fake_score_t_max are "
                   f"already the whole ranges ({VSD_T_TOP}, {FAKE_SCORE_T_TOP}); lower one of them")

    def _fake_score_errors(self):
        if self.fake_score not in FAKE_SCORES:
            yield f"fake_score must be one of {FAKE_SCORES}, got {self.fake_score!r}"
        yield from self._integers(("fake_score_updates", "lora_rank"), 1)
        if not self.lora_target_modules:
            yield "lora_target_modules must name at least one module"
        # Any finite scale: 0 is SiD's Zero-CFG fake branch, below 0 its Anti-CFG (docs/method.md).
        if self.fake_guidance_scale is not None and not _is_number(self.fake_guidance_scale):
            yield f"fake_guidance_scale must be a finite number or null, got {self.fake_guidance_scale!r}"
        p = self.fake_score_prompt_dropout
        if not (_is_number(p) and 0 <= p <= 1):
            yield f"fake_score_prompt_dropout must be a number in [0, 1], got {p!r}"

    def _diversity_errors(self):
        """The student's loss and the options that keep the teacher's diversity (docs/method.md)."""
        if self.vsd_weighting not in VSD_WEIGHTINGS:
            yield f"vsd_weighting must be one of {VSD_WEIGHTINGS}, got {self.vsd_weighting!r}"
        if self.kl_reduction not in KL_REDUCTIONS:
            yield f"kl_reduction must be one of {KL_REDUCTIONS}, got {self.kl_reduction!r}"
        yield from self._numbers(("guidance_scale", "lambda_kl", "regression_weight", "mode_seeking_weight",
                                  "gan_weight", "gan_disc_weight"), minimum=0)
        yield from self._integers(("regression_pairs", "regression_teacher_steps", "regression_pool",
                                   "gan_head_channels"), 1)
        if self.regression_finish_from is not None and not (
                _is_int(self.regression_finish_from) and 1 <= self.regression_finish_from <= 999):
            yield f"regression_finish_from must be an integer timestep in 1..999 or null, got {self.regression_finish_from!r}"
        if self.regression_renoise not in RENOISE:
            yield f"regression_renoise must be one of {', '.join(RENOISE)}, got {self.regression_renoise!r}"
        elif self.regression_renoise != "mirrored_z" and self.regression_finish_from is None:
            yield f"regression_renoise {self.regression_renoise!r} needs regression_finish_from (a timestep to finish from)"
        if self.regression_guidance_scale is not None and (
                not _is_number(self.regression_guidance_scale) or self.regression_guidance_scale < 1):
            yield f"regression_guidance_scale must be a number >= 1 or null, got {self.regression_guidance_scale!r}"
        if self.divergence not in DIVERGENCES:
            yield f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}"
        elif _is_number(self.gan_weight) and self.uses_real_images and self.gan_disc_weight == 0:
            yield ("gan_disc_weight must be > 0 when gan_weight > 0 or divergence is not reverse_kl: "
                   "the discriminator would never learn")
        if self.student_loss not in STUDENT_LOSSES:
            yield f"student_loss must be one of {STUDENT_LOSSES}, got {self.student_loss!r}"
        elif self.student_loss == "sid" and self.divergence != "reverse_kl":
            yield "student_loss sid cannot take a divergence other than reverse_kl: f-distill's weights scale VSD's gradient"
        if not _is_number(self.sid_alpha):
            yield f"sid_alpha must be a finite number, got {self.sid_alpha!r}"

    def _optimiser_errors(self):
        yield from self._integers(("student_warmup_steps", "fake_score_warmup_steps"), 0)
        for name in ("student_lr", "fake_score_lr", "adam_eps", "grad_clip", "lora_alpha"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                yield f"{name} must be a positive number, got {getattr(self, name)!r}"
        yield from self._numbers(("weight_decay",), minimum=0)
        if not (_is_number(self.ema_decay) and 0 <= self.ema_decay < 1):
            yield f"ema_decay must be a number in [0, 1), got {self.ema_decay!r}"
        for name in ("student_adam_betas", "fake_score_adam_betas"):
            betas = getattr(self, name)
            if not isinstance(betas, tuple) or len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
                yield f"{name} must be two numbers in [0, 1), got {betas!r}"

    def _integers(self, names: tuple[str, ...], minimum: int):
        for name in names:
            if not _is_int(getattr(self, name)) or getattr(self, name) < minimum:
                yield f"{name} must be an integer >= {minimum}, got {getattr(self, name)!r}"

    def _numbers(self, names: tuple[str, ...], minimum: float):
        """Finite numbers >= minimum: a NaN or infinite guidance or weight would poison every loss silently."""
        for name in names:
            if not _is_number(getattr(self, name)) or getattr(self, name) < minimum:
                yield f"{name} must be a number >= {minimum}, got {getattr(self, name)!r}"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DistillConfig":
        """Build from plain data (a YAML section); unknown keys are errors, sequences become tuples."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**kwargs, extra={k: v for k, v in values.items() if k not in known})

    @property
    def fake_cfg(self) -> float:
        """Guidance of the fake-score branch (the paper uses the teacher's scale on both)."""
        return self.guidance_scale if self.fake_guidance_scale is None else self.fake_guidance_scale

    @property
    def uses_real_images(self) -> bool:
        """Whether the run trains DMD2's discriminator head on real training images (GAN term or f-divergence)."""
        return self.gan_weight > 0 or self.divergence != "reverse_kl"

    @property
    def pair_cfg(self) -> float:
        """Guidance of the teacher's sampler that makes the regression pairs (default: the VSD teacher's)."""
        return self.guidance_scale if self.regression_guidance_scale is None else self.regression_guidance_scale

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite int or float: NaN passes every comparison check below, so it is refused here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

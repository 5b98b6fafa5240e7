"""The Distiller: student, teacher and fake score with two named turns (docs/method.md, "Training").

Three roles. The paper's layout is two networks: the student G (a TiUEGenerator over its own UNet,
all parameters train) and ONE base UNet carrying a PEFT LoRA adapter. Adapter off = the frozen
teacher (`teacher_mode()`), adapter on = the LoRA teacher, i.e. the "fake score"; only the LoRA
weights train. With ``fake_score="full"`` the fake score is instead a full trainable copy of the
teacher UNet (what SiD and DMD2 use on small models), at the cost of a third UNet in memory.
Plain single-device PyTorch: optimizers, engines and distribution live with the caller.
"""

from __future__ import annotations

import contextlib
import copy
from typing import NamedTuple

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from torch import nn

from loopfree.config import FAKE_SCORE_T_TOP, VSD_T_TOP, DistillConfig
from loopfree.gan import DiscriminatorHead, bottleneck
from loopfree.losses import (
    add_noise,
    cfg,
    f_divergence_weights,
    fake_score_loss,
    gan_discriminator_loss,
    gan_generator_loss,
    kl_loss,
    mode_seeking_loss,
    regression_loss,
    sid_loss,
    vsd_loss,
    x0_from_eps,
)
from loopfree.pairs import TeacherPairs
from loopfree.presets import Components
from loopfree.rng import IterationRNG
from loopfree.schedule import plan_for
from loopfree.tiue import TiUEGenerator

ADAPTER = "lora_teacher"


class StudentTurn(NamedTuple):
    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    x0: torch.Tensor  # (B, C, H, W) with grad; the LoRA turn of the same iteration trains on it detached


class EMA(nn.Module):
    """fp32 shadow of the student's parameters; decay_s = min((1 + s) / (10 + s), cap) (docs/method.md, "Training", step 6)."""

    def __init__(self, module: nn.Module, decay_cap: float):
        super().__init__()
        self.shadow = nn.ParameterList(nn.Parameter(p.detach().float().clone(), requires_grad=False) for p in module.parameters())
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.decay_cap = decay_cap

    def decay(self) -> float:
        s = int(self.num_updates)
        return min((1 + s) / (10 + s), self.decay_cap)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        weight = 1 - self.decay()
        for shadow, p in zip(self.shadow, module.parameters(), strict=True):
            shadow.lerp_(p.detach().float(), weight)  # shadow = decay * shadow + (1 - decay) * p
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> nn.Module:
        for shadow, p in zip(self.shadow, module.parameters(), strict=True):
            p.copy_(shadow)
        return module


class Distiller(nn.Module):
    """Takes ownership of ``components.unet`` (it becomes the shared teacher base with the LoRA adapter).

    The student starts as a copy of the teacher's weights unless ``student_unet`` is given.
    """

    def __init__(self, components: Components, config: DistillConfig, student_unet: UNet2DConditionModel | None = None):
        super().__init__()
        self.config = config
        alphas = components.scheduler.alphas_cumprod.float()
        if components.unet.config.sample_size % config.regression_pool:
            raise ValueError(f"regression_pool {config.regression_pool} must divide the latent's size "
                             f"{components.unet.config.sample_size}")
        student_unet = student_unet if student_unet is not None else copy.deepcopy(components.unet)
        student_unet.requires_grad_(True).train()
        plan = plan_for(alphas, config.mode, config.num_steps, config.spacing, config.timesteps,
                        components.scheduler.config.steps_offset)
        self.student = TiUEGenerator(student_unet, plan, config.mode)

        self.unet = components.unet  # the teacher; with a LoRA fake score also its shared base
        self.unet.requires_grad_(False).eval()
        self.fake_unet = None  # a separate network only for fake_score == "full"
        if config.fake_score == "full":
            self.fake_unet = copy.deepcopy(self.unet).requires_grad_(True).train()
        else:
            self.unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights=True,
                                             target_modules=list(config.lora_target_modules)), adapter_name=ADAPTER)
            for name, p in self.unet.named_parameters():
                p.requires_grad_(f"lora_A.{ADAPTER}" in name or f"lora_B.{ADAPTER}" in name)
        self.text_encoder = components.text_encoder.requires_grad_(False).eval()
        self.tokenizer = components.tokenizer
        self.register_buffer("alphas_cumprod", alphas, persistent=False)
        # The empty-prompt states are used by every CFG call and by prompt dropout: compute once.
        self.register_buffer("uncond_text", self.encode_text(self.tokenize([""])), persistent=False)  # (1, 77, D)
        self.ema = EMA(student_unet, config.ema_decay)
        self.teacher_pairs: TeacherPairs | None = None  # set by the caller when regression_weight > 0
        self.real_latents: torch.Tensor | None = None  # set by the caller when config.uses_real_images
        self.discriminator = None  # DMD2's head on the fake score's bottleneck, only when config.uses_real_images
        if config.uses_real_images:
            if getattr(self.fake_score, "mid_block", None) is None:
                raise ValueError("gan_weight > 0 or an f-divergence needs a fake score UNet with a mid block "
                                 "(its bottleneck features)")
            self.discriminator = DiscriminatorHead(self.fake_score.config.block_out_channels[-1], config.gan_head_channels)

    def set_teacher_pairs(self, pairs: TeacherPairs) -> None:
        """The stored (noise, prompt) -> teacher-sample pairs of DMD's regression loss (docs/method.md)."""
        if pairs.noise.shape[1:] != self._latent_shape():
            raise ValueError(f"teacher pairs hold latents {tuple(pairs.noise.shape[1:])}, "
                             f"the student makes {self._latent_shape()}")
        device = self.alphas_cumprod.device
        self.teacher_pairs = TeacherPairs(pairs.noise.to(device), pairs.x0.to(device), pairs.input_ids)

    def set_real_images(self, latents: torch.Tensor) -> None:
        """Latents (N, C, H, W) of real training images, scaled like the teacher's (loopfree.gan.encode_real_images):
        the real side of DMD2's discriminator (docs/method.md)."""
        if latents.shape[1:] != self._latent_shape():
            raise ValueError(f"real images hold latents {tuple(latents.shape[1:])}, the student makes {self._latent_shape()}")
        self.real_latents = latents.float().to(self.alphas_cumprod.device)

    # -- roles ---------------------------------------------------------------------------------
    @property
    def fake_score(self) -> UNet2DConditionModel:
        """The module that holds the fake score's trainable weights (the shared base for a LoRA)."""
        return self.unet if self.fake_unet is None else self.fake_unet

    def fake_score_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.fake_score.parameters() if p.requires_grad]

    def student_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The GAN head's weights (none unless config.uses_real_images); they train in the fake-score turn."""
        return [] if self.discriminator is None else list(self.discriminator.parameters())

    @contextlib.contextmanager
    def teacher_mode(self):
        """The frozen teacher: the base UNet with the LoRA adapter disabled (a no-op with a full-copy fake score)."""
        if self.fake_unet is not None:
            yield self.unet
            return
        self.unet.disable_adapters()
        try:
            yield self.unet
        finally:
            self.unet.enable_adapters()

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, 77) token ids -> (B, 77, D) states of the frozen text encoder."""
        return self.text_encoder(input_ids.to(self.text_encoder.device))[0]

    def text_states(self, batch: dict) -> torch.Tensor:
        """Batches carry token ids; callers may add precomputed "text_states" to share them between turns."""
        if "text_states" in batch:
            return batch["text_states"]
        return self.encode_text(batch["input_ids"])

    # -- turns ---------------------------------------------------------------------------------
    def _guided_eps(self, unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
        """CFG noise prediction e_u + s (e_c - e_u), one call on [uncond; cond]; s = 1 needs the cond half only,
        s = 0 (Zero-CFG's fake branch) the uncond half only. Differentiable in x_t: VSD calls it under no_grad,
        SiD with gradient."""
        B = x_t.shape[0]
        text = text.to(unet.dtype)  # under a bf16/fp16 engine the UNet is half precision, the text encoder may not be
        if scale == 1:
            return unet(x_t, t, encoder_hidden_states=text).sample
        uncond = self.uncond_text.expand(B, -1, -1).to(text.dtype)
        if scale == 0:
            return unet(x_t, t, encoder_hidden_states=uncond).sample
        e_u, e_c = unet(x_t.repeat(2, 1, 1, 1), t.repeat(2), encoder_hidden_states=torch.cat([uncond, text])).sample.chunk(2)
        return cfg(e_u, e_c, scale)

    def noise_maxima(self, step: int) -> tuple[int, int]:
        """(VSD's, the fake score's) highest timestep at update `step`: the whole ranges before vsd_t_max_from_step
        (the layout first), the configured maxima from it on (docs/method.md, the annealed noise schedule)."""
        cfg_ = self.config
        if step < cfg_.vsd_t_max_from_step:
            return max(cfg_.vsd_t_max, VSD_T_TOP), FAKE_SCORE_T_TOP
        return cfg_.vsd_t_max, cfg_.fake_score_t_max

    def student_turn(self, batch: dict, rng: IterationRNG, step: int = 0) -> StudentTurn:
        """Steps 1-3: x0 from the student, VSD against teacher vs fake score, KL on eps_all."""
        cfg_ = self.config
        text = self.text_states(batch)  # (B, 77, D)
        dtype = next(self.student.parameters()).dtype
        device = self.alphas_cumprod.device
        z = rng.randn(self._latent_shape(), device)  # (B, C, H, W)
        x0, eps_all = self.student(z.to(dtype), text.to(dtype))  # (B, C, H, W) fp32, (K, B, C, H, W)

        t = rng.randint(cfg_.vsd_t_min, self.noise_maxima(step)[0], device)  # (B,)
        noise = rng.randn(x0.shape[1:], device)  # (B, C, H, W)
        match_loss = self._sid if cfg_.student_loss == "sid" else self._vsd
        loss_match, logs = match_loss(x0, noise, t, text)
        loss_kl, kl_logs = kl_loss(eps_all, cfg_.lambda_kl, cfg_.kl_reduction)
        loss, logs = loss_match + loss_kl, {**logs, **kl_logs}
        if cfg_.regression_weight > 0:
            loss_reg, reg_logs = self._regression(rng, dtype)
            loss, logs = loss + loss_reg, {**logs, **reg_logs}
        if cfg_.mode_seeking_weight > 0:  # a second sample per prompt, from its own noise, with gradient
            z_b = rng.randn(self._latent_shape(), device)  # (B, C, H, W)
            x0_b, _ = self.student(z_b.to(dtype), text.to(dtype))
            loss_ms, ms_logs = mode_seeking_loss(x0, x0_b, z, z_b, cfg_.mode_seeking_weight)
            loss, logs = loss + loss_ms, {**logs, **ms_logs}
        if cfg_.gan_weight > 0:
            with self._judge_frozen():  # the generator term's gradient must reach x0 only
                loss_gan, gan_logs = gan_generator_loss(self._discriminate(x0, rng), cfg_.gan_weight)
            loss, logs = loss + loss_gan, {**logs, **gan_logs}
        return StudentTurn(loss, logs, x0)

    def _vsd(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: torch.Tensor):
        """VSD (step 2): teacher minus fake score at x_t = noised stopgrad(x0); no gradient through either network."""
        cfg_ = self.config
        alpha_bar_t = self.alphas_cumprod[t]  # (B,) fp32
        x_t = add_noise(x0.detach(), noise, alpha_bar_t)  # (B, C, H, W) fp32
        weight = None  # f-distill: h(r) of each sample, r estimated by the discriminator at the same (x_t, t)
        with torch.no_grad():
            with self.teacher_mode() as teacher:
                eps_teacher = self._guided_eps(teacher, x_t.to(self.unet.dtype), t, text, cfg_.guidance_scale)
            eps_fake = self._guided_eps(self.fake_score, x_t.to(self.fake_score.dtype), t, text, cfg_.fake_cfg)
            if cfg_.divergence != "reverse_kl":
                weight = f_divergence_weights(self._judge(x_t, t), cfg_.divergence)  # (B,)
        loss, logs = vsd_loss(x0, x_t, eps_teacher, eps_fake, alpha_bar_t, cfg_.vsd_weighting, weight)
        if weight is not None:
            logs["fdiv_weight_max"] = weight.max()
        return loss, logs

    def _sid(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: torch.Tensor):
        """SiD's student loss (docs/method.md): x_t keeps its gradient to x0 and both networks are differentiated
        through; the fake score's weights are frozen while the graph is built, so the student's backward leaves
        no gradient on them (the teacher's are frozen anyway)."""
        cfg_ = self.config
        alpha_bar_t = self.alphas_cumprod[t]  # (B,) fp32
        x_t = add_noise(x0, noise, alpha_bar_t)  # (B, C, H, W) fp32, with gradient to x0
        with self.teacher_mode() as teacher:
            eps_teacher = self._guided_eps(teacher, x_t.to(self.unet.dtype), t, text, cfg_.guidance_scale)
        trainable = self.fake_score_parameters()  # after teacher_mode: re-enabling a LoRA makes it trainable again
        try:
            for p in trainable:
                p.requires_grad_(False)
            eps_fake = self._guided_eps(self.fake_score, x_t.to(self.fake_score.dtype), t, text, cfg_.fake_cfg)
        finally:
            for p in trainable:
                p.requires_grad_(True)
        x0_teacher, x0_fake = x0_from_eps(x_t, eps_teacher, alpha_bar_t), x0_from_eps(x_t, eps_fake, alpha_bar_t)
        return sid_loss(x0, x0_teacher, x0_fake, alpha_bar_t, cfg_.vsd_weighting, cfg_.sid_alpha)

    def _regression(self, rng: IterationRNG, dtype: torch.dtype):
        """DMD's regression term: each sample of the batch draws one stored pair (with its own generator, so the
        draw does not depend on how the batch is split) and the student's x0 from that pair's noise and prompt
        is pulled towards the teacher's sample."""
        pairs = self.teacher_pairs
        if pairs is None:
            raise RuntimeError("regression_weight > 0 needs teacher pairs: call Distiller.set_teacher_pairs first")
        idx = rng.randint(0, len(pairs) - 1)  # (B,)
        text = self.encode_text(pairs.input_ids[idx])  # (B, 77, D)
        x0, _ = self.student(pairs.noise[idx.to(pairs.noise.device)].to(dtype), text.to(dtype))  # (B, C, H, W)
        return regression_loss(x0, pairs.x0[idx.to(pairs.x0.device)], self.config.regression_weight,
                               self.config.regression_pool)

    @torch.no_grad()
    def sample_x0(self, batch: dict, rng: IterationRNG) -> torch.Tensor:
        """A fresh student sample for the prompts of ``batch`` (extra fake-score updates train on these)."""
        dtype = next(self.student.parameters()).dtype
        z = rng.randn(self._latent_shape(), self.alphas_cumprod.device)  # (B, C, H, W)
        return self.student(z.to(dtype), self.text_states(batch).to(dtype))[0]

    def fake_score_turn(self, x0_detached: torch.Tensor, batch: dict, rng: IterationRNG, step: int = 0):
        """Step 5: denoising loss of the fake score on stopgrad(x0); the whole batch drops to the empty
        prompt with probability fake_score_prompt_dropout. Gradients reach only the fake score's weights."""
        cfg_ = self.config
        text = self.text_states(batch)
        if rng.shared_uniform() < cfg_.fake_score_prompt_dropout:
            text = self.uncond_text.expand_as(text)
        device = self.alphas_cumprod.device
        t = rng.randint(cfg_.fake_score_t_min, self.noise_maxima(step)[1], device)
        alpha_bar_t = self.alphas_cumprod[t]
        eps = rng.randn(x0_detached.shape[1:], device)
        fake = self.fake_score
        x_t = add_noise(x0_detached.detach(), eps, alpha_bar_t).to(fake.dtype)
        eps_fake = fake(x_t, t, encoder_hidden_states=text.to(fake.dtype)).sample
        loss, logs = fake_score_loss(eps_fake, eps, alpha_bar_t)
        if cfg_.uses_real_images:
            loss_disc, disc_logs = self._discriminator_loss(x0_detached.detach(), rng)
            loss, logs = loss + cfg_.gan_disc_weight * loss_disc, {**logs, **disc_logs}
        return loss, logs

    # -- DMD2's GAN term (docs/method.md, "Keeping the teacher's diversity") --------------------------------
    def _discriminate(self, x: torch.Tensor, rng: IterationRNG) -> torch.Tensor:
        """Logits (B,) of latents x (B, C, H, W): noised at t ~ U{fake_score_t_min..t_max} from each sample's own
        generator, judged on the fake score's bottleneck for the empty prompt (the real images carry no prompt)."""
        device = self.alphas_cumprod.device
        t = rng.randint(self.config.fake_score_t_min, self.config.fake_score_t_max, device)  # (B,)
        return self._judge(add_noise(x, rng.randn(x.shape[1:], device), self.alphas_cumprod[t]), t)

    def _judge(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The head's logits (B,) of noised latents x_t (B, C, H, W) at timesteps t (B,)."""
        fake = self.fake_score
        with bottleneck(fake) as features:
            fake(x_t.to(fake.dtype), t, encoder_hidden_states=self.uncond_text.expand(len(x_t), -1, -1).to(fake.dtype))
        return self.discriminator(features[0])  # (B,)

    def _discriminator_loss(self, x0_detached: torch.Tensor, rng: IterationRNG):
        """Each sample draws one real image (its own generator, as the regression pairs); both sides are noised.
        The loss trains the head and, through the bottleneck, the fake score's encoder, as in DMD2, where the
        classifier shares the fake score's UNet; gan_disc_weight keeps it small beside the denoising loss."""
        real = self.real_latents
        if real is None:
            raise RuntimeError("gan_weight > 0 or an f-divergence needs real images: call Distiller.set_real_images first")
        x_real = real[rng.randint(0, len(real) - 1).to(real.device)]  # (B, C, H, W)
        return gan_discriminator_loss(self._discriminate(x_real, rng), self._discriminate(x0_detached, rng))

    @contextlib.contextmanager
    def _judge_frozen(self):
        """The fake score's and the head's weights stop requiring grad for the generator term: their .grad would
        otherwise be filled in the student turn and leak into the next fake-score step."""
        params = self.fake_score_parameters() + self.discriminator_parameters()
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    # -- EMA and export ------------------------------------------------------------------------
    def update_ema(self) -> None:
        self.ema.update(self.student.unet)

    def export_unet(self) -> UNet2DConditionModel:
        """A fresh UNet carrying the EMA weights: the model that ships (docs/method.md, "Training", step 6)."""
        unet = UNet2DConditionModel.from_config(self.student.unet.config).to(self.ema.shadow[0].device)
        return self.ema.copy_to(unet).eval().requires_grad_(False)

    def _latent_shape(self) -> tuple[int, int, int]:
        c = self.student.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

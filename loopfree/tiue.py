"""The TiUE generator: a stock diffusers UNet split into encoder and decoder (docs/method.md).

The UNet's parameters and modules are untouched; these functions only route its forward pass:
encoder = conv_in + down blocks + mid block, run ONCE at the first timestep t_0; decoder = up blocks
+ conv_norm_out + SiLU + conv_out, run for all K timesteps in ONE batched call ("one-way ticket":
the decoder never sees an updated latent, so the K decoder evaluations are independent).
The K noise maps then compose into the final latent through the closed-form DDIM map
(`schedule.DDIMPlan`). A 1-step SwiftBrush mode (the whole UNet at t = 999, x0 inversion) shares
the module.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from loopfree.schedule import MODES, DDIMPlan

DOWN_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D")
MID_BLOCKS = ("UNetMidBlock2D", "UNetMidBlock2DCrossAttn")
UP_BLOCKS = ("UpBlock2D", "CrossAttnUpBlock2D")
# Config switches that add inputs or change the routing of forward(); the split does not model them.
UNSUPPORTED_CONFIG = ("class_embed_type", "num_class_embeds", "addition_embed_type", "time_cond_proj_dim",
                      "encoder_hid_dim_type", "center_input_sample")


class EncoderFeatures(NamedTuple):
    """What the encoder hands to the decoder: the skip tensors (conv_in output first) and the mid output."""

    skips: tuple[torch.Tensor, ...]
    mid: torch.Tensor


def check_unet(unet: nn.Module) -> None:
    """Refuse UNets the split cannot route exactly like their own forward()."""
    if not isinstance(unet, UNet2DConditionModel):
        raise ValueError(f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    for key in UNSUPPORTED_CONFIG:
        if unet.config.get(key):
            raise ValueError(f"unet config {key}={unet.config[key]!r} is not supported by the TiUE split")
    parts = [("down_blocks", b, DOWN_BLOCKS) for b in unet.down_blocks]
    parts += [("up_blocks", b, UP_BLOCKS) for b in unet.up_blocks]
    if unet.mid_block is not None:
        parts.append(("mid_block", unet.mid_block, MID_BLOCKS))
    for where, block, allowed in parts:
        if type(block).__name__ not in allowed:
            raise ValueError(f"unet {where} contains {type(block).__name__}; the TiUE split supports {allowed}")


def _time_embedding(unet: UNet2DConditionModel, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The UNet's own time embedding, one row per batch element (timesteps: (N,) or scalar)."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timesteps), None)
    return unet.time_embed_act(emb) if unet.time_embed_act is not None else emb


def _block(block: nn.Module, sample: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, **kw):
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=sample, temb=emb, encoder_hidden_states=text, **kw)
    return block(hidden_states=sample, temb=emb, **kw)


def encode(unet: UNet2DConditionModel, z: torch.Tensor, t0: int | torch.Tensor, text: torch.Tensor) -> EncoderFeatures:
    """Encoder pass at the first timestep. z: (B, C, H, W); text: (B, L, D) -> skips + mid output."""
    _check_inputs(unet, z, text)
    emb = _time_embedding(unet, z, torch.as_tensor(t0, device=z.device))  # (B, E)
    sample = unet.conv_in(z)
    skips = (sample,)
    for block in unet.down_blocks:
        sample, res = _block(block, sample, emb, text)
        skips += res
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, emb, encoder_hidden_states=text)
        else:
            sample = unet.mid_block(sample, emb)
    return EncoderFeatures(skips, sample)


def decode(
    unet: UNet2DConditionModel, features: EncoderFeatures, timesteps: Sequence[int] | torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """All K decoder evaluations in one call of batch K*B (layout index k*B + b) -> (K*B, C, H, W)."""
    t = torch.as_tensor(timesteps, device=features.mid.device).reshape(-1)  # (K,)
    K, B = t.shape[0], features.mid.shape[0]
    if K < 1:
        raise ValueError("timesteps must hold at least one timestep")
    if text.shape[0] != B:
        raise ValueError(f"text batch ({text.shape[0]}) must match the encoder features' batch ({B})")
    # Tensor.repeat(K, ...) tiles whole batches, so copy k occupies rows k*B .. k*B+B-1.
    tile = lambda x: x.repeat(K, *([1] * (x.dim() - 1)))  # noqa: E731
    skips = tuple(tile(s) for s in features.skips)
    sample, text_kb = tile(features.mid), tile(text)
    emb = _time_embedding(unet, sample, t.repeat_interleave(B))  # (K*B, E), row k*B+b gets t_k
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        res, skips = skips[-n:], skips[:-n]
        # Forward the skip's size so odd latent sizes upsample exactly as the stock forward does.
        size = skips[-1].shape[2:] if i < len(unet.up_blocks) - 1 else None
        sample = _block(block, sample, emb, text_kb, res_hidden_states_tuple=res, upsample_size=size)
    if unet.conv_norm_out is not None:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


def _check_inputs(unet: UNet2DConditionModel, z: torch.Tensor, text: torch.Tensor) -> None:
    if z.dim() != 4 or z.shape[1] != unet.config.in_channels:
        raise ValueError(f"z must have shape (B, {unet.config.in_channels}, H, W), got {tuple(z.shape)}")
    if text.dim() != 3 or text.shape[0] != z.shape[0]:
        raise ValueError(f"text must have shape (B={z.shape[0]}, L, D), got {tuple(text.shape)}")
    if text.shape[-1] != unet.config.cross_attention_dim:
        raise ValueError(f"text feature size {text.shape[-1]} != unet cross_attention_dim {unet.config.cross_attention_dim}")


class TiUEGenerator(nn.Module):
    """Student generator: noise z and text states -> (final latent, K noise maps).

    mode "tiue": one encoder pass at t_0, one batched decoder pass over t_0..t_{K-1}, closed-form DDIM.
    mode "one_step": SwiftBrush, the whole UNet at plan.timesteps[0] (999) with x0 inversion.
    The module holds the UNet as ``unet`` so optimizers and DeepSpeed see exactly its parameters.
    """

    def __init__(self, unet: UNet2DConditionModel, plan: DDIMPlan, mode: str = "tiue"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "one_step" and plan.num_steps != 1:
            raise ValueError(f"mode 'one_step' needs a 1-step plan, got K={plan.num_steps}")
        check_unet(unet)
        self.unet, self.plan, self.mode = unet, plan, mode

    def forward(self, z: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.generate(z, text)

    def generate(self, z: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z: (B, C, H, W), text: (B, L, D) -> (z_final (B, C, H, W) fp32, eps (K, B, C, H, W))."""
        if self.mode == "one_step":
            _check_inputs(self.unet, z, text)
            eps = self.unet(z, self.plan.timesteps[0], encoder_hidden_states=text).sample[None]  # (1, B, C, H, W)
        else:
            features = encode(self.unet, z, self.plan.timesteps[0], text)
            eps = decode(self.unet, features, self.plan.timesteps, text).unflatten(0, (self.plan.num_steps, z.shape[0]))
        return self.plan.apply(z, eps), eps

"""Model presets: the real SD2.1-base and SD1.5 architectures (configs only) and a tiny test model.

Weights never come from a hub: real models load from a local directory in diffusers layout
(`load_components`); `Preset.build()` makes random-initialised components of a preset's shape.
`tiny()` is SD2.1-base in miniature (same block types, linear projections, epsilon prediction,
SD noise schedule, 8x VAE, 77-token real CLIP tokenizer) and builds in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from loopfree.exports import student_unet_dir
from loopfree.tokenizer import clip_tokenizer

# SD2.1-base / SD1.5 scheduler (docs/method.md, the closed-form DDIM map): scaled_linear 0.00085..0.012, 1000 steps.
SD_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
)
SD_UNET_COMMON = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)


@dataclass
class Components:
    """The five parts of an SD-style text-to-image model, in diffusers layout."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler

    def eval_all(self) -> "Components":
        """Inference mode for all networks (no dropout); training code switches the student back."""
        for module in (self.unet, self.vae, self.text_encoder):
            module.eval()
        return self


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict[str, Any]
    text_encoder: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD_SCHEDULER))
    pad_token: str = "!"

    def build(self, seed: int = 0) -> Components:
        """Random-initialised components of this architecture (deterministic for a seed)."""
        torch.manual_seed(seed)
        return Components(
            unet=UNet2DConditionModel(**self.unet),
            vae=AutoencoderKL(**self.vae),
            text_encoder=CLIPTextModel(CLIPTextConfig(**self.text_encoder)),
            tokenizer=clip_tokenizer(self.pad_token),
            scheduler=DDIMScheduler(**self.scheduler),
        ).eval_all()


def tiny() -> Preset:
    """SD2.1-base in miniature: 8x8 latents (64 px images), 32-d text states, about 2M parameters."""
    return Preset(
        name="tiny",
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4), cross_attention_dim=32, use_linear_projection=True, norm_num_groups=32,
        ),
        text_encoder=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=32, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=0,
        ),
        vae=dict(SD_VAE, sample_size=64, layers_per_block=1, block_out_channels=(8, 16, 16, 16), norm_num_groups=8),
    )


def sd21_base() -> Preset:
    """Stable Diffusion 2.1-base: 64x64x4 latents, OpenCLIP ViT-H text states 77x1024."""
    return Preset(
        name="sd21_base",
        unet=dict(SD_UNET_COMMON, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True),
        text_encoder=dict(
            vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=512, bos_token_id=49406, eos_token_id=49407,
        ),
        vae=dict(SD_VAE),
    )


def sd15() -> Preset:
    """Stable Diffusion 1.5: 64x64x4 latents, CLIP ViT-L text states 77x768."""
    return Preset(
        name="sd15",
        unet=dict(SD_UNET_COMMON, attention_head_dim=8, cross_attention_dim=768),
        text_encoder=dict(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406, eos_token_id=49407,
        ),
        vae=dict(SD_VAE),
        pad_token="<|endoftext|>",
    )


PRESETS = {"tiny": tiny, "sd21_base": sd21_base, "sd15": sd15}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def load_components(directory: str | Path) -> Components:
    """Load a diffusers-layout model directory (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    root = Path(directory)
    missing = [sub for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (root / sub).is_dir()]
    if missing:
        raise ValueError(f"model directory {root} lacks the diffusers subfolders {missing}")
    return Components(
        unet=UNet2DConditionModel.from_pretrained(root / "unet"),
        vae=AutoencoderKL.from_pretrained(root / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
        scheduler=DDIMScheduler.from_pretrained(root / "scheduler"),
    ).eval_all()


def load_student_unet(directory: str | Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(student_unet_dir(directory))

"""Architectures of the Fashion-MNIST teacher (diffusers / transformers classes, small configs) and the
Fashion-MNIST classifier that stands in for the CLIP score.

Shapes: images 3x32x32 in [-1, 1]; the VAE downsamples 4x (three encoder blocks, two downsamplers) to
latents 4x8x8, the same latent size as the `tiny` preset; text states 77x48 from a 2-layer CLIP text
transformer over the real CLIP vocabulary (so the 49,408-row embedding dominates its parameter count).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from loopfree.classifier import SmallImageClassifier
from loopfree.presets import SD_SCHEDULER, Components
from loopfree.tokenizer import clip_tokenizer

TEXT_DIM = 48
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=32,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64), norm_num_groups=8, scaling_factor=1.0,  # set from data after training
)
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=TEXT_DIM, bos_token_id=49406, eos_token_id=49407,
    pad_token_id=0,
)
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(2, 4, 8), cross_attention_dim=TEXT_DIM, use_linear_projection=True, norm_num_groups=32,
)


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def new_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**UNET_CONFIG)


def components(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel) -> Components:
    """The teacher in loopfree's layout: SD2.1-base scheduler, real CLIP tokenizer padded with "!"."""
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer("!"),
                      scheduler=DDIMScheduler(**SD_SCHEDULER)).eval_all()


def save_teacher(parts: Components, directory: str | Path) -> None:
    """diffusers layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/), safetensors weights."""
    root = Path(directory)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(parts, name).save_pretrained(root / name)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False}, indent=2) + "\n")


def save_classifier(model: SmallImageClassifier, directory: str | Path, info: dict) -> None:
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, root / "model.safetensors")
    (root / "config.json").write_text(json.dumps(info, indent=2) + "\n")

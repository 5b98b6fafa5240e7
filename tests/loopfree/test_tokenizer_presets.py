import pytest
import torch

from loopfree.presets import load_components, preset, sd15, sd21_base
from loopfree.tokenizer import clip_tokenizer


def test_real_clip_token_ids():
    # Ids of the original CLIP vocabulary (the one every SD text encoder was trained with).
    tok = clip_tokenizer()
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    padded = tok("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == tok.pad_token_id == 0  # SD2.1 pads with "!"
    assert len(tok("word " * 200, truncation=True, max_length=77).input_ids) == 77


def test_sd15_pads_with_end_of_text():
    assert clip_tokenizer(pad_token="<|endoftext|>").pad_token_id == 49407


def test_tiny_is_sd21_shaped(tiny_components):
    c = tiny_components
    assert c.unet.config.use_linear_projection and c.unet.config.in_channels == 4
    assert c.unet.config.cross_attention_dim == c.text_encoder.config.hidden_size
    assert c.vae.config.scaling_factor == pytest.approx(0.18215)
    assert 2 ** (len(c.vae.config.block_out_channels) - 1) == 8  # SD's 8x VAE
    assert c.scheduler.config.beta_schedule == "scaled_linear" and not c.scheduler.config.set_alpha_to_one


def test_real_architectures_are_described():
    assert sd21_base().unet["cross_attention_dim"] == 1024 and sd21_base().unet["use_linear_projection"]
    assert sd15().unet["cross_attention_dim"] == 768 and sd15().text_encoder["hidden_size"] == 768
    assert sd21_base().unet["block_out_channels"] == (320, 640, 1280, 1280)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("sdxl")


def test_load_components_round_trip(tmp_path, tiny_components):
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        getattr(tiny_components, name).save_pretrained(tmp_path / name)
    loaded = load_components(tmp_path)
    for a, b in zip(loaded.unet.state_dict().values(), tiny_components.unet.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_load_components_names_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="unet"):
        load_components(tmp_path)

import ast
import hashlib
import inspect
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

import loopfree.tokenizer
from loopfree.presets import load_components, preset, sd15, sd21_base
from loopfree.tokenizer import bpe_bytes, clip_tokenizer

ROOT = Path(__file__).resolve().parents[2]
CLIP_BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"  # openai/CLIP's file


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


def test_tokenizer_is_built_from_the_shipped_file_without_network_or_writes(tmp_path, monkeypatch):
    """The BPE file is package data (pyproject's package-data), CLIP's own; nothing is fetched or cached."""
    assert hashlib.sha256(bpe_bytes()).hexdigest() == CLIP_BPE_SHA256
    tree = ast.parse(inspect.getsource(loopfree.tokenizer))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"subprocess", "pip", "urllib", "requests", "huggingface_hub", "zipfile", "tempfile"}
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LOOPFREE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LOOPFREE_CLIP_BPE", raising=False)
    assert clip_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not list(tmp_path.iterdir())  # nothing written


def test_clip_bpe_override(tmp_path, monkeypatch):
    copy = tmp_path / "bpe.txt.gz"
    copy.write_bytes(bpe_bytes())
    monkeypatch.setenv("LOOPFREE_CLIP_BPE", str(copy))
    assert clip_tokenizer()("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    monkeypatch.setenv("LOOPFREE_CLIP_BPE", str(tmp_path / "missing.txt.gz"))
    with pytest.raises(FileNotFoundError, match="missing.txt.gz"):
        clip_tokenizer()


def test_same_ids_as_the_teachers_saved_tokenizer():
    """models/fashion-teacher/tokenizer was saved from this tokenizer: the full CLIP vocabulary, same ids."""
    saved, built = CLIPTokenizer.from_pretrained(ROOT / "models" / "fashion-teacher" / "tokenizer"), clip_tokenizer()
    assert len(saved) == len(built) == 49408 and saved.get_vocab() == built.get_vocab()
    for text in ["an ankle boot, grayscale!!", "Ünïcödé café, 東京 🚀", "word " * 100]:
        assert saved(text, truncation=True, max_length=77).input_ids == built(text, truncation=True, max_length=77).input_ids


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

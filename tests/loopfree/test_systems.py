import pytest
import torch

from loopfree.analysis import adjacent_step_similarity
from loopfree.features import to_uint8
from loopfree.pipeline import TiUEPipeline
from loopfree.systems import SystemConfig, load_system


def test_tiue_directory_teacher_and_diffusers_directory(tmp_path, tiny_components):
    from diffusers import StableDiffusionPipeline

    c = tiny_components
    TiUEPipeline.from_components(c, num_steps=2).save_pretrained(tmp_path / "tiue")
    StableDiffusionPipeline(c.vae, c.text_encoder, c.tokenizer, c.unet, c.scheduler, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    prompts, seeds = ["a cat", "a red shoe"], [0, 1]

    tiue, label = load_system(SystemConfig("tiue", model_dir=str(tmp_path / "tiue")))
    images = tiue(prompts, seeds)
    assert label == "1 enc + 2 dec" and images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.equal(tiue(prompts[1:], seeds[1:]), images[1:])  # an image depends on its own seed only

    teacher, label = load_system(SystemConfig("teacher", model_dir=str(tmp_path / "sd"), num_inference_steps=3,
                                              guidance_scale=2.0))
    expected = TiUEPipeline.from_components(c).sample_multistep(prompts, 3, 2.0, seeds=seeds, output_type="np").images
    assert label == "3" and torch.equal(teacher(prompts, seeds), to_uint8(expected))

    sd, label = load_system(SystemConfig("diffusers", model_dir=str(tmp_path / "sd"), num_inference_steps=2))
    assert label == "2" and sd(prompts, seeds).shape == (2, 3, 64, 64)


def test_system_config_is_validated():
    with pytest.raises(ValueError, match="kind"):
        SystemConfig("gan", preset="tiny")
    with pytest.raises(ValueError, match="exactly one"):
        SystemConfig("tiue")
    with pytest.raises(ValueError, match="model_dir only"):
        SystemConfig("diffusers", preset="tiny")


def test_adjacent_step_similarity_rows(tiny_components):
    pipe = TiUEPipeline.from_components(tiny_components)
    rows = adjacent_step_similarity(pipe, ["a cat", "a dog"], [0, 1], num_steps=5, guidance_scale=3.0)
    assert [r.step for r in rows] == [2, 3, 4, 5]
    assert [r.timestep for r in rows] == [601, 401, 201, 1]
    assert all(-1 <= r.encoder_cosine <= 1 and -1 <= r.decoder_cosine <= 1 for r in rows)
    # Without CFG the UNet sees only the conditional batch: the same rows, computed on batch B.
    assert len(adjacent_step_similarity(pipe, ["a cat"], [0], num_steps=3, guidance_scale=1.0)) == 2
    with pytest.raises(ValueError, match=">= 2"):
        adjacent_step_similarity(pipe, ["a cat"], [0], num_steps=1)

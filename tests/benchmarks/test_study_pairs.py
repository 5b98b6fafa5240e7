"""The study's regression pairs (benchmarks/fashion/study.py, study_pairs): as many as the recipe's
`regression_pairs`, equal to the teacher's own DDIM samples from the pairs' noises (or, with
`regression_finish_from`, the initial student's samples finished by the teacher), and cached per count, start,
steps, guidance and first pair seed so that a second run reads them instead of sampling again."""

import torch

from benchmarks.fashion import study
from benchmarks.fashion.study import TEACHER, study_pairs
from benchmarks.fashion.study_recipes import BASE
from examples.fashion.data import all_captions
from loopfree.config import DistillConfig
from loopfree.pairs import pair_seeds
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import load_components


def test_the_study_makes_as_many_pairs_as_regression_pairs_equal_to_the_teachers_samples_and_reads_its_cache(
        tmp_path, monkeypatch):
    monkeypatch.setattr(study, "WORK", tmp_path)
    config = DistillConfig(**{**BASE, "regression_weight": 1.0, "regression_pairs": 3, "regression_teacher_steps": 2,
                              "regression_guidance_scale": 3.0})
    components = load_components(TEACHER)
    pairs = study_pairs(config, components)
    assert len(pairs) == 3
    cache = tmp_path / "pairs-3-2steps-g3-seed2147483648.safetensors"  # named by its first pair seed, 2**31
    assert cache.is_file() and not list(tmp_path.glob("*.tmp"))  # written whole, no partial file left
    # independent of study_pairs: the teacher's 2-step sampler from the same seeds
    pipe = TiUEPipeline.from_components(components)
    pipe.set_progress_bar_config(disable=True)
    seeds = pair_seeds(0, 3)
    assert torch.equal(pairs.noise, pipe.prepare_latents(seeds).cpu())
    prompts = [all_captions()[i % len(all_captions())] for i in range(3)]  # caption i % 80 for pair i
    x0 = pipe.sample_multistep(prompts, num_inference_steps=2, guidance_scale=3.0, seeds=seeds,
                               output_type="latent").images
    torch.testing.assert_close(pairs.x0, x0.float().cpu(), rtol=1e-4, atol=1e-4)
    before = cache.stat().st_mtime_ns  # a second call that sampled again would replace the file
    again = study_pairs(config, components)
    assert torch.equal(again.x0, pairs.x0) and cache.stat().st_mtime_ns == before


def test_refined_pairs_are_the_initial_students_samples_renoised_with_their_mirrored_z_and_finished_by_the_teacher(
        tmp_path, monkeypatch):
    from diffusers import DDIMScheduler

    monkeypatch.setattr(study, "WORK", tmp_path)
    config = DistillConfig(**{**BASE, "regression_weight": 1.0, "regression_pairs": 2, "regression_finish_from": 481,
                              "guidance_scale": 2.0})
    components = load_components(TEACHER)
    pairs = study_pairs(config, components)
    assert (tmp_path / "pairs-2-refine481-50steps-g2-seed2147483648.safetensors").is_file() and len(pairs) == 2
    # independent of loopfree.pairs: diffusers' add_noise and DDIM step on the 50-step schedule from t = 481
    pipe = TiUEPipeline.from_components(components)
    pipe.set_progress_bar_config(disable=True)
    seeds, prompts = pair_seeds(0, 2), all_captions()[:2]
    z = pipe.prepare_latents(seeds)
    assert torch.equal(pairs.noise, z.cpu())
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(50)
    x = scheduler.add_noise(pipe(prompts, seeds=seeds, output_type="latent").images, z.flip(-1), torch.tensor([481, 481]))
    text, uncond = pipe.encode_prompt(prompts), pipe.encode_prompt(["", ""])
    with torch.no_grad():
        for t in [int(t) for t in scheduler.timesteps if t <= 481]:
            e_u, e_c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, text])).sample.chunk(2)
            x = scheduler.step(e_u + 2.0 * (e_c - e_u), t, x).prev_sample
    torch.testing.assert_close(pairs.x0, x.float(), rtol=1e-4, atol=1e-4)

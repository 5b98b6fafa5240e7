"""The diversity options (docs/method.md, "Keeping the teacher's diversity"): each does what it must, not only runs."""

import copy

import pytest
import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.losses import regression_loss
from loopfree.pairs import TeacherPairs, make_refined_pairs, make_teacher_pairs, pair_seeds
from loopfree.pipeline import TiUEPipeline
from loopfree.rng import IterationRNG
from loopfree.training import LocalEngine, train_iteration

PROMPTS = ["a photo of a cat", "a red sneaker"]
SMALL = dict(lora_rank=4, lora_alpha=8.0, lambda_kl=0.0)


def make(tiny_components, **overrides) -> Distiller:
    return Distiller(copy.deepcopy(tiny_components), DistillConfig(**{**SMALL, **overrides}))


def test_regression_loss_is_the_weighted_mean_squared_latent_error_and_its_gradient_points_at_the_teacher():
    x0 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)  # (1, 1, 2, 2)
    teacher = torch.tensor([[[[1.0, 0.0], [3.0, 8.0]]]])
    loss, logs = regression_loss(x0, teacher, weight=0.5)
    assert loss.item() == pytest.approx(0.5 * (0 + 4 + 0 + 16) / 4)  # hand-computed: 2.5
    loss.backward()
    torch.testing.assert_close(x0.grad, 0.5 * 2 * (x0.detach() - teacher) / 4)  # d/dx0 = 2 w (x0 - x0_teacher) / N
    assert logs["loss_regression"].item() == pytest.approx(2.5)


def test_pooled_regression_compares_block_means_by_hand_and_ignores_detail_inside_a_block():
    x0 = torch.tensor([[[[1.0, 3.0, 0.0, 0.0], [5.0, 7.0, 0.0, 0.0]]]], requires_grad=True)  # (1, 1, 2, 4)
    teacher = torch.tensor([[[[4.0, 4.0, 1.0, -1.0], [4.0, 4.0, -1.0, 1.0]]]])
    # block means: student (4, 0), teacher (4, 0): the same layout, different detail in both blocks
    assert regression_loss(x0, teacher, weight=1.0, pool=2)[0].item() == 0.0
    assert regression_loss(x0, teacher, weight=1.0, pool=1)[0].item() == pytest.approx((9 + 1 + 1 + 9 + 1 + 1 + 1 + 1) / 8)
    moved = teacher + torch.tensor([0.0, 0.0, 2.0, 2.0]).expand(1, 1, 2, 4)  # the right block's mean is 2, not 0
    loss, _ = regression_loss(x0, moved, weight=0.5, pool=2)
    assert loss.item() == pytest.approx(0.5 * (0 + 4) / 2)  # hand-computed over the 2 block means
    loss.backward()  # each element of a block gets a quarter of its block mean's gradient: 0.5 * 2 * (0 - 2) / 2 / 4
    torch.testing.assert_close(x0.grad, torch.tensor([[[[0.0, 0.0, -0.25, -0.25], [0.0, 0.0, -0.25, -0.25]]]]))
    with pytest.raises(ValueError, match="regression_pool 3 must divide"):
        regression_loss(x0, teacher, weight=1.0, pool=3)


@pytest.mark.parametrize("bad, key", [(dict(regression_weight=-1.0), "regression_weight"),
                                      (dict(regression_pairs=0), "regression_pairs"),
                                      (dict(regression_teacher_steps=0), "regression_teacher_steps"),
                                      (dict(regression_guidance_scale=0.5), "regression_guidance_scale"),
                                      (dict(regression_pool=0), "regression_pool"),
                                      (dict(regression_pool=1.5), "regression_pool"),
                                      (dict(regression_finish_from=0), "regression_finish_from"),
                                      (dict(regression_finish_from=1000), "regression_finish_from"),
                                      (dict(regression_finish_from=481, regression_renoise="mirrored"),
                                       "regression_renoise"),
                                      (dict(regression_renoise="fresh"), "regression_renoise")])
def test_bad_regression_settings_are_refused_naming_the_key(bad, key):
    with pytest.raises(ValueError, match=key):
        DistillConfig(**bad)


def test_regression_is_off_by_default_and_pairs_guidance_follows_the_teacher():
    config = DistillConfig(guidance_scale=2.0)
    assert config.regression_weight == 0 and config.pair_cfg == 2.0
    assert DistillConfig(guidance_scale=2.0, regression_guidance_scale=3.0).pair_cfg == 3.0


def test_teacher_pairs_are_the_teachers_ddim_samples_from_their_own_noise_whatever_the_batching(tiny_components):
    pipe = TiUEPipeline.from_components(copy.deepcopy(tiny_components))
    pipe.set_progress_bar_config(disable=True)
    seeds = pair_seeds(0, 3)
    pairs = make_teacher_pairs(pipe, PROMPTS + PROMPTS[:1], seeds, num_inference_steps=3, guidance_scale=2.0, batch_size=2)
    assert len(pairs) == 3 and pairs.noise.shape == pairs.x0.shape == (3, 4, 8, 8)
    one = pipe.sample_multistep([PROMPTS[1]], num_inference_steps=3, guidance_scale=2.0, seeds=[seeds[1]],
                                output_type="latent").images
    torch.testing.assert_close(pairs.x0[1:2], one, rtol=1e-5, atol=1e-5)  # pair 1 alone = pair 1 in a batch of 2
    torch.testing.assert_close(pairs.noise[1], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(seeds[1])))
    assert not torch.allclose(pairs.x0[0], pairs.x0[2])  # same prompt, other noise: another sample


@pytest.mark.parametrize("renoise", ["mirrored_z", "fresh"])
def test_refined_pairs_finish_the_students_sample_renoised_as_asked_whatever_the_batching(tiny_components, renoise):
    from diffusers import DDIMScheduler

    teacher = TiUEPipeline.from_components(copy.deepcopy(tiny_components))
    student = TiUEPipeline.from_components(copy.deepcopy(tiny_components), num_steps=2)
    with torch.no_grad():  # a student that is not the teacher, so that the test tells the two apart
        for p in student.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    seeds = pair_seeds(0, 3)
    pairs = make_refined_pairs(student, teacher, PROMPTS + PROMPTS[:1], seeds, finish_from=600,
                               num_inference_steps=4, guidance_scale=2.0, batch_size=2, renoise=renoise)
    assert torch.equal(pairs.noise, teacher.prepare_latents(seeds))
    # independent of loopfree.pairs: diffusers' add_noise and DDIM step; the 4-step schedule is 751, 501, 251, 1
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [751, 501, 251, 1]
    z = teacher.prepare_latents(seeds[1:2])
    # the re-noise: z mirrored, or a draw of its own from seed + 2**30 (written out, not loopfree's constant)
    n = z.flip(-1) if renoise == "mirrored_z" else \
        torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seeds[1] + 2 ** 30))
    assert not torch.allclose(n, z) and not torch.allclose(n, -z)
    x = scheduler.add_noise(student(PROMPTS[1:2], seeds=seeds[1:2], output_type="latent").images, n,
                            torch.tensor([501]))
    text, uncond = teacher.encode_prompt(PROMPTS[1:2]), teacher.encode_prompt([""])
    with torch.no_grad():
        for t in (501, 251, 1):
            e_u, e_c = teacher.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, text])).sample.chunk(2)
            x = scheduler.step(e_u + 2.0 * (e_c - e_u), t, x).prev_sample
    torch.testing.assert_close(pairs.x0[1:2], x, rtol=1e-5, atol=1e-5)  # pair 1, made in a batch of 2, alone here
    own = make_teacher_pairs(teacher, PROMPTS[1:2], seeds[1:2], num_inference_steps=4, guidance_scale=2.0)
    assert not torch.allclose(pairs.x0[1:2], own.x0, atol=1e-3)  # not the teacher's own sample from z


def test_pair_noise_is_no_evaluation_seeds_noise_although_torch_seeds_with_32_bits(tiny_components):
    pipe = TiUEPipeline.from_components(copy.deepcopy(tiny_components))
    # the reason for the offsets' size: torch's CPU generator draws the same noise for s and s + 2**32
    assert torch.equal(pipe.prepare_latents([5]), pipe.prepare_latents([5 + 2 ** 32]))
    pairs = pipe.prepare_latents(pair_seeds(0, 1024)).flatten(1)  # (1024, C*H*W)
    for first in (0, 10_000, 2 ** 31 - 1024):  # the study's test and validation seeds, the top of the random ones
        evaluation = pipe.prepare_latents(list(range(first, first + 1024))).flatten(1)
        assert torch.cdist(pairs, evaluation).min() > 1.0  # no pair shares its z with an evaluation image
    with pytest.raises(ValueError, match="outside"):
        pair_seeds(2 ** 30 - 1, 2)


def test_teacher_pairs_survive_a_save_and_load(tmp_path):
    pairs = TeacherPairs(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randint(0, 100, (2, 77)))
    pairs.save(tmp_path / "pairs.safetensors")
    back = TeacherPairs.load(tmp_path / "pairs.safetensors")
    for k in ("noise", "x0", "input_ids"):
        torch.testing.assert_close(getattr(back, k), getattr(pairs, k))
    with pytest.raises(ValueError, match="disagree"):
        TeacherPairs(torch.randn(2, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.zeros(2, 77, dtype=torch.long))


def test_regression_without_pairs_or_with_pairs_of_another_shape_is_refused(tiny_components):
    d = make(tiny_components, regression_weight=1.0)
    with pytest.raises(RuntimeError, match="set_teacher_pairs"):
        d.student_turn({"input_ids": d.tokenize(PROMPTS)}, IterationRNG(0, 0, 0, 2))
    with pytest.raises(ValueError, match="latents"):
        d.set_teacher_pairs(TeacherPairs(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.zeros(1, 77, dtype=torch.long)))


def test_the_student_turn_pools_its_regression_as_configured(tiny_components):
    # pairs whose targets are the student's own samples plus a 2 x 2 checkerboard: different detail, same layout
    d = make(tiny_components, regression_weight=1.0, regression_pool=2)
    noise, input_ids = torch.randn(2, 4, 8, 8), d.tokenize(PROMPTS)
    with torch.no_grad():
        x0, _ = d.student(noise, d.encode_text(input_ids))
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(4, 4)  # (8, 8), every 2 x 2 block sums to 0
    d.set_teacher_pairs(TeacherPairs(noise, x0 + checker, input_ids))
    pooled = d.student_turn({"input_ids": input_ids}, IterationRNG(0, 0, 0, 2)).logs["loss_regression"]
    d.config = DistillConfig(**{**SMALL, "regression_weight": 1.0})  # the same turn, compared whole
    whole = d.student_turn({"input_ids": input_ids}, IterationRNG(0, 0, 0, 2)).logs["loss_regression"]
    assert pooled.item() == pytest.approx(0.0, abs=1e-9) and whole.item() == pytest.approx(1.0, rel=1e-5)


def _distance_to_pairs(d: Distiller, pairs: TeacherPairs) -> float:
    with torch.no_grad():
        x0, _ = d.student(pairs.noise, d.encode_text(pairs.input_ids))
    return float((x0 - pairs.x0).square().mean())


@pytest.mark.integration  # slow: distillation iterations
def test_regression_pulls_the_students_samples_towards_the_teachers_and_off_leaves_the_run_unchanged(tiny_components):
    pipe = TiUEPipeline.from_components(copy.deepcopy(tiny_components))
    pipe.set_progress_bar_config(disable=True)
    pairs = make_teacher_pairs(pipe, PROMPTS, pair_seeds(0, 2), num_inference_steps=4, guidance_scale=2.0)
    distances, losses = {}, {}
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        d = make(tiny_components, regression_weight=weight, student_lr=1e-3)
        d.set_teacher_pairs(pairs)
        start = _distance_to_pairs(d, pairs)
        student, fake = (LocalEngine(p, lr, (0.9, 0.999), d.config) for p, lr in
                         ((d.student_parameters(), 1e-3), (d.fake_score_parameters(), 1e-3)))
        logs = [train_iteration(d, student, fake, {"input_ids": d.tokenize(PROMPTS)}, IterationRNG(0, s, 0, 2), s)
                for s in range(8)]
        distances[weight], losses[weight] = _distance_to_pairs(d, pairs) / start, logs[0]["loss_vsd"]
    assert distances[50.0] < 0.5 * distances[0.0]  # the student moved towards the teacher's samples
    assert losses[0.0] == losses[50.0]  # the first VSD loss is drawn from the same randomness either way

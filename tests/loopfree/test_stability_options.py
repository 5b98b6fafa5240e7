"""The options beyond the paper (docs/method.md, "Stability options"): each does what it must, not only runs."""

import copy

import pytest
import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.rng import IterationRNG
from loopfree.training import LocalEngine, distill_local, local_engines, train_iteration, warmup_lr

PROMPTS = ["a photo of a cat", "a red sneaker"]
SMALL = dict(lora_rank=4, lora_alpha=8.0, lambda_kl=0.0)


def make(tiny_components, **overrides) -> Distiller:
    return Distiller(copy.deepcopy(tiny_components), DistillConfig(**{**SMALL, **overrides}))


def batch(d):
    return {"input_ids": d.tokenize(PROMPTS)}


def snapshot(params):
    return [p.detach().clone() for p in params]


def adam_steps(engine: LocalEngine) -> int:
    return int(engine.optimizer.state[engine.params[0]]["step"])


@pytest.mark.integration  # slow: distillation iterations
def test_fake_score_updates_per_student_update(tiny_components):
    d = make(tiny_components, fake_score_updates=3)
    student_engine, fake_engine = local_engines(d)
    train_iteration(d, student_engine, fake_engine, batch(d), IterationRNG(0, 0, 0, 2))
    assert adam_steps(student_engine) == 1 and adam_steps(fake_engine) == 3


def test_extra_fake_updates_train_on_fresh_student_samples(tiny_components):
    d = make(tiny_components)
    rng = IterationRNG(0, 0, 0, 2)
    first = d.sample_x0(batch(d), rng)
    second = d.sample_x0(batch(d), rng)  # the iteration's generator moves on: new noise, new samples
    assert first.shape == (2, 4, 8, 8) and not torch.allclose(first, second)


@pytest.mark.integration  # slow: distillation iterations with a full-copy fake score
def test_full_copy_fake_score_trains_all_its_weights_and_never_the_teacher(tiny_components):
    d = make(tiny_components, fake_score="full")
    base0 = snapshot(d.unet.parameters())
    fake_params = d.fake_score_parameters()
    assert d.fake_score is not d.unet and len(fake_params) == len(list(d.unet.parameters()))
    assert not any(p.requires_grad for p in d.unet.parameters())
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        with d.teacher_mode() as teacher:
            torch.testing.assert_close(d.fake_score(x, t, encoder_hidden_states=text).sample,
                                       teacher(x, t, encoder_hidden_states=text).sample, rtol=0, atol=0)
    fake0 = snapshot(fake_params)
    distill_local(d, [batch(d)] * 2, 2)
    assert all(torch.equal(a, b) for a, b in zip(base0, d.unet.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(fake0, fake_params))


@pytest.mark.parametrize("fake_score", ["lora", "full"])
def test_fake_guidance_is_separate_from_the_teacher_guidance(tiny_components, fake_score):
    """At initialisation fake score == teacher, so equal scales give a zero VSD gradient; a different fake
    scale changes only the fake branch and makes it non-zero."""
    same = make(tiny_components, fake_score=fake_score, guidance_scale=2.0)
    loss_same = float(same.student_turn(batch(same), IterationRNG(0, 0, 0, 2)).logs["vsd_g_norm"])
    split = make(tiny_components, fake_score=fake_score, guidance_scale=2.0, fake_guidance_scale=1.0)
    loss_split = float(split.student_turn(batch(split), IterationRNG(0, 0, 0, 2)).logs["vsd_g_norm"])
    assert loss_same == 0.0 and loss_split > 0.0


def test_guidance_scale_one_is_the_conditional_prediction_alone(tiny_components):
    d = make(tiny_components)
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        cond = d.unet(x, t, encoder_hidden_states=text).sample
        torch.testing.assert_close(d._guided_eps(d.unet, x, t, text, 1.0), cond, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.0, -1.0, 2.5])
def test_fake_guidance_zero_is_the_unconditional_prediction_and_negative_scales_extrapolate_away(tiny_components, scale):
    """Zero-CFG's fake branch (scale 0) is the empty prompt's prediction alone; Anti-CFG (scale < 0) is the same
    line e_u + s (e_c - e_u) past e_u, away from the prompt: both against two plain UNet calls."""
    d = make(tiny_components)
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        e_u = d.unet(x, t, encoder_hidden_states=d.uncond_text.expand(2, -1, -1)).sample
        e_c = d.unet(x, t, encoder_hidden_states=text).sample
        guided = d._guided_eps(d.unet, x, t, text, scale)
    torch.testing.assert_close(guided, e_u + scale * (e_c - e_u), rtol=1e-5, atol=1e-5)
    if scale == 0:
        torch.testing.assert_close(guided, e_u, rtol=0, atol=0)
    assert DistillConfig(fake_guidance_scale=scale).fake_cfg == scale


def test_zero_cfg_vsd_direction_is_teacher_conditional_minus_fake_unconditional(tiny_components):
    """guidance_scale 1 with fake_guidance_scale 0: at initialisation (fake score == teacher) the VSD gradient is
    the teacher's prompt direction e_c - e_u alone, so it vanishes when every prompt is the empty one."""
    d = make(tiny_components, fake_score="full", guidance_scale=1.0, fake_guidance_scale=0.0)
    prompted = float(d.student_turn(batch(d), IterationRNG(0, 0, 0, 2)).logs["vsd_g_norm"])
    empty = float(d.student_turn({"input_ids": d.tokenize(["", ""])}, IterationRNG(0, 0, 0, 2)).logs["vsd_g_norm"])
    assert prompted > 0.0 and empty == 0.0


@pytest.mark.integration  # slow: 5 training iterations
def test_warmup_and_betas_reach_the_optimizers(tiny_components):
    d = make(tiny_components, student_lr=1e-4, fake_score_lr=1e-3, student_warmup_steps=4, fake_score_warmup_steps=2,
             student_adam_betas=(0.0, 0.99), fake_score_adam_betas=(0.5, 0.9))
    student_engine, fake_engine = local_engines(d)
    assert student_engine.optimizer.param_groups[0]["betas"] == (0.0, 0.99)
    assert fake_engine.optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    lrs = []
    for step in range(5):
        train_iteration(d, student_engine, fake_engine, batch(d), IterationRNG(0, step, 0, 2), step)
        lrs.append((student_engine.optimizer.param_groups[0]["lr"], fake_engine.optimizer.param_groups[0]["lr"]))
    assert lrs == [pytest.approx(v) for v in [(2.5e-5, 5e-4), (5e-5, 1e-3), (7.5e-5, 1e-3), (1e-4, 1e-3), (1e-4, 1e-3)]]
    assert warmup_lr(1.0, 0, 0) == 1.0


@pytest.mark.integration  # slow: 5 student updates per sign
@pytest.mark.parametrize("offset", [1.0, -1.0])
def test_student_samples_move_from_the_fake_score_toward_the_teacher(tiny_components, offset):
    """A teacher and fake score with known scores: the fake's noise prediction is the teacher's plus a
    constant `offset`, so the fake places data sqrt((1 - a) / a) * offset lower (x0 space) than the teacher.
    Student updates must move its samples by +offset on average. Swapping teacher and fake score where the
    Distiller computes the VSD gradient reverses the direction and fails this test."""
    d = make(tiny_components, fake_score="full", student_lr=1e-3, fake_score_lr=1e-12, ema_decay=0.0)
    with torch.no_grad():
        d.fake_unet.conv_out.bias.add_(offset)
    probe = {"input_ids": d.tokenize(PROMPTS)}
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = d.student(z, d.text_states(probe))[0]
    distill_local(d, [batch(d)] * 5, 5)
    with torch.no_grad():
        after = d.student(z, d.text_states(probe))[0]
    shift = float((after - before).mean())
    assert shift * offset > 0, f"student samples moved by {shift:+.4f}, expected the sign of {offset:+}"

import copy

import pytest
import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.rng import IterationRNG
from loopfree.training import LocalEngine, distill_local, local_engines, train_iteration

PROMPTS = ["a photo of a cat", "a red sneaker", "a bowl of fruit", "a lighthouse at dusk"]
SMALL_LORA = dict(lora_rank=4, lora_alpha=8.0)


def make(tiny_components, **overrides):
    """A Distiller over private copies (the fixture is shared); returns it and an untouched base UNet."""
    components = copy.deepcopy(tiny_components)
    base = copy.deepcopy(tiny_components.unet)
    return Distiller(components, DistillConfig(**{**SMALL_LORA, **overrides})), base


@pytest.fixture
def distiller(tiny_components):
    return make(tiny_components)


def batch(d, n=2):
    return {"input_ids": d.tokenize(PROMPTS[:n])}


def snapshot(params):
    return [p.detach().clone() for p in params]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def base_params(d):
    return [p for n, p in d.unet.named_parameters() if "lora_" not in n]


def test_only_student_and_lora_parameters_train(distiller):
    d, _ = distiller
    trainable = {id(p) for p in d.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in d.student_parameters()} | {id(p) for p in d.fake_score_parameters()}
    assert d.fake_score_parameters() and all("lora_" in n for n, p in d.unet.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in d.text_encoder.parameters())


def test_teacher_mode_equals_untouched_base_and_lora_teacher_starts_equal(distiller):
    d, base = distiller
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32)
    with torch.no_grad():
        reference = base(x, t, encoder_hidden_states=text).sample
        with d.teacher_mode() as teacher:
            teacher_out = teacher(x, t, encoder_hidden_states=text).sample
        lora_out = d.unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(teacher_out, reference, rtol=0, atol=0)
    torch.testing.assert_close(lora_out, reference, rtol=0, atol=0)  # LoRA B = 0 at start

    train_iteration(d, *local_engines(d), batch(d), IterationRNG(0, 0, 0, 2))
    with torch.no_grad():
        with d.teacher_mode() as teacher:
            torch.testing.assert_close(teacher(x, t, encoder_hidden_states=text).sample, reference, rtol=0, atol=0)
        assert not torch.allclose(d.unet(x, t, encoder_hidden_states=text).sample, reference)


@pytest.mark.integration  # slow: several distillation turns on the tiny model
def test_teacher_base_never_changes_and_turns_touch_only_their_network(distiller):
    d, _ = distiller
    student_engine, fake_score_engine = local_engines(d)
    b, g = batch(d), IterationRNG(0, 0, 0, 2)
    base0, lora0, student0 = snapshot(base_params(d)), snapshot(d.fake_score_parameters()), snapshot(d.student_parameters())

    turn = d.student_turn(b, g)  # student step alone: LoRA and base unchanged
    student_engine.backward(turn.loss)
    student_engine.step()
    assert same(base0, base_params(d)) and same(lora0, d.fake_score_parameters())
    assert not same(student0, d.student_parameters())

    student1 = snapshot(d.student_parameters())  # LoRA step alone: student and base unchanged
    loss, _ = d.fake_score_turn(turn.x0.detach(), b, g)
    fake_score_engine.backward(loss)
    fake_score_engine.step()
    assert same(student1, d.student_parameters()) and same(base0, base_params(d))
    assert not same(lora0, d.fake_score_parameters())

    distill_local(d, [b] * 3, 3, engines=(student_engine, fake_score_engine))
    assert same(base0, base_params(d))


def test_ema_ramp_and_export(distiller):
    d, _ = distiller
    assert d.ema.decay() == pytest.approx(0.1)
    student0 = snapshot(d.student_parameters())
    distill_local(d, [batch(d)], 1)
    # first update: ema = 0.1 * initial + 0.9 * new student
    for e, p0, p1 in zip(d.ema.shadow, student0, d.student_parameters()):
        torch.testing.assert_close(e, 0.1 * p0 + 0.9 * p1.detach())
    assert d.ema.decay() == pytest.approx(2 / 11)
    exported = d.export_unet()
    assert same(list(exported.parameters()), list(d.ema.shadow))
    assert not any(p.requires_grad for p in exported.parameters())


def test_ema_decay_is_capped():
    from loopfree.distiller import EMA

    ema = EMA(torch.nn.Linear(1, 1), decay_cap=0.5)
    ema.num_updates.fill_(1000)
    assert ema.decay() == 0.5


def test_guidance_on_both_branches(distiller):
    d, base = distiller
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        e_c = base(x, t, encoder_hidden_states=text).sample
        e_u = base(x, t, encoder_hidden_states=d.uncond_text).sample
        with d.teacher_mode():
            guided = d._guided_eps(d.unet, x, t, text, 4.5)
    torch.testing.assert_close(guided, e_u + 4.5 * (e_c - e_u), rtol=1e-4, atol=1e-5)


def test_prompt_dropout_uses_the_empty_prompt(tiny_components):
    d, _ = make(tiny_components, fake_score_prompt_dropout=1.0)
    x0 = torch.randn(2, 4, 8, 8)
    dropped, _ = d.fake_score_turn(x0, batch(d), IterationRNG(0, 5, 0, 2))
    d.config = DistillConfig(**SMALL_LORA, fake_score_prompt_dropout=0.0)
    explicit, _ = d.fake_score_turn(x0, {"text_states": d.uncond_text.expand(2, -1, -1)}, IterationRNG(0, 5, 0, 2))
    kept, _ = d.fake_score_turn(x0, batch(d), IterationRNG(0, 5, 0, 2))
    dropped, explicit, kept = (float(x.detach()) for x in (dropped, explicit, kept))
    assert dropped == pytest.approx(explicit, rel=1e-6)
    assert kept != pytest.approx(explicit, rel=1e-6)


@pytest.mark.integration  # slow: trains a one-step student
def test_one_step_student_trains_through_the_same_distiller(tiny_components):
    d, _ = make(tiny_components, mode="one_step")
    assert d.student.mode == "one_step" and d.student.plan.timesteps == (999,)
    before = snapshot(d.student_parameters())
    logs = distill_local(d, [batch(d)] * 2, 2)
    assert len(logs) == 2 and not same(before, d.student_parameters())


def test_student_from_a_given_unet(tiny_components):
    own = copy.deepcopy(tiny_components.unet)
    with torch.no_grad():
        next(own.parameters()).add_(1.0)
    d = Distiller(copy.deepcopy(tiny_components), DistillConfig(**SMALL_LORA), student_unet=own)
    assert d.student.unet is own


def test_nonfinite_gradients_skip_the_step():
    p = torch.nn.Parameter(torch.ones(2))
    engine = LocalEngine([p], 0.1, (0.9, 0.999), DistillConfig())
    engine.backward((p * float("nan")).sum())
    assert engine.step()["skipped"] == 1.0 and torch.equal(p.detach(), torch.ones(2))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"mode": "two_step"}, "mode"),
        ({"num_steps": 0}, "num_steps"),
        ({"spacing": "linspace"}, "spacing"),
        ({"spacing": "custom", "timesteps": (100, 500)}, "timesteps"),
        ({"vsd_t_min": 990, "vsd_t_max": 980}, "vsd_t_min"),
        ({"kl_reduction": "max"}, "kl_reduction"),
        ({"fake_score_prompt_dropout": 1.5}, "fake_score_prompt_dropout"),
        ({"student_lr": 0}, "student_lr"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"student_adam_betas": (0.9,)}, "student_adam_betas"),
        ({"fake_score_adam_betas": (0.9, 1.0)}, "fake_score_adam_betas"),
        ({"spacing": "custom", "timesteps": (999, 500)}, "num_steps is 4"),
        ({"fake_score": "half"}, "fake_score"),
        ({"fake_score_updates": 0}, "fake_score_updates"),
        ({"vsd_weighting": "snr"}, "vsd_weighting"),
        ({"student_warmup_steps": -1}, "student_warmup_steps"),
        ({"fake_guidance_scale": float("nan")}, "fake_guidance_scale"),
        ({"fake_guidance_scale": "1.5"}, "fake_guidance_scale"),
    ],
)
def test_config_errors_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(**overrides)


def test_config_from_dict_rejects_unknown_keys_and_round_trips():
    with pytest.raises(ValueError, match="unknown keys.*lamda_kl"):
        DistillConfig.from_dict({"lamda_kl": 0.2})
    cfg = DistillConfig.from_dict({"lora_target_modules": ["to_q", "to_k", "to_v"], "num_steps": 2})
    assert cfg.lora_target_modules == ("to_q", "to_k", "to_v")
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert DistillConfig().student_lr == 1e-6 and DistillConfig().fake_score_lr == 1e-3 and DistillConfig().guidance_scale == 4.5


def test_nonfinite_gradient_with_finite_loss_is_skipped():
    p = torch.nn.Parameter(torch.zeros(2))
    engine = LocalEngine([p], 0.1, (0.9, 0.999), DistillConfig())
    engine.backward(p.sqrt().sum())  # loss 0, gradient inf at 0
    assert engine.step()["skipped"] == 1.0 and torch.equal(p.detach(), torch.zeros(2))


def test_randomness_does_not_depend_on_the_batch_split():
    whole = IterationRNG(7, 3, first_index=0, batch_size=2)
    parts = [IterationRNG(7, 3, first_index=i, batch_size=1) for i in range(2)]
    torch.testing.assert_close(whole.randn((4, 2, 2)), torch.cat([r.randn((4, 2, 2)) for r in parts]))
    torch.testing.assert_close(whole.randint(0, 999), torch.cat([r.randint(0, 999) for r in parts]))
    assert whole.shared_uniform() == parts[0].shared_uniform() == parts[1].shared_uniform()
    assert not torch.equal(IterationRNG(7, 4, 0, 1).randn((3,)), IterationRNG(7, 3, 0, 1).randn((3,)))

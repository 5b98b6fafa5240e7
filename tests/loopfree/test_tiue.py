import pytest
import torch
from diffusers import UNet2DConditionModel

from loopfree.schedule import ddim_plan, one_step_plan
from loopfree.tiue import TiUEGenerator, decode, encode


def small_unet(layout: str, **overrides) -> UNet2DConditionModel:
    """Small UNets with the block layouts of the real models (SD2.1: linear projections, per-block heads)."""
    torch.manual_seed(0)
    cfg = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=8,
               block_out_channels=(8, 16, 16, 16), cross_attention_dim=16,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if layout == "sd21":
        cfg.update(attention_head_dim=(2, 4, 4, 4), use_linear_projection=True)
    elif layout == "sd15":
        cfg.update(attention_head_dim=2, use_linear_projection=False)
    elif layout == "plain":  # no attention at all, mid block without cross-attention
        cfg.update(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                   block_out_channels=(8, 16), mid_block_type="UNetMidBlock2D")
    cfg.update(overrides)
    return UNet2DConditionModel(**cfg).eval()


@pytest.fixture(scope="module", params=["sd21", "sd15", "plain"])
def unet(request):
    return small_unet(request.param)


def inputs(unet, B, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 4, H, W, generator=g), torch.randn(B, 7, unet.config.cross_attention_dim, generator=g))


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_batched_decode_equals_sequential(unet, B, K):
    z, text = inputs(unet, B)
    timesteps = ddim_plan(torch.linspace(0.999, 0.005, 1000), K, "trailing").timesteps
    with torch.no_grad():
        features = encode(unet, z, timesteps[0], text)
        batched = decode(unet, features, timesteps, text)  # (K*B, C, H, W)
        sequential = torch.cat([decode(unet, features, [t], text) for t in timesteps])
    assert batched.shape == (K * B, 4, 8, 8)
    torch.testing.assert_close(batched, sequential, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("t", [1, 501, 999])
@pytest.mark.parametrize("hw", [(8, 8), (12, 10)])  # 12x10 is not a multiple of 8: upsample sizes are forwarded
def test_one_timestep_equals_stock_forward(unet, t, hw):
    z, text = inputs(unet, 3, *hw)
    with torch.no_grad():
        ours = decode(unet, encode(unet, z, t, text), [t], text)
        stock = unet(z, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-6)


def test_generator_output_layout(tiny_components):
    unet = tiny_components.unet
    plan = ddim_plan(tiny_components.scheduler.alphas_cumprod, 4)
    z, text = inputs(unet, 3)
    text = torch.randn(3, 77, 32)
    with torch.no_grad():
        x0, eps = TiUEGenerator(unet, plan)(z, text)
        features = encode(unet, z, plan.timesteps[0], text)
        for k, t in enumerate(plan.timesteps):  # eps[k, b] is decoder copy k*B + b
            torch.testing.assert_close(eps[k], decode(unet, features, [t], text), rtol=1e-4, atol=1e-5)
    assert eps.shape == (4, 3, 4, 8, 8) and x0.shape == z.shape
    torch.testing.assert_close(x0, plan.apply(z, eps))


def test_gradients_reach_encoder_and_decoder(tiny_components):
    import copy

    unet = copy.deepcopy(tiny_components.unet).train()
    gen = TiUEGenerator(unet, ddim_plan(tiny_components.scheduler.alphas_cumprod, 4))
    z, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    x0, _ = gen(z, text)
    x0.square().mean().backward()
    for part in [unet.conv_in, unet.down_blocks, unet.mid_block, unet.up_blocks, unet.conv_out, unet.time_embedding]:
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads), type(part).__name__
        assert sum(g.abs().sum() for g in grads) > 0, type(part).__name__


def test_one_step_mode_is_whole_unet_at_999_with_x0_inversion(tiny_components):
    unet, alphas = tiny_components.unet, tiny_components.scheduler.alphas_cumprod
    z, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.no_grad():
        x0, eps = TiUEGenerator(unet, one_step_plan(alphas), mode="one_step")(z, text)
        e = unet(z, 999, encoder_hidden_states=text).sample
    a = float(alphas[999])
    torch.testing.assert_close(eps[0], e)
    torch.testing.assert_close(x0, (z - (1 - a) ** 0.5 * e) / a**0.5, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: small_unet("sd21", down_block_types=("SimpleCrossAttnDownBlock2D",) + ("DownBlock2D",) * 3), "down_blocks"),
        (lambda: small_unet("plain", up_block_types=("ResnetUpsampleBlock2D",) * 2), "up_blocks"),
        (lambda: small_unet("plain", class_embed_type="timestep"), "class_embed_type"),
        (lambda: small_unet("plain", time_cond_proj_dim=8), "time_cond_proj_dim"),
        (lambda: torch.nn.Linear(2, 2), "UNet2DConditionModel"),
    ],
)
def test_refuses_unsupported_unets(make, match):
    with pytest.raises(ValueError, match=match):
        TiUEGenerator(make(), ddim_plan(torch.linspace(0.999, 0.005, 1000), 2))


def test_wrong_noise_text_or_mode_raise_an_error_naming_the_argument(tiny_components):
    gen = TiUEGenerator(tiny_components.unet, ddim_plan(tiny_components.scheduler.alphas_cumprod, 2))
    with pytest.raises(ValueError, match="text"):
        gen(torch.randn(2, 4, 8, 8), torch.randn(3, 77, 32))
    with pytest.raises(ValueError, match="text feature size"):
        gen(torch.randn(2, 4, 8, 8), torch.randn(2, 77, 16))
    with pytest.raises(ValueError, match="z must have shape"):
        gen(torch.randn(2, 3, 8, 8), torch.randn(2, 77, 32))
    with pytest.raises(ValueError, match="mode"):
        TiUEGenerator(tiny_components.unet, gen.plan, mode="two_step")
    with pytest.raises(ValueError, match="1-step plan"):
        TiUEGenerator(tiny_components.unet, gen.plan, mode="one_step")

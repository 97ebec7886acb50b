import copy

import pytest
import torch

from diti.diffusion.schedule import NoiseSchedule
from diti.models.diti import DiTiModel
from diti.models.encoder import Encoder
from diti.models.shift_decoder import ShiftDecoder, ZResnetBlock
from diti.partition import Partition


def make_model(unet, mode="stop_grad", k=4):
    enc = Encoder(16, 16, channels=[16, 32], attn_resolutions=[8], norm_groups=8)
    return DiTiModel(unet, enc, Partition(16, k, 1000), NoiseSchedule(), mode)


def test_official_encoder_size():
    enc = Encoder()  # the CelebA64 default
    # the official CELEBA64Encoder's own count (yue-zhongqi/diti, model/representation/encoder/celeba64.py)
    assert sum(p.numel() for p in enc.parameters()) == 1_487_104
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    enc128 = Encoder(128, channels=[64, 128, 256, 256, 256])  # the official FFHQ/Bedroom layout
    assert enc128(torch.randn(1, 3, 128, 128)).shape == (1, 512)


def test_encoder_rejects_bad_shapes():
    with pytest.raises(ValueError, match="not divisible"):
        Encoder(resolution=36, channels=[8, 8, 8], norm_groups=8, attn_resolutions=[])
    with pytest.raises(ValueError, match="never occur"):
        Encoder(resolution=32, channels=[8, 8], norm_groups=8, attn_resolutions=[16, 4])
    enc = Encoder(32, 8, channels=[8, 8], attn_resolutions=[], norm_groups=8)
    with pytest.raises(ValueError, match="expects 32x32"):
        enc(torch.randn(1, 3, 16, 16))


def test_shift_decoder_at_init(tiny_unet):
    dec = ShiftDecoder(copy.deepcopy(tiny_unet), latent_dim=16)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 500, 999])
    eps, g = dec(x, t, torch.randn(4, 16))
    # eps is the frozen DM's own prediction and G is exactly zero (zero-initialised output conv)
    torch.testing.assert_close(eps, tiny_unet.eval()(x, t).sample, rtol=0, atol=1e-6)
    assert torch.equal(g, torch.zeros_like(g))
    assert not eps.requires_grad
    wrapped = [m for m in dec.modules() if isinstance(m, ZResnetBlock)]
    assert len(wrapped) == sum(len(b.resnets) for b in dec.up_blocks) + len(dec.mid_block.resnets)


def test_trainable_parameters_exclude_the_dm(tiny_unet):
    model = make_model(tiny_unet)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not any(id(p) in trainable for p in model.dm.parameters())
    assert all(not p.requires_grad for p in model.dm.parameters())
    assert not any(k.startswith("decoder.dm.") for k in model.trainable_state_dict())
    model.train()
    assert not model.dm.training  # the frozen DM stays in eval mode


@pytest.mark.parametrize("mode", ["base", "stop_grad", "dual"])
def test_training_steps_keep_dm_frozen_and_reach_the_encoder(tiny_unet, mode):
    """Frozen DM weights are bit-identical after training steps; the encoder gets non-zero gradient.

    At step 0 the zero-initialised output conv blocks every gradient upstream of it, so the encoder's
    gradient is checked at the second step, after that conv has moved.
    """
    model = make_model(tiny_unet, mode).train()
    dm_before = {k: v.clone() for k, v in model.dm.state_dict().items()}
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    grads = []
    for _ in range(3):
        out = model(x0, torch.randint(0, 1000, (8,)), torch.randn_like(x0))
        assert out.per_sample.shape == (8,) and out.t.shape == (8,)
        opt.zero_grad()
        out.mean.backward()
        assert all(p.grad is None for p in model.dm.parameters())
        grads.append(sum(p.grad.abs().sum().item() for p in model.encoder.parameters()))
        opt.step()
    assert grads[0] == 0.0 and grads[1] > 0 and grads[2] > 0
    for k, v in model.dm.state_dict().items():
        assert torch.equal(v, dm_before[k]), k


def test_dual_sums_both_losses(tiny_unet):
    model = make_model(tiny_unet, "dual")
    # give G a non-zero output so both passes contribute
    torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.1)
    x0, t = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([5, 300, 600, 900])
    noise = torch.randn_like(x0)
    dual = model(x0, t, noise).per_sample
    model.mode = "base"
    base = model(x0, t, noise).per_sample
    model.mode = "stop_grad"
    sg = model(x0, t, noise).per_sample
    torch.testing.assert_close(dual, base + sg)


def test_unsupported_dm_is_rejected():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=16, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=3)
    with pytest.raises(ValueError, match="class-conditional"):
        ShiftDecoder(unet, 8)


def test_eps_fn_without_code_is_the_dm(tiny_unet):
    model = make_model(tiny_unet).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    torch.testing.assert_close(model.eps_fn(None)(x, t), tiny_unet(x, t).sample)
    # at initialisation G = 0, so the shifted predictor equals the DM too
    torch.testing.assert_close(model.eps_fn(torch.randn(2, 16))(x, t), tiny_unet(x, t).sample)


# ---------------------------------------------------------------------------------------------------
# Official initialisations (decoder.init, encoder.init)
@pytest.mark.parametrize("init", ["dm_copy", "official"])
def test_g_is_exactly_zero_at_init_in_both_decoder_inits(tiny_unet, init):
    torch.manual_seed(3)
    dec = ShiftDecoder(copy.deepcopy(tiny_unet), latent_dim=16, init=init)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([0, 10, 500, 999])
    eps, g = dec(x, t, torch.randn(4, 16))
    assert torch.equal(g, torch.zeros_like(g))
    torch.testing.assert_close(eps, tiny_unet.eval()(x, t).sample, rtol=0, atol=1e-6)
    assert dec.init == init


def test_dm_copy_starts_from_the_dms_weights_and_official_from_fresh_ones(tiny_unet):
    from diffusers.models.attention_processor import Attention

    dm_state = tiny_unet.state_dict()
    copied = ShiftDecoder(copy.deepcopy(tiny_unet), 16, init="dm_copy")
    official = ShiftDecoder(copy.deepcopy(tiny_unet), 16, init="official")
    for dec in (copied, official):  # the frozen DM itself is never touched
        assert all(torch.equal(v, dm_state[k]) for k, v in dec.dm.state_dict().items())
    # the trainable copy's state, under the DM's own names (ZResnetBlock adds ".block")
    def copy_state(dec):
        return {k.replace(".block.", "."): v for k, v in dec.trainable_state_dict().items()
                if k.startswith(("mid_block.", "up_blocks."))}

    same = copy_state(copied)
    assert all(torch.equal(v, dm_state[k]) for k, v in same.items() if k in dm_state)
    fresh = copy_state(official)
    trainable = [m for root in (official.mid_block, official.up_blocks) for m in root.modules()]
    resnets = [m.block for m in trainable if isinstance(m, ZResnetBlock)]
    attentions = [m for m in trainable if isinstance(m, Attention)]
    assert resnets and attentions
    # every residual block's output conv and every attention output projection start at zero ...
    for layer in [r.conv2 for r in resnets] + [a.to_out[0] for a in attentions]:
        assert all(torch.equal(p, torch.zeros_like(p)) for p in layer.parameters())
    # ... every norm at (1, 0), and every other weight is freshly drawn, not the DM's
    for r in resnets:
        assert torch.equal(r.norm1.weight, torch.ones_like(r.norm1.weight)) and not r.norm1.bias.any()
    weights = [k for k in fresh if k.endswith((".conv1.weight", "time_emb_proj.weight", "to_q.weight"))]
    assert weights and all(not torch.equal(fresh[k], dm_state[k]) for k in weights)
    assert torch.equal(official.conv_norm_out.weight, torch.ones_like(official.conv_norm_out.weight))


def test_official_decoder_blocks_start_as_the_identity(tiny_unet):
    dec = ShiftDecoder(copy.deepcopy(tiny_unet), 16, init="official")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 700])
    frozen = dec.frozen_features(x, t)
    zemb = dec.z_embed(torch.randn(2, 16))
    temb = torch.cat([frozen.temb, zemb], dim=1)
    # the mid block (resnet, attention, resnet at one width): each part adds zero to its input
    torch.testing.assert_close(dec.mid_block(frozen.h, temb), frozen.h, rtol=0, atol=1e-6)


def test_official_decoder_init_trains_every_part(tiny_unet):
    """With every block's output zero, gradient reaches the encoder only once the zeros have moved."""
    enc = Encoder(16, 16, channels=[16, 32], attn_resolutions=[8], norm_groups=8)
    model = DiTiModel(tiny_unet, enc, Partition(16, 4, 1000), NoiseSchedule(), "stop_grad", decoder_init="official")
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    x0 = torch.rand(8, 3, 16, 16) * 2 - 1
    grads = []
    for _ in range(4):
        out = model(x0, torch.randint(0, 1000, (8,)), torch.randn_like(x0))
        opt.zero_grad()
        out.mean.backward()
        grads.append(sum(p.grad.abs().sum().item() for p in model.encoder.parameters()))
        opt.step()
    assert grads[0] == 0.0 and grads[-1] > 0


def test_official_encoder_init_zeroes_only_the_attention_output():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    default = Encoder(16, 16, channels=[16, 32], attn_resolutions=[8], norm_groups=8)
    torch.manual_seed(0)
    official = Encoder(16, 16, channels=[16, 32], attn_resolutions=[8], norm_groups=8, init="official")
    (attn,) = [m for m in official.modules() if isinstance(m, Attention)]
    assert not attn.to_out[0].weight.any() and not attn.to_out[0].bias.any()
    h = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(attn(h), h, rtol=0, atol=0)  # the block starts as the identity
    a, b = default.state_dict(), official.state_dict()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert sorted(differ) == sorted(k for k in a if ".to_out.0." in k)
    with pytest.raises(ValueError, match="unknown init"):
        Encoder(16, 16, channels=[16, 32], attn_resolutions=[], norm_groups=8, init="zero")


def test_init_options_come_from_the_config(tiny_unet):
    from diffusers.models.attention_processor import Attention

    from diti.config import ConfigError, DiTiConfig, build_config

    cfg = build_config(DiTiConfig, "shapes-quick", overrides=[
        "decoder.init=official", "encoder.init=official", "encoder.attn_resolutions=[8]"])
    assert (cfg.decoder.init, cfg.encoder.init) == ("official", "official")
    model = DiTiModel.from_config(cfg, tiny_unet)
    assert model.decoder.init == "official"
    (attn,) = [m for m in model.encoder.modules() if isinstance(m, Attention)]
    assert not attn.to_out[0].weight.any()
    defaults = build_config(DiTiConfig)
    assert (defaults.decoder.init, defaults.encoder.init) == ("dm_copy", "default")
    with pytest.raises(ConfigError, match="decoder.init: 'random' is not one of 'dm_copy', 'official'"):
        build_config(DiTiConfig, overrides=["decoder.init=random"])

"""convert_guided_dm: a guided-diffusion / PDAE UNet checkpoint -> a diffusers UNet2DModel with equal outputs.

The reference is tests/reference_guided_unet.py (guided-diffusion's UNetModel with the official key layout).
Equality tolerance: max |diffusers - reference| <= 1e-5 * max(1, max |reference|), float32 on CPU; the two
differ only in summation order (SDPA vs einsum attention), so anything larger is a mapping error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import UNet2DModel

from diti.models.convert import convert_guided_dm
from diti.models.dm import load_dm
from reference_guided_unet import UNetModel

TOL = 1e-5
T_STEPS = torch.tensor([0, 1, 500, 999])

# A PDAE pre-trained-dpms/<name>/config.yml: PDAE's argument names under denoise_fn_config.
PDAE_CONFIG = {
    "dataset_config": {"name": "tiny", "image_size": 16, "image_channel": 3},
    "diffusion_config": {"timesteps": 1000, "betas_type": "linear", "linear_beta_start": 0.0001,
                         "linear_beta_end": 0.02},
    "denoise_fn_config": {
        "model": "TinyDenoiseFn", "dims": 2, "input_channel": 3, "base_channel": 32,
        "channel_multiplier": [1, 2], "num_residual_blocks_of_a_block": 2, "dropout": 0.1,
        "attention_resolutions": [2], "use_new_attention_order": False, "num_heads": 2, "head_channel": -1,
    },
}  # fmt: skip
PDAE_REFERENCE = dict(
    in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2, attention_resolutions=(2,),
    dropout=0.1, channel_mult=(1, 2), num_heads=2, use_scale_shift_norm=True, resblock_updown=True,
)  # fmt: skip
_DROP = object()  # an override value that removes the key


def _guided(**overrides) -> dict:
    """guided-diffusion names, nested as denoise_fn -> model; three levels, attention at ds 1 and 4."""
    model = {
        "image_size": 16, "in_channels": 3, "model_channels": 32, "out_channels": 3, "num_res_blocks": 1,
        "attention_resolutions": [1, 4], "dropout": 0.0, "channel_mult": [1, 2, 2], "conv_resample": True,
        "dims": 2, "num_classes": None, "use_checkpoint": False, "num_heads": 4, "num_head_channels": 16,
        "num_heads_upsample": -1, "use_scale_shift_norm": True, "resblock_updown": True,
        "use_new_attention_order": True,
    }  # fmt: skip
    model = {k: v for k, v in {**model, **overrides}.items() if v is not _DROP}
    return {"denoise_fn": {"model": model}}


def _pdae_with(**overrides) -> dict:
    section = {**PDAE_CONFIG["denoise_fn_config"], **overrides}
    return {**PDAE_CONFIG, "denoise_fn_config": {k: v for k, v in section.items() if v is not _DROP}}


def reference_kwargs(model: dict, **overrides) -> dict:
    """UNetModel arguments from a guided-names model section (lists as tuples)."""
    keys = ("in_channels", "model_channels", "out_channels", "num_res_blocks", "dropout", "conv_resample",
            "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
            "use_new_attention_order", "attention_resolutions", "channel_mult")  # fmt: skip
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items() if k in keys}
    return {**kwargs, **overrides}


def build_reference(seed: int, **kwargs) -> UNetModel:
    """A randomly initialised reference UNet, every weight perturbed (zero-init convs and norms included)."""
    torch.manual_seed(seed)
    model = UNetModel(**kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def write_dm(folder: Path, model: torch.nn.Module, config: dict, wrap: str | None = "ema_denoise_fn") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save({wrap: state, "step": 1000} if wrap else state, folder / "checkpoint.pt")
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    return folder / "checkpoint.pt"


def assert_same_outputs(reference: torch.nn.Module, out: Path, channels: int | None = None) -> float:
    unet = load_dm(out)  # diti's loader: restores per-layer attention heads (attention_heads.json)
    torch.manual_seed(1)
    x = torch.randn(len(T_STEPS), 3, 16, 16)
    with torch.no_grad():
        want = reference(x, T_STEPS)[:, :channels]
        got = unet(x, T_STEPS).sample
    assert got.shape == want.shape
    diff = (got - want).abs().max().item()
    assert diff <= TOL * max(1.0, want.abs().max().item()), f"max abs diff {diff}"
    assert want.abs().max() > 0.1  # a non-trivial output: the perturbed out conv is not zero
    return diff


@pytest.fixture(scope="module")
def pdae_dm(tmp_path_factory):
    """A PDAE-style pre-trained-dpms folder: the reference model and its checkpoint path."""
    model = build_reference(0, **PDAE_REFERENCE)
    return model, write_dm(tmp_path_factory.mktemp("pdae"), model, PDAE_CONFIG)


def test_pdae_config_legacy_attention(pdae_dm, tmp_path):
    model, ckpt = pdae_dm
    out = convert_guided_dm(ckpt, None, tmp_path / "dm")  # None: config.yml beside the checkpoint
    assert_same_outputs(model, out)
    config = json.loads((out / "config.json").read_text())
    assert config["down_block_types"] == ["ResnetDownsampleBlock2D", "AttnDownBlock2D"]
    assert config["up_block_types"] == ["AttnUpBlock2D", "ResnetUpsampleBlock2D"]
    assert config["attention_head_dim"] == 32 and config["sample_size"] == 16
    scheduler = json.loads((out / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDPMScheduler"
    assert (scheduler["num_train_timesteps"], scheduler["beta_schedule"]) == (1000, "linear")
    assert scheduler["beta_start"] == pytest.approx(1e-4) and scheduler["beta_end"] == pytest.approx(0.02)
    assert scheduler["prediction_type"] == "epsilon"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="new-order-head-channels"),
        pytest.param({"use_new_attention_order": False}, id="legacy-order-head-channels"),
        pytest.param(
            {"use_scale_shift_norm": False, "resblock_updown": False, "channel_mult": [1, 2],
             "attention_resolutions": [1, 2], "num_head_channels": -1, "num_heads": 1, "num_res_blocks": 2},
            id="plain-norm-conv-resample-one-head",
        ),  # fmt: skip
    ],
)
def test_guided_config(overrides, tmp_path):
    config = _guided(**overrides)
    model = build_reference(1, **reference_kwargs(config["denoise_fn"]["model"]))
    ckpt = write_dm(tmp_path / "src", model, config)
    assert_same_outputs(model, convert_guided_dm(ckpt, ckpt.parent / "config.yml", tmp_path / "dm"))


def test_attention_resolutions_string_is_pixel_resolutions(tmp_path):
    # guided-diffusion script flags, flat at the top level: "16,8" at 16 px -> ds (1, 2); 1000 linear steps.
    flat = _guided(channel_mult="1,2", attention_resolutions="16,8", use_new_attention_order=False)
    flat = {**flat["denoise_fn"]["model"], "diffusion_steps": 1000, "noise_schedule": "linear",
            "learn_sigma": False, "timestep_respacing": ""}  # fmt: skip
    model = build_reference(2, **reference_kwargs(flat, attention_resolutions=(1, 2), channel_mult=(1, 2)))
    out = convert_guided_dm(write_dm(tmp_path / "src", model, flat), flat, tmp_path / "dm")
    assert_same_outputs(model, out)
    scheduler = json.loads((out / "scheduler_config.json").read_text())
    assert scheduler["beta_start"] == pytest.approx(1e-4) and scheduler["num_train_timesteps"] == 1000


def test_learned_sigma_dropped_only_when_asked(tmp_path):
    config = _guided(learn_sigma=True, out_channels=6)
    model = build_reference(3, **reference_kwargs(config["denoise_fn"]["model"]))
    ckpt = write_dm(tmp_path / "src", model, config)
    with pytest.raises(ValueError, match="learn_sigma"):
        convert_guided_dm(ckpt, config, tmp_path / "refused")
    out = convert_guided_dm(ckpt, config, tmp_path / "dm", drop_learned_sigma=True)
    assert_same_outputs(model, out, channels=3)  # guided-diffusion's output is [eps, variance]


def test_bare_state_dict_with_module_prefix(pdae_dm, tmp_path):
    model, ckpt = pdae_dm
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "bare.pt")
    out = convert_guided_dm(tmp_path / "bare.pt", ckpt.parent / "config.yml", tmp_path / "dm")
    assert_same_outputs(model, out)


def test_ema_weights_win(pdae_dm, tmp_path):
    model, ckpt = pdae_dm
    other = build_reference(9, **PDAE_REFERENCE)
    torch.save({"denoise_fn": other.state_dict(), "ema_denoise_fn": model.state_dict()}, tmp_path / "both.pt")
    assert_same_outputs(model, convert_guided_dm(tmp_path / "both.pt", PDAE_CONFIG, tmp_path / "dm"))


def _write_marker(path: str) -> None:
    Path(path).write_text("pickled code ran")


class _Payload:
    """Unpickling this calls _write_marker(path): harmless, but it is code run by the loader."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (_write_marker, (self.path,))


def test_refuses_pickled_code(pdae_dm, tmp_path):
    model, _ = pdae_dm
    # The payload is live: a plain unpickler runs it.
    torch.save({"x": _Payload(tmp_path / "proof")}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert (tmp_path / "proof").exists()

    marker = tmp_path / "marker"
    torch.save({"ema_denoise_fn": model.state_dict(), "extra": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refusing to load"):
        convert_guided_dm(tmp_path / "evil.pt", PDAE_CONFIG, tmp_path / "dm")
    assert not marker.exists()
    assert not (tmp_path / "dm").exists()


@pytest.mark.parametrize(
    ("config", "named"),
    [
        pytest.param(_pdae_with(num_class=10), "num_class", id="class-conditional"),
        pytest.param(_pdae_with(learn_sigma=True), "learn_sigma", id="learn-sigma"),
        pytest.param(_pdae_with(dims=3), "dims", id="3d"),
        pytest.param(_pdae_with(latent_dim=512), "latent_dim", id="unknown-key"),
        pytest.param(_pdae_with(channel_multiplier=[2, 4]), "channel_multiplier", id="first-mult"),
        pytest.param(_pdae_with(base_channel=_DROP, model_channels=32, num_res_blocks=2), "num_res",
                     id="both-names"),
        pytest.param(_guided(use_scale_shift_norm=_DROP), "use_scale_shift_norm", id="guided-norm-flag"),
        pytest.param(_guided(attention_resolutions="16", image_size=_DROP), "image_size", id="string-size"),
        pytest.param({**PDAE_CONFIG, "diffusion_config": {"betas_type": "cosine"}}, "betas_type", id="betas"),
    ],
)
def test_unconvertible_config_is_named(pdae_dm, tmp_path, config, named):
    with pytest.raises(ValueError, match=named):
        convert_guided_dm(pdae_dm[1], config, tmp_path / "dm")


def test_mismatched_checkpoint_lists_keys(pdae_dm, tmp_path):
    model, _ = pdae_dm
    state = model.state_dict()
    extra = {**state, "label_emb.0.weight": torch.zeros(128, 10)}
    torch.save({"ema_denoise_fn": extra}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"not mapped: \['label_emb.0.weight'\]"):
        convert_guided_dm(tmp_path / "extra.pt", PDAE_CONFIG, tmp_path / "dm")

    missing = {k: v for k, v in state.items() if k != "out.2.bias"}
    torch.save({"ema_denoise_fn": missing}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"unassigned: \['conv_out.bias'\]"):
        convert_guided_dm(tmp_path / "missing.pt", PDAE_CONFIG, tmp_path / "dm")

    # Attention listed at a level the checkpoint has none (pixel resolution 16 read as a rate): caught.
    with pytest.raises(ValueError, match="downsample rates"):
        convert_guided_dm(tmp_path / "extra.pt", _pdae_with(attention_resolutions=[16]), tmp_path / "dm")


def test_converted_dm_serves_as_ditis_frozen_dm(pdae_dm, tmp_path):
    """The converted folder loads through load_dm and carries a shift decoder (resnet up/down sampling)."""
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import load_dm
    from diti.models.shift_decoder import ShiftDecoder

    _, ckpt = pdae_dm
    dm = load_dm(convert_guided_dm(ckpt, None, tmp_path / "dm"), NoiseSchedule())
    dec = ShiftDecoder(dm, latent_dim=8)
    torch.nn.init.normal_(dec.conv_out.weight, std=0.1)
    z = torch.randn(2, 8, requires_grad=True)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    eps, g = dec(x, t, z)
    torch.testing.assert_close(eps, dm(x, t).sample)
    g.square().mean().backward()
    assert z.grad.abs().sum() > 0


def test_convert_dm_cli(pdae_dm, tmp_path):
    """`diti convert-dm` writes a folder that `diti train --dm` accepts (through load_dm)."""
    from typer.testing import CliRunner

    from diti.cli.main import app
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import load_dm

    model, ckpt = pdae_dm
    result = CliRunner().invoke(app, ["convert-dm", str(ckpt), "--out", str(tmp_path / "dm")])
    assert result.exit_code == 0, result.output
    assert_same_outputs(model, tmp_path / "dm")
    load_dm(tmp_path / "dm", NoiseSchedule())
    bad = CliRunner().invoke(app, ["convert-dm", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_fixed_head_count_over_levels_of_different_width(tmp_path):
    """guided-diffusion's num_heads=2 at 32 and 64 channels: head widths 16 and 32, which one
    attention_head_dim cannot say. The converted folder records each layer's heads and loading restores them."""
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import save_dm
    from diti.models.shift_decoder import ShiftDecoder

    config = _pdae_with(attention_resolutions=[1, 2])
    model = build_reference(4, **{**PDAE_REFERENCE, "attention_resolutions": (1, 2)})
    out = convert_guided_dm(write_dm(tmp_path / "src", model, config), None, tmp_path / "dm")
    heads = json.loads((out / "attention_heads.json").read_text())
    assert heads == {"down_blocks.0.attentions.0": 2, "down_blocks.0.attentions.1": 2,
                     "down_blocks.1.attentions.0": 2, "down_blocks.1.attentions.1": 2,
                     "mid_block.attentions.0": 2, **{f"up_blocks.{k}.attentions.{i}": 2
                                                     for k in (0, 1) for i in range(3)}}
    assert_same_outputs(model, out)
    # without the heads file the same weights compute something else: the file is what makes it right
    plain = UNet2DModel.from_pretrained(out).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (plain(x, T_STEPS[:2]).sample - model(x, T_STEPS[:2])).abs().max() > 1e-3
    # the heads survive save_dm -> load_dm, and the shift decoder's copy keeps them
    dm = load_dm(save_dm(load_dm(out), tmp_path / "resaved", NoiseSchedule()), NoiseSchedule())
    assert dm.get_submodule("down_blocks.0.attentions.0").heads == 2
    assert_same_outputs(model, tmp_path / "resaved" / "unet")
    dec = ShiftDecoder(dm, latent_dim=8, init="dm_copy")
    assert dec.mid_block.attentions[0].heads == 2 and dec.up_blocks[1].attentions[0].heads == 2
    with torch.no_grad():
        eps, _ = dec(x, T_STEPS[:2], torch.randn(2, 8))
        torch.testing.assert_close(eps, model(x, T_STEPS[:2]), atol=1e-5, rtol=0)
    # a heads file that does not fit the model is refused, naming the layer
    (out / "attention_heads.json").write_text(json.dumps({"down_blocks.0.attentions.0": 5}))
    with pytest.raises(ValueError, match=r"down_blocks.0.attentions.0.*32 channels.*5 heads"):
        load_dm(out)

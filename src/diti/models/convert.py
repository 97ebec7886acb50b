"""Convert a PDAE / DiTi pre-trained DDPM (guided-diffusion ``UNetModel``) into a diffusers ``UNet2DModel``.

The official code ships each DM as ``pre-trained-dpms/<name>/checkpoint.pt`` (key ``ema_denoise_fn``: the
state dict of OpenAI guided-diffusion's ``UNetModel``, as copied into PDAE) and ``config.yml``.
``convert_guided_dm`` writes a diffusers folder (``config.json``, safetensors weights and a DDPMScheduler
``scheduler_config.json``) that :func:`diti.models.dm.load_dm` opens. Every weight is mapped by name; a
checkpoint key left over or a diffusers parameter left unassigned is a ValueError, never a random weight.

guided-diffusion / PDAE name                  diffusers UNet2DModel name
--------------------------------------------  -----------------------------------------------------------
time_embed.0 / time_embed.2                   time_embedding.linear_1 / time_embedding.linear_2
input_blocks.0.0                              conv_in
input_blocks.N.0   (ResBlock, level l)        down_blocks.l.resnets.j
input_blocks.N.1   (AttentionBlock)           down_blocks.l.attentions.j
input_blocks.N.0   (ResBlock down=True)       down_blocks.l.downsamplers.0          (resblock_updown)
input_blocks.N.0.op (Downsample conv)         down_blocks.l.downsamplers.0.conv     (not resblock_updown)
middle_block.0 / .1 / .2                      mid_block.resnets.0 / mid_block.attentions.0 / resnets.1
output_blocks.N.0  (ResBlock)                 up_blocks.k.resnets.i                 (k = L-1-l, i < R+1)
output_blocks.N.1  (AttentionBlock)           up_blocks.k.attentions.i
output_blocks.N.last (ResBlock up=True)       up_blocks.k.upsamplers.0              (resblock_updown)
output_blocks.N.last.conv (Upsample conv)     up_blocks.k.upsamplers.0.conv         (not resblock_updown)
out.0 / out.2                                 conv_norm_out / conv_out
ResBlock  in_layers.0 / in_layers.2           norm1 / conv1
          emb_layers.1                        time_emb_proj
          out_layers.0 / out_layers.3         norm2 / conv2
          skip_connection (1x1 conv)          conv_shortcut
Attention norm                                group_norm
          qkv (Conv1d C -> 3C)                to_q / to_k / to_v (Linear C -> C each; head order below)
          proj_out (Conv1d C -> C)            to_out.0 (Linear)
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from diffusers import DDPMScheduler, UNet2DModel

from .dm import set_attention_heads, write_attention_heads

# PDAE's UNet takes its own argument names; they mean exactly guided-diffusion's.
_PDAE_NAMES = {
    "input_channel": "in_channels",
    "base_channel": "model_channels",
    "channel_multiplier": "channel_mult",
    "num_residual_blocks_of_a_block": "num_res_blocks",
    "head_channel": "num_head_channels",
    "num_class": "num_classes",
}
_MODEL_KEYS = {
    "image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions",
    "dropout", "channel_mult", "conv_resample", "dims", "num_classes", "use_checkpoint", "use_fp16",
    "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "resblock_updown",
    "use_new_attention_order", "learn_sigma",
}
_REQUIRED_KEYS = ("in_channels", "model_channels", "num_res_blocks", "attention_resolutions", "channel_mult")
# PDAE's diffusion_config, then guided-diffusion's diffusion flags (which may sit beside the model flags).
_DIFFUSION_KEYS = {
    "timesteps", "betas_type", "linear_beta_start", "linear_beta_end",
    "diffusion_steps", "noise_schedule", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas",
    "use_kl", "timestep_respacing",
}
_SECTION_NAMES = ("denoise_fn_config", "denoise_fn", "model", "unet")
_ARCH_MARKERS = {"model_channels", "base_channel"}
_STATE_DICT_KEYS = ("ema_denoise_fn", "denoise_fn")  # first present wins: PDAE samples with the EMA weights
_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile wrappers


@dataclass(frozen=True)
class GuidedUNetSpec:
    """The guided-diffusion ``UNetModel`` arguments that decide the weights' layout (canonical names).

    ``attention_ds`` are downsample rates: attention at a level whose feature map is image_size / ds.
    """

    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    channel_mult: tuple[int, ...]
    dropout: float = 0.0
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    use_new_attention_order: bool = False
    image_size: int | None = None

    def channels(self, level: int) -> int:
        return self.model_channels * self.channel_mult[level]

    def has_attention(self, level: int) -> bool:
        return 2**level in self.attention_ds

    def heads(self, channels: int, upsample: bool = False) -> int:
        """Heads of an AttentionBlock over ``channels`` (output blocks use ``num_heads_upsample``)."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels
        if upsample and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads


@dataclass(frozen=True)
class ScheduleSpec:
    """The DDPM forward process the checkpoint was trained with (a diffusers DDPMScheduler config)."""

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"


# --------------------------------------------------------------------------------------------- config


def read_guided_config(
    config: Path | str | dict, learned_sigma_ok: bool = False
) -> tuple[GuidedUNetSpec, ScheduleSpec]:
    """Parse a PDAE / guided-diffusion model description into (UNet spec, schedule).

    The UNet keys are found at the top level, or under ``denoise_fn_config`` (PDAE's pre-trained-dpms),
    ``denoise_fn``, ``model`` or ``unet``, nested up to three deep (e.g. ``denoise_fn: {model: {...}}``):
    the first dict holding ``model_channels`` or ``base_channel`` is the model section. It may use
    guided-diffusion's names (``in_channels, model_channels, out_channels, num_res_blocks,
    attention_resolutions, dropout, channel_mult, conv_resample, dims, num_classes, use_checkpoint,
    use_fp16, num_heads, num_head_channels, num_heads_upsample, use_scale_shift_norm, resblock_updown,
    use_new_attention_order, learn_sigma, image_size``) or PDAE's (``input_channel, base_channel,
    channel_multiplier, num_residual_blocks_of_a_block, head_channel, num_class``; a string ``model`` is
    PDAE's class name and ignored). An unknown key there is a ValueError.

    ``attention_resolutions``: a list (or one int) is read as downsample rates ds, what ``UNetModel``
    and PDAE's UNet take (attention at 2x downsampling if 2 is listed). A comma-separated string, as
    guided-diffusion's ``image_train.py --attention_resolutions 32,16,8`` takes, is read as pixel
    resolutions and turned into ds = image_size // res (image_size is then required).

    ``use_scale_shift_norm`` and ``resblock_updown`` default to True for PDAE's names (its UNet has no
    such switch and always uses both) and must be stated with guided-diffusion's names (its UNetModel
    defaults them to False, its scripts ``use_scale_shift_norm`` to True).

    The schedule comes from ``diffusion_config`` / ``diffusion`` (PDAE: ``timesteps, betas_type,
    linear_beta_start, linear_beta_end``; guided-diffusion: ``diffusion_steps, noise_schedule``, whose
    "linear" betas are scaled by 1000 / steps) or from guided-diffusion flags beside the model keys;
    without any, the DDPM default (1000 steps, linear 1e-4 .. 0.02).
    """
    data = _read_yaml(config)
    section = _model_section(data)
    model: dict[str, Any] = {}
    source: dict[str, str] = {}  # canonical name -> name as written, for error messages
    flat_diffusion: dict[str, Any] = {}
    unknown = []
    for key, value in section.items():
        if isinstance(value, dict) or (key == "model" and isinstance(value, str)):
            continue  # another section, or PDAE's class name
        if key in _DIFFUSION_KEYS:
            flat_diffusion[key] = value
            continue
        name = _PDAE_NAMES.get(key, key)
        if name not in _MODEL_KEYS:
            unknown.append(key)
            continue
        if name in model:
            raise ValueError(f"model config gives both {source[name]!r} and {key!r} (the same argument)")
        model[name], source[name] = value, key
    if unknown:
        raise ValueError(
            f"unknown UNet config key(s) {sorted(unknown)}; the converter knows {sorted(_MODEL_KEYS)} "
            f"and PDAE's {sorted(_PDAE_NAMES)}"
        )
    pdae_names = any(key in section for key in _PDAE_NAMES)
    spec = _unet_spec(model, source, pdae_names, learned_sigma_ok, data)
    schedule = _schedule_spec(data, flat_diffusion)
    return spec, schedule


def _read_yaml(config: Path | str | dict) -> dict:
    if isinstance(config, dict):
        return config
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a YAML mapping")
    return data


def _model_section(data: dict) -> dict:
    node = data
    for _ in range(4):
        if _ARCH_MARKERS & node.keys():
            return node
        child = next((node[name] for name in _SECTION_NAMES if isinstance(node.get(name), dict)), None)
        if child is None:
            break
        node = child
    raise ValueError(
        f"no UNet description found: expected model_channels (or PDAE's base_channel) at the top level or "
        f"under one of {list(_SECTION_NAMES)}; top-level keys are {sorted(data)}"
    )


def _unet_spec(
    model: dict, source: dict, pdae_names: bool, learned_sigma_ok: bool, data: dict
) -> GuidedUNetSpec:
    def name(key: str) -> str:
        return source.get(key, key)

    missing = [key for key in _REQUIRED_KEYS if key not in model]
    if not pdae_names:
        # guided-diffusion's UNetModel defaults these to False but its scripts use True: no silent guess.
        missing += [key for key in ("use_scale_shift_norm", "resblock_updown") if key not in model]
    if missing:
        raise ValueError(f"UNet config is missing {missing}")

    dims = _int(model.get("dims", 2), "dims")
    if dims != 2:
        raise ValueError(f"dims={dims}: only 2D UNets convert to UNet2DModel")
    if model.get("num_classes") is not None:
        raise ValueError(
            f"{name('num_classes')}={model['num_classes']}: class-conditional UNets (label_emb) are not "
            "supported; DiTi needs an unconditional DM"
        )
    in_channels = _int(model["in_channels"], name("in_channels"))
    learn_sigma = _bool(model.get("learn_sigma", False), "learn_sigma")
    out_channels = _int(model.get("out_channels", in_channels * (2 if learn_sigma else 1)), "out_channels")
    if out_channels == 2 * in_channels:
        if not learned_sigma_ok:
            key = "learn_sigma" if learn_sigma else "out_channels"
            raise ValueError(
                f"{key}={model[key]}: the UNet also predicts the variance ({out_channels} output channels); "
                "pass drop_learned_sigma=True to keep only the eps channels"
            )
    elif out_channels != in_channels:
        raise ValueError(f"out_channels={out_channels}: expected {in_channels} (eps) or {2 * in_channels}")

    image_size = model.get("image_size")
    if image_size is None:
        image_size = (data.get("dataset_config") or {}).get("image_size")
    image_size = None if image_size is None else _int(image_size, "image_size")

    channel_mult = _int_list(model["channel_mult"], name("channel_mult"))
    if channel_mult[0] != 1:
        # diffusers sizes the sinusoidal embedding by block_out_channels[0], guided by model_channels.
        raise ValueError(f"{name('channel_mult')}={list(channel_mult)}: the first multiplier must be 1")
    spec = GuidedUNetSpec(
        in_channels=in_channels,
        model_channels=_int(model["model_channels"], name("model_channels")),
        out_channels=out_channels,
        num_res_blocks=_int(model["num_res_blocks"], name("num_res_blocks")),
        attention_ds=_attention_ds(model["attention_resolutions"], image_size),
        channel_mult=channel_mult,
        dropout=_float(model.get("dropout", 0.0), "dropout"),
        num_heads=_int(model.get("num_heads", 1), "num_heads"),
        num_head_channels=_int(model.get("num_head_channels", -1), name("num_head_channels")),
        num_heads_upsample=_int(model.get("num_heads_upsample", -1), "num_heads_upsample"),
        use_scale_shift_norm=_bool(model.get("use_scale_shift_norm", True), "use_scale_shift_norm"),
        resblock_updown=_bool(model.get("resblock_updown", True), "resblock_updown"),
        conv_resample=_bool(model.get("conv_resample", True), "conv_resample"),
        use_new_attention_order=_bool(model.get("use_new_attention_order", False), "use_new_attention_order"),
        image_size=image_size,
    )
    if not spec.resblock_updown and not spec.conv_resample:
        raise ValueError("conv_resample=False: diffusers' DownBlock2D / UpBlock2D always resample by a conv")
    return spec


def _attention_ds(value: Any, image_size: int | None) -> tuple[int, ...]:
    if isinstance(value, str):
        # guided-diffusion's script flag: pixel resolutions, converted as in its create_model.
        if image_size is None:
            raise ValueError(
                f"attention_resolutions={value!r} is a string of pixel resolutions (guided-diffusion's "
                "script flag) and needs image_size to become downsample rates; or give a list of rates"
            )
        return tuple(sorted(image_size // int(res) for res in value.split(",") if res.strip()))
    return tuple(sorted(_int_list(value, "attention_resolutions")))


def _schedule_spec(data: dict, flat: dict) -> ScheduleSpec:
    sections = [data[k] for k in ("diffusion_config", "diffusion") if isinstance(data.get(k), dict)]
    section = sections[0] if sections else None
    diffusion = dict(section) if section is not None else {}
    unknown = sorted(set(diffusion) - _DIFFUSION_KEYS)
    if unknown:
        raise ValueError(f"unknown diffusion config key(s) {unknown}; known: {sorted(_DIFFUSION_KEYS)}")
    diffusion.update(flat)
    if _bool(diffusion.get("predict_xstart", False), "predict_xstart"):
        raise ValueError("predict_xstart=True: DiTi needs an eps-prediction DM")
    if "timesteps" in diffusion and "diffusion_steps" in diffusion:
        raise ValueError("diffusion config gives both timesteps (PDAE) and diffusion_steps (guided)")

    if "diffusion_steps" in diffusion or "noise_schedule" in diffusion:
        steps = _int(diffusion.get("diffusion_steps", 1000), "diffusion_steps")
        if _bool(diffusion.get("rescale_timesteps", False), "rescale_timesteps") and steps != 1000:
            raise ValueError(f"rescale_timesteps=True with diffusion_steps={steps}: the UNet sees t*1000/T")
        kind = diffusion.get("noise_schedule", "linear")
        if kind == "linear":
            scale = 1000 / steps  # guided-diffusion's get_named_beta_schedule rescales the 1000-step betas
            return ScheduleSpec(steps, scale * 1e-4, scale * 0.02, "linear")
        if kind == "cosine":
            # diffusers' squaredcos_cap_v2 is guided-diffusion's cosine schedule (s = 0.008, max_beta 0.999).
            return ScheduleSpec(steps, 1e-4, 0.02, "squaredcos_cap_v2")
        raise ValueError(f"noise_schedule={kind!r}: expected 'linear' or 'cosine'")

    kind = diffusion.get("betas_type", "linear")
    if kind != "linear":
        raise ValueError(f"betas_type={kind!r}: PDAE only defines 'linear'")
    return ScheduleSpec(
        _int(diffusion.get("timesteps", 1000), "timesteps"),
        _float(diffusion.get("linear_beta_start", 1e-4), "linear_beta_start"),
        _float(diffusion.get("linear_beta_end", 0.02), "linear_beta_end"),
    )


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}={value!r}: expected an integer")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key}={value!r}: expected true or false")
    return value


def _float(value: Any, key: str) -> float:
    # PyYAML reads "1e-4" (no dot) as a string; parse it as a number rather than reject a valid config.
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r}: expected a number") from None


def _int_list(value: Any, key: str) -> tuple[int, ...]:
    if isinstance(value, str):  # guided-diffusion's comma-separated script flags, e.g. "1,2,2,2"
        value = [int(v) for v in value.split(",") if v.strip()]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key}={value!r}: expected a list of integers")
    return tuple(_int(v, key) for v in value)


# ------------------------------------------------------------------------------------ diffusers layout


def unet2d_config(spec: GuidedUNetSpec) -> dict[str, Any]:
    """The UNet2DModel constructor arguments that reproduce ``spec`` operation for operation, with
    ``attention_heads(spec)`` set on the built model where the layers' head widths differ."""
    levels = len(spec.channel_mult)
    layers = _attention_layers(spec).values()
    head_dims = {ch // heads for ch, heads in layers}
    if all(heads == 1 for _, heads in layers) or len(head_dims) > 1:
        # None: one head per layer, whatever its width. Different head widths: the real per-layer heads are
        # set after building (attention_heads(spec), written to attention_heads.json)
        attention_head_dim = None
    else:
        attention_head_dim = head_dims.pop()
    if spec.resblock_updown:
        # Plain DownBlock2D / UpBlock2D always resample with a conv; these two resample with a ResBlock.
        plain_down, plain_up = "ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D"
    else:
        plain_down, plain_up = "DownBlock2D", "UpBlock2D"
    down = ["AttnDownBlock2D" if spec.has_attention(lv) else plain_down for lv in range(levels)]
    up = ["AttnUpBlock2D" if spec.has_attention(lv) else plain_up for lv in range(levels)]
    return {
        "sample_size": spec.image_size,
        "in_channels": spec.in_channels,
        "out_channels": spec.in_channels,  # eps only (learned-sigma channels are dropped before this)
        "time_embedding_type": "positional",
        # guided-diffusion: [cos, sin] of t * exp(-ln(10000) * i / half); diffusers divides by (half - shift).
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": tuple(down),
        "up_block_types": tuple(reversed(up)),
        "mid_block_type": "UNetMidBlock2D",
        "block_out_channels": tuple(spec.channels(lv) for lv in range(levels)),
        "layers_per_block": spec.num_res_blocks,
        "downsample_type": "resnet" if spec.resblock_updown else "conv",
        "upsample_type": "resnet" if spec.resblock_updown else "conv",
        "dropout": spec.dropout,
        "act_fn": "silu",
        "attention_head_dim": attention_head_dim,
        "norm_num_groups": 32,  # guided-diffusion's normalization() is GroupNorm32(32, ch)
        # UNetMidBlock2D drops the attention's GroupNorm under scale_shift unless told; guided has one.
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,  # nn.GroupNorm's default, which GroupNorm32 keeps
        "resnet_time_scale_shift": "scale_shift" if spec.use_scale_shift_norm else "default",
        "add_attention": True,  # the middle block always has an AttentionBlock
    }


def _attention_layers(spec: GuidedUNetSpec) -> dict[str, tuple[int, int]]:
    """diffusers attention module name -> (channels, heads) of every AttentionBlock of ``spec``."""
    levels = len(spec.channel_mult)
    layers = {}
    for _, dp, kind, heads in _module_pairs(spec):
        if kind == "attn":
            level = levels - 1 if dp.startswith("mid_block") else int(dp.split(".")[1])
            if dp.startswith("up_blocks"):
                level = levels - 1 - level
            layers[dp] = (spec.channels(level), heads)
    for name, (ch, heads) in layers.items():
        if heads < 1 or ch % heads:
            raise ValueError(f"an attention layer over {ch} channels cannot have {heads} heads ({name})")
    return layers


def attention_heads(spec: GuidedUNetSpec) -> dict[str, int]:
    """The heads of every attention layer when the layers do not share one head width (guided-diffusion's
    fixed ``num_heads`` > 1 over levels of different width), else {} (the config's attention_head_dim says
    it all)."""
    layers = _attention_layers(spec)
    if all(heads == 1 for _, heads in layers.values()) or len({ch // h for ch, h in layers.values()}) == 1:
        return {}
    return {name: heads for name, (_, heads) in layers.items()}


def _module_pairs(spec: GuidedUNetSpec) -> list[tuple[str, str, str, int]]:
    """(guided-diffusion module, diffusers module, kind, heads) in forward order; kind is copy/res/attn."""
    levels, blocks = len(spec.channel_mult), spec.num_res_blocks
    pairs: list[tuple[str, str, str, int]] = []

    def add(sp: str, dp: str, kind: str, heads: int = 0) -> None:
        pairs.append((sp, dp, kind, heads))

    add("time_embed.0", "time_embedding.linear_1", "copy")
    add("time_embed.2", "time_embedding.linear_2", "copy")
    add("input_blocks.0.0", "conv_in", "copy")
    # Input side: per level, num_res_blocks x (ResBlock [+ attention]), then a down-sampler (not last level).
    n = 1
    for level in range(levels):
        ch, down = spec.channels(level), f"down_blocks.{level}"
        for j in range(blocks):
            add(f"input_blocks.{n}.0", f"{down}.resnets.{j}", "res")
            if spec.has_attention(level):
                add(f"input_blocks.{n}.1", f"{down}.attentions.{j}", "attn", spec.heads(ch))
            n += 1
        if level != levels - 1:
            if spec.resblock_updown:
                add(f"input_blocks.{n}.0", f"{down}.downsamplers.0", "res")
            else:
                add(f"input_blocks.{n}.0.op", f"{down}.downsamplers.0.conv", "copy")
            n += 1
    add("middle_block.0", "mid_block.resnets.0", "res")
    add("middle_block.1", "mid_block.attentions.0", "attn", spec.heads(spec.channels(levels - 1)))
    add("middle_block.2", "mid_block.resnets.1", "res")
    # Output side: per level (deepest first) num_res_blocks + 1 blocks, one per skip; the level's
    # up-sampler sits inside its last block, after the ResBlock (and attention).
    n = 0
    for k, level in enumerate(reversed(range(levels))):
        ch, up = spec.channels(level), f"up_blocks.{k}"
        for i in range(blocks + 1):
            add(f"output_blocks.{n}.0", f"{up}.resnets.{i}", "res")
            sub = 1
            if spec.has_attention(level):
                add(f"output_blocks.{n}.1", f"{up}.attentions.{i}", "attn", spec.heads(ch, upsample=True))
                sub = 2
            if level and i == blocks:
                if spec.resblock_updown:
                    add(f"output_blocks.{n}.{sub}", f"{up}.upsamplers.0", "res")
                else:
                    add(f"output_blocks.{n}.{sub}.conv", f"{up}.upsamplers.0.conv", "copy")
            n += 1
    add("out.0", "conv_norm_out", "copy")
    add("out.2", "conv_out", "copy")
    return pairs


_RESBLOCK = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)


def map_guided_state_dict(
    state: dict[str, torch.Tensor], spec: GuidedUNetSpec, unet: UNet2DModel
) -> dict[str, torch.Tensor]:
    """A complete UNet2DModel state dict from a guided-diffusion one; ValueError on any key left over."""
    src = dict(state)  # popped as mapped: what remains was not understood
    out: dict[str, torch.Tensor] = {}

    def move(sp: str, dp: str) -> None:
        for param in ("weight", "bias"):
            if f"{sp}.{param}" in src:
                out[f"{dp}.{param}"] = src.pop(f"{sp}.{param}")

    for sp, dp, kind, heads in _module_pairs(spec):
        if kind == "copy":
            move(sp, dp)
        elif kind == "res":
            for s, d in _RESBLOCK:
                move(f"{sp}.{s}", f"{dp}.{d}")
        else:
            _map_attention(src, out, sp, dp, heads, spec.use_new_attention_order, unet)

    problems = []
    if src:
        problems.append(f"checkpoint keys not mapped: {sorted(src)}")
        if any(".qkv." in key or ".proj_out." in key for key in src):
            problems.append("(attention weights left over: is attention_resolutions in downsample rates?)")
    target = unet.state_dict()
    missing = sorted(set(target) - set(out))
    if missing:
        problems.append(f"diffusers parameters left unassigned: {missing}")
    extra = sorted(set(out) - set(target))
    if extra:
        problems.append(f"mapped names diffusers does not have: {extra}")
    shapes = [
        f"{key}: checkpoint {tuple(out[key].shape)} vs diffusers {tuple(target[key].shape)}"
        for key in sorted(set(out) & set(target))
        if out[key].shape != target[key].shape
    ]
    if shapes:
        problems.append(f"shape mismatches: {shapes}")
    if problems:
        raise ValueError("the checkpoint does not match its config:\n" + "\n".join(problems))
    return out


def _map_attention(
    src: dict[str, torch.Tensor],
    out: dict[str, torch.Tensor],
    sp: str,
    dp: str,
    heads: int,
    new_order: bool,
    unet: UNet2DModel,
) -> None:
    attn = unet.get_submodule(dp)
    if attn.heads != heads:  # what the single attention_head_dim gave this layer
        raise ValueError(f"{dp} has {attn.heads} heads in diffusers but {sp} has {heads} in the checkpoint")
    for param in ("weight", "bias"):
        if f"{sp}.norm.{param}" in src:
            out[f"{dp}.group_norm.{param}"] = src.pop(f"{sp}.norm.{param}")
        if f"{sp}.proj_out.{param}" in src:
            # Conv1d (C, C, 1) over the flattened pixels == Linear (C, C) over the tokens.
            out[f"{dp}.to_out.0.{param}"] = _squeeze_conv1d(src.pop(f"{sp}.proj_out.{param}"))
        key = f"{sp}.qkv.{param}"
        if key not in src:
            continue
        qkv = _squeeze_conv1d(src.pop(key))  # (3C, C) or (3C,)
        width = qkv.shape[0] // 3
        rest = qkv.shape[1:]
        if new_order:
            # QKVAttention: qkv.chunk(3) first, then heads -> rows [q | k | v], each (heads, ch).
            parts = qkv.reshape(3, width, *rest)
        else:
            # QKVAttentionLegacy: heads first, then q/k/v -> rows (heads, [q | k | v], ch).
            parts = qkv.reshape(heads, 3, width // heads, *rest).transpose(0, 1).reshape(3, width, *rest)
        # diffusers views to_q's output as (heads, ch), as guided-diffusion's output (heads * ch) is laid out,
        # so proj_out needs no permutation. Both scale q.k by 1 / sqrt(ch) (guided: ch^-1/4 on q and on k).
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            out[f"{dp}.{name}.{param}"] = parts[i].contiguous()


def _squeeze_conv1d(t: torch.Tensor) -> torch.Tensor:
    return t[..., 0] if t.dim() == 3 else t


# --------------------------------------------------------------------------------------- checkpoint


def load_guided_state_dict(checkpoint: Path | str) -> dict[str, torch.Tensor]:
    """The UNet state dict in a PDAE checkpoint, loaded without running pickled code.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; a file that needs any
    other class (or carries a code-running payload) is refused with a ValueError. In a dict holding
    ``ema_denoise_fn`` that key wins (PDAE samples with the EMA weights), then ``denoise_fn``; a dict of
    tensors is taken as the state dict itself. A ``module.`` / ``_orig_mod.`` prefix shared by every key
    is stripped, and floating-point tensors are cast to float32.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {path}: it holds objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) will not rebuild (loading them could run arbitrary code). If you "
            f"trust the file, re-save only the weights: "
            f"torch.save({{'ema_denoise_fn': ckpt['ema_denoise_fn']}}, ...).\n{err}"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a dict")
    key = next((k for k in _STATE_DICT_KEYS if k in obj), None)
    state = obj[key] if key is not None else obj
    tensors = isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    if not state or not tensors:
        raise ValueError(
            f"{path}: no UNet state dict found; expected a key among {list(_STATE_DICT_KEYS)} or a dict of "
            f"tensors, got keys {list(obj)[:20]}"
        )
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def guided_to_unet2d(
    state: dict[str, torch.Tensor], config: Path | dict, *, drop_learned_sigma: bool = False
) -> UNet2DModel:
    """The UNet2DModel (per-layer attention heads set) holding a guided-diffusion state dict described by
    ``config`` (see :func:`read_guided_config`); ValueError when any weight cannot be mapped."""
    spec, _ = read_guided_config(config, learned_sigma_ok=drop_learned_sigma)
    state = dict(state)
    if spec.out_channels == 2 * spec.in_channels:
        for param in ("weight", "bias"):
            if f"out.2.{param}" in state:
                state[f"out.2.{param}"] = state[f"out.2.{param}"][: spec.in_channels]
    unet = UNet2DModel(**unet2d_config(spec))
    heads = attention_heads(spec)
    if heads:
        set_attention_heads(unet, heads)
    unet.load_state_dict(map_guided_state_dict(state, spec, unet), strict=True)
    return unet


def convert_guided_dm(
    checkpoint: Path, config: Path | dict | None, out: Path, *, drop_learned_sigma: bool = False
) -> Path:
    """Write ``out`` as a diffusers UNet2DModel folder (safetensors) + ``scheduler_config.json``, and
    ``attention_heads.json`` when the attention layers' head widths differ (``load_dm`` restores them).

    ``config`` is the DM's ``config.yml`` (or its parsed dict); None means ``config.yml`` beside the
    checkpoint, PDAE's ``pre-trained-dpms/<name>/`` layout. See :func:`read_guided_config` for the keys.
    ``drop_learned_sigma`` keeps only the first in_channels output channels of a learn_sigma UNet (the
    eps prediction; guided-diffusion splits its output as [eps, variance]); without it such a UNet is a
    ValueError. Raises ValueError when any weight cannot be mapped; returns ``out``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if config is None:
        config = checkpoint.parent / "config.yml"
        if not config.is_file():
            raise ValueError(f"no config given and no config.yml beside {checkpoint}")
    _, schedule = read_guided_config(config, learned_sigma_ok=drop_learned_sigma)
    unet = guided_to_unet2d(load_guided_state_dict(checkpoint), config, drop_learned_sigma=drop_learned_sigma)
    unet.save_pretrained(out, safe_serialization=True)
    write_attention_heads(unet, out)
    DDPMScheduler(
        num_train_timesteps=schedule.timesteps,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        beta_schedule=schedule.beta_schedule,
        prediction_type="epsilon",
        variance_type="fixed_small",  # the eps-only model's variance, as PDAE samples with
        clip_sample=True,  # PDAE clips x0 to [-1, 1] when sampling
    ).save_pretrained(out)
    return out

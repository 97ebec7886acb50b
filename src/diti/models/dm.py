"""The frozen diffusion model: build a diffusers UNet2DModel, save it, and load any local one.

A DM folder is either a UNet2DModel folder (``config.json`` + weights) or a diffusers pipeline folder
(``model_index.json`` with ``unet/`` and ``scheduler/``, e.g. a downloaded google/ddpm-celebahq-256). A
``diti pretrain`` run folder is accepted too (its ``dm/`` subfolder). Nothing is downloaded.

UNet2DModel has one ``attention_head_dim`` for every attention layer. A DM whose layers have other head
counts (guided-diffusion's fixed ``num_heads`` over levels of different width, as ``diti convert-dm``
writes them) carries ``attention_heads.json`` beside its ``config.json``: {attention module name: heads}.
``load_dm`` sets those heads after building the model and ``save_dm`` writes the file again; the weights
do not depend on the head count, only the attention's split of its channels does.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from diffusers import UNet2DModel

from ..config.schema import UNetConfig
from ..diffusion.schedule import NoiseSchedule


def build_unet(cfg: UNetConfig, resolution: int, channels: int = 3) -> UNet2DModel:
    """A UNet2DModel for ``resolution`` x ``resolution`` images, attention at ``cfg.attention_levels``."""
    levels = len(cfg.block_out_channels)
    if resolution % (2 ** (levels - 1)):
        raise ValueError(f"resolution {resolution} is not divisible by 2^{levels - 1} ({levels} UNet levels)")
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(range(levels)))
    return UNet2DModel(
        sample_size=resolution,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
        resnet_time_scale_shift=cfg.resnet_time_scale_shift,
        dropout=cfg.dropout,
    )


def resolve_dm_folder(path: str | Path) -> tuple[Path, Path | None]:
    """(unet folder, scheduler config file or None) for a UNet, pipeline or pretrain-run folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DM folder not found: {path}")
    if (path / "dm").is_dir() and not (path / "config.json").exists():
        path = path / "dm"  # a `diti pretrain` run folder
    if (path / "unet" / "config.json").is_file():
        unet_dir = path / "unet"
        scheduler = path / "scheduler" / "scheduler_config.json"
    elif (path / "config.json").is_file():
        unet_dir = path
        scheduler = path / "scheduler_config.json"
    else:
        raise ValueError(
            f"{path} is not a diffusers UNet2DModel folder (no config.json) nor a pipeline folder (no unet/)"
        )
    return unet_dir, (scheduler if scheduler.is_file() else None)


HEADS_FILE = "attention_heads.json"


def set_attention_heads(unet: UNet2DModel, heads: dict[str, int]) -> UNet2DModel:
    """Give each named attention layer of ``unet`` its head count (and the matching 1/sqrt(head dim) scale);
    the mapping is kept on the model so that ``save_dm`` writes it back."""
    from diffusers.models.attention_processor import Attention

    for name, n in heads.items():
        try:
            attn = unet.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{HEADS_FILE}: the UNet has no module {name!r}") from None
        if not isinstance(attn, Attention):
            raise ValueError(f"{HEADS_FILE}: {name!r} is a {type(attn).__name__}, not an attention layer")
        n = int(n)
        if n < 1 or attn.inner_dim % n:
            raise ValueError(f"{HEADS_FILE}: {name!r} has {attn.inner_dim} channels, which {n} heads cannot split")
        attn.heads = attn.sliceable_head_dim = n
        if attn.scale_qk:
            attn.scale = (attn.inner_dim // n) ** -0.5
    unet._diti_attention_heads = {name: int(n) for name, n in heads.items()}
    return unet


def load_dm(path: str | Path, schedule: NoiseSchedule | None = None) -> UNet2DModel:
    """Load a local UNet2DModel, frozen (eval, no grad); check its scheduler config against ``schedule``.

    Per-layer attention heads recorded in ``attention_heads.json`` are restored (module docstring)."""
    unet_dir, scheduler_file = resolve_dm_folder(path)
    config = json.loads((unet_dir / "config.json").read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{unet_dir} holds a {config['_class_name']}, diti needs a UNet2DModel")
    if schedule is not None and scheduler_file is not None:
        schedule.check_diffusers_config(json.loads(scheduler_file.read_text()), str(scheduler_file))
    unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=_has_safetensors(unet_dir))
    if (unet_dir / HEADS_FILE).is_file():
        set_attention_heads(unet, json.loads((unet_dir / HEADS_FILE).read_text()))
    return freeze(unet)


def _has_safetensors(folder: Path) -> bool | None:
    # None lets diffusers fall back to a .bin file (loaded with weights_only=True) when no safetensors exist.
    return True if any(folder.glob("*.safetensors")) else None


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and requires_grad=False on every parameter."""
    module.eval()
    module.requires_grad_(False)
    return module


def save_dm(unet: UNet2DModel, out: str | Path, schedule: NoiseSchedule) -> Path:
    """Write a diffusers pipeline folder: model_index.json, unet/ (safetensors), scheduler/."""
    out = Path(out)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    write_attention_heads(unet, out / "unet")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(schedule.to_diffusers_config(), indent=2))
    index = {
        "_class_name": "DDPMPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def write_attention_heads(unet: UNet2DModel, folder: Path) -> None:
    """``attention_heads.json`` in ``folder`` when ``unet`` has per-layer heads (``set_attention_heads``)."""
    heads = getattr(unet, "_diti_attention_heads", None)
    if heads:
        (Path(folder) / HEADS_FILE).write_text(json.dumps(heads, indent=2))


def dm_resolution(unet: UNet2DModel) -> int:
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ValueError(f"diti needs a square DM, got sample_size={size}")
        size = size[0]
    if size is None:
        raise ValueError("the DM's config has no sample_size; set data.resolution explicitly")
    return int(size)


def shipped_dm(name: str = "dm-shapes32") -> Path | None:
    """A DM shipped with diti, if present: ``dm-shapes32`` (32 px shapes version 1, `diti pretrain --preset
    shapes-demo`), ``dm-shapes2-16`` (16 px shapes version 2, `--preset shapes2-bench`: the demo's) or
    ``dm-shapes1-16`` (16 px shapes version 1, `--preset shapes1-bench16`: the partition benchmark's)."""
    path = Path(str(resources.files("diti") / "assets" / name))
    return path if (path / "model_index.json").is_file() else None

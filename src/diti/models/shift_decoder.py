"""The shift decoder G, built generically from any diffusers UNet2DModel (PDAE's "ShiftUNet").

G shares the frozen DM's time embedding, conv_in, down blocks and skip connections, and owns a trainable copy
of the mid and up blocks. Every ResNet block of that copy takes z~ (through one shared Linear d -> E_z, then
its own SiLU + Linear E_z -> 2C) and applies it after the time modulation:

    h = (1 + s_z) * (time-modulated GN(h)) + b_z        (docs/method.md, "Networks")

The output conv is zero-initialised, so G = 0 at initialisation and the model starts as the frozen DM. How the
rest of the copy starts is ``init`` (config ``decoder.init``, docs/method.md "Official behaviours"):

- ``dm_copy`` (diti's default): the copy starts from the DM's mid/up weights;
- ``official``: as the official ShiftUNet, whose trainable half is never loaded from the DM: every weight
  of the copy is freshly initialised (PyTorch's default init), and every residual block's output conv
  (``conv2``, up-sampling blocks included) and every attention output projection (``to_out.0``) start at
  zero, so each block starts as the identity on its input (up to the shortcut conv where channels change).
``forward(x_t, t, z~)`` returns (eps_theta, G); the frozen path runs under ``torch.no_grad()``, so nothing of
it carries gradient, and its weights never change (they are excluded from ``trainable_parameters()``).

Inside the trainable copy the time embedding and the z embedding travel together as one tensor
``cat([temb, zemb], dim=1)``: diffusers' blocks pass ``temb`` through to their ResNet blocks untouched, so the
copied blocks can be used as they are, with only their ResNet blocks swapped for ``ZResnetBlock``.
"""

from __future__ import annotations

import copy
from typing import Literal, NamedTuple

import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .dm import freeze


class FrozenFeatures(NamedTuple):
    """What the frozen DM computes once per x_t and the trainable path reuses."""

    eps: torch.Tensor  # (B, C, H, W) eps_theta(x_t, t)
    temb: torch.Tensor  # (B, E) time embedding
    h: torch.Tensor  # (B, C_mid, h, w) output of the last down block (input of the mid block)
    skips: tuple[torch.Tensor, ...]  # skip connections of the down path, in order


class ZResnetBlock(nn.Module):
    """A diffusers ResnetBlock2D whose time-modulated features are also modulated by z.

    Called with ``temb = cat([time_emb (B, E), z_emb (B, E_z)])``. Mirrors ResnetBlock2D.forward (diffusers
    0.3x-0.4x) with one added line, the z scale-shift.
    """

    def __init__(self, block: ResnetBlock2D, time_dim: int, z_dim: int):
        super().__init__()
        self.block = block
        self.time_dim = time_dim
        self.z_proj = nn.Sequential(nn.SiLU(), nn.Linear(z_dim, 2 * block.norm2.num_channels))

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        b = self.block
        temb, zemb = temb[:, : self.time_dim], temb[:, self.time_dim :]
        x = input_tensor
        h = b.nonlinearity(b.norm1(x))
        if b.upsample is not None:
            x, h = b.upsample(x), b.upsample(h)
        elif b.downsample is not None:
            x, h = b.downsample(x), b.downsample(h)
        h = b.conv1(h)
        if b.time_emb_proj is not None:
            t_out = b.time_emb_proj(temb if b.skip_time_act else b.nonlinearity(temb))[:, :, None, None]
        if b.time_embedding_norm == "default":
            h = b.norm2(h + t_out) if b.time_emb_proj is not None else b.norm2(h)
        elif b.time_embedding_norm == "scale_shift":
            t_scale, t_shift = t_out.chunk(2, dim=1)
            h = b.norm2(h) * (1 + t_scale) + t_shift
        else:
            raise ValueError(f"time_embedding_norm={b.time_embedding_norm!r} is not supported by the shift decoder")
        z_scale, z_shift = self.z_proj(zemb)[:, :, None, None].chunk(2, dim=1)
        h = h * (1 + z_scale) + z_shift  # the DiTi/PDAE z modulation
        h = b.conv2(b.dropout(b.nonlinearity(h)))
        if b.conv_shortcut is not None:
            x = b.conv_shortcut(x)
        return (x + h) / b.output_scale_factor


def check_supported(dm: UNet2DModel) -> None:
    """Raise ValueError for UNet2DModel variants the shift decoder does not handle."""
    cfg = dm.config
    problems = []
    if cfg.class_embed_type is not None or cfg.num_class_embeds is not None:
        problems.append("class-conditional DMs (class_embed_type/num_class_embeds) are not supported")
    if cfg.time_embedding_type != "positional":
        problems.append(f"time_embedding_type={cfg.time_embedding_type!r} (need 'positional', a DDPM)")
    if cfg.resnet_time_scale_shift not in ("default", "scale_shift"):
        problems.append(f"resnet_time_scale_shift={cfg.resnet_time_scale_shift!r}")
    skip_blocks = [type(b).__name__ for b in (*dm.down_blocks, *dm.up_blocks) if hasattr(b, "skip_conv")]
    if skip_blocks:
        problems.append(f"skip-connection blocks {skip_blocks} (score-SDE style) are not supported")
    if problems:
        raise ValueError("cannot build a shift decoder from this UNet2DModel: " + "; ".join(problems))


DECODER_INITS = ("dm_copy", "official")


class ShiftDecoder(nn.Module):
    """(eps_theta, G) from a frozen UNet2DModel plus a trainable, z-modulated copy of its mid and up path.

    ``init``: ``dm_copy`` or ``official`` (see the module docstring); G = 0 at initialisation in both.
    """

    def __init__(
        self, dm: UNet2DModel, latent_dim: int, z_embed_dim: int | None = None,
        init: Literal["dm_copy", "official"] = "dm_copy", frozen_fp32: bool = True,
    ):
        super().__init__()
        if init not in DECODER_INITS:
            raise ValueError(f"unknown decoder init {init!r}; expected one of {DECODER_INITS}")
        check_supported(dm)
        self.dm = freeze(dm)
        time_dim = dm.time_embedding.linear_2.out_features
        z_dim = z_embed_dim or time_dim
        self.z_embed = nn.Linear(latent_dim, z_dim)
        # 1. trainable copies of the mid and up path (the DM's weights; re-initialised below for `official`)
        self.mid_block = copy.deepcopy(dm.mid_block)
        self.up_blocks = copy.deepcopy(dm.up_blocks)
        self.conv_norm_out = copy.deepcopy(dm.conv_norm_out)
        self.conv_act = copy.deepcopy(dm.conv_act)
        if init == "official":
            _official_init(self.mid_block, self.up_blocks, self.conv_norm_out)
        self.conv_out = nn.Conv2d(dm.conv_out.in_channels, dm.conv_out.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        for root in (self.mid_block, self.up_blocks):
            if root is not None:
                _wrap_resnets(root, time_dim, z_dim)
        self.init = init
        self.frozen_fp32 = frozen_fp32  # the frozen forward in float32 even under autocast
        for name, param in self.named_parameters():
            param.requires_grad_(not name.startswith("dm."))
        self.latent_dim = latent_dim

    # ------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ShiftDecoder:
        super().train(mode)
        self.dm.eval()  # the frozen DM never leaves eval mode
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("dm.")]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("dm.")}

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def frozen_features(self, x_t: torch.Tensor, t: torch.Tensor) -> FrozenFeatures:
        """The frozen DM's forward (as UNet2DModel.forward), keeping what the trainable path needs.

        Under autocast with ``frozen_fp32`` it runs in float32 with autocast switched off: eps_theta, the loss's
        target, stays float32; the features (time embedding, h, skips), which only the trainable copy reads and
        which autocast would cast at each use, are cast to the autocast dtype once.
        """
        kind = x_t.device.type
        if self.frozen_fp32 and torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                f = self._frozen_features(x_t.float(), t)
            dtype = torch.get_autocast_dtype(kind)
            return FrozenFeatures(f.eps, f.temb.to(dtype), f.h.to(dtype), tuple(s.to(dtype) for s in f.skips))
        return self._frozen_features(x_t, t)

    def _frozen_features(self, x_t: torch.Tensor, t: torch.Tensor) -> FrozenFeatures:
        dm = self.dm
        x = 2 * x_t - 1.0 if dm.config.center_input_sample else x_t
        # 1. time embedding
        temb = dm.time_embedding(dm.time_proj(t).to(dtype=dm.dtype))
        # 2. conv_in and 3. down path, collecting the skips
        h = dm.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in dm.down_blocks:
            h, res = block(hidden_states=h, temb=temb)
            skips += res
        # 4.-6. the frozen mid and up path -> eps_theta
        eps = _mid_up_out(dm, h, skips, temb)
        # An attention block leaves channels-last strides behind it. torch's CPU GroupNorm backward crashes
        # (segfault, torch 2.13) on a channels-last input that needs no grad while its weight does, which is
        # exactly what the trainable copy's first GroupNorms see; standard-contiguous features avoid it. Only on
        # the CPU: elsewhere the copy would undo train.channels_last.
        if h.device.type == "cpu":
            h, skips = h.contiguous(), tuple(s.contiguous() for s in skips)
        return FrozenFeatures(eps, temb, h, skips)

    def shift(self, frozen: FrozenFeatures, z_tilde: torch.Tensor) -> torch.Tensor:
        """G(x_t, t, z~): (B, C, H, W), from the frozen features and the masked code z~ (B, d)."""
        zemb = self.z_embed(z_tilde.to(frozen.temb.dtype))
        temb = torch.cat([frozen.temb, zemb], dim=1)  # carried together through the copied blocks
        return _mid_up_out(self, frozen.h, frozen.skips, temb)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z_tilde: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frozen = self.frozen_features(x_t, t)
        return frozen.eps, self.shift(frozen, z_tilde)


def _mid_up_out(net: nn.Module, h: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor) -> torch.Tensor:
    """Steps 4-6 of UNet2DModel.forward (mid block, up blocks with skips, output head) on ``net``'s modules."""
    if net.mid_block is not None:
        h = net.mid_block(h, temb)
    for block in net.up_blocks:
        n = len(block.resnets)
        h = block(h, skips[-n:], temb)
        skips = skips[:-n]
    return net.conv_out(net.conv_act(net.conv_norm_out(h)))


def _official_init(*roots: nn.Module | None) -> None:
    """Re-initialise every weight under ``roots`` (PyTorch's default init of each layer), then zero every
    residual block's output conv and every attention output projection: the official ShiftUNet's start."""
    for root in roots:
        if root is None:
            continue
        for module in root.modules():
            if next(module.parameters(recurse=False), None) is None:
                continue  # a container: its children are visited on their own
            if not hasattr(module, "reset_parameters"):
                raise ValueError(f"decoder.init=official cannot re-initialise a {type(module).__name__} layer")
            module.reset_parameters()
        for module in root.modules():
            if isinstance(module, ResnetBlock2D):
                _zero(module.conv2)
            elif isinstance(module, Attention):
                _zero(module.to_out[0])


def _zero(layer: nn.Module) -> None:
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()


def _wrap_resnets(root: nn.Module, time_dim: int, z_dim: int) -> None:
    """Replace every ResnetBlock2D under ``root`` (resnets and resnet up-samplers) by a ZResnetBlock."""
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ResnetBlock2D):
                parent._modules[name] = ZResnetBlock(child, time_dim, z_dim)

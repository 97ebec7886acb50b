"""The image encoder E: x_0 -> z in R^d.

The official CelebA64 design (docs/method.md, "Networks"; DiTi's CELEBA64Encoder): stride-2 3x3 convs
3->64->128->128->128, each followed by GroupNorm + SiLU, a 4-head self-attention block right after the conv
that reaches 16x16, flatten, Linear(2048 -> 512): 1,487,104 parameters. The official FFHQ/Bedroom 128 px
encoder is the same with channels 64, 128, 256, 256, 256. One class covers every resolution: ``channels``
sets the number of stride-2 stages and their widths.

Initialisation (config ``encoder.init``): ``default`` is PyTorch's default init of every layer; ``official``
is the same except that each attention block's output projection starts at zero (the official encoder's
AttentionBlock zero-initialises its ``proj_out``), so the block starts as the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.attention_processor import Attention
from torch import nn


class Encoder(nn.Module):
    def __init__(
        self,
        resolution: int = 64,
        latent_dim: int = 512,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 128, 128, 128),
        attn_resolutions: Sequence[int] = (16,),
        norm_groups: int = 32,
        attn_heads: int = 4,
        init: str = "default",
    ):
        super().__init__()
        if init not in ("default", "official"):
            raise ValueError(f"encoder: unknown init {init!r}; expected 'default' or 'official'")
        stages = len(channels)
        if resolution % (2**stages):
            raise ValueError(f"encoder: resolution {resolution} is not divisible by 2^{stages} ({stages} stages)")
        bad = [c for c in channels if c % norm_groups]
        if bad:
            raise ValueError(f"encoder: channels {bad} are not multiples of norm_groups={norm_groups}")
        out_res = resolution // 2**stages
        unused = sorted(set(attn_resolutions) - {resolution // 2 ** (i + 1) for i in range(stages)})
        if unused:
            raise ValueError(f"encoder: attn_resolutions {unused} never occur for input resolution {resolution}")

        layers: list[nn.Module] = []
        c_in, res = in_channels, resolution
        for c in channels:
            res //= 2
            layers.append(nn.Conv2d(c_in, c, 3, stride=2, padding=1))
            if res in attn_resolutions:
                if c % attn_heads:
                    raise ValueError(f"encoder: {c} channels at {res}x{res} do not split into {attn_heads} heads")
                # diffusers' spatial self-attention (GroupNorm -> multi-head attention -> residual), the block
                # UNet2DModel uses; placed between the conv and its norm, as in the official encoder
                layers.append(
                    Attention(
                        c, heads=attn_heads, dim_head=c // attn_heads, norm_num_groups=norm_groups,
                        residual_connection=True, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True,
                    )
                )
            layers += [nn.GroupNorm(norm_groups, c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in * out_res * out_res, latent_dim)
        if init == "official":
            with torch.no_grad():
                for layer in self.features:
                    if isinstance(layer, Attention):
                        layer.to_out[0].weight.zero_()
                        layer.to_out[0].bias.zero_()
        self.resolution = resolution
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, R, R) in [-1, 1] -> z: (B, d)."""
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            raise ValueError(f"encoder expects {self.resolution}x{self.resolution} images, got {tuple(x.shape)}")
        h = self.features(x)  # (B, C_last, R / 2^n, R / 2^n)
        return self.fc(h.flatten(1))

"""The plain DDPM training objective on a UNet2DModel (what ``diti pretrain`` optimises)."""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from torch import nn

from ..diffusion.losses import LossOutput, ddpm_per_sample
from ..diffusion.schedule import NoiseSchedule


class DDPMObjective(nn.Module):
    """The plain DDPM objective ||eps - eps_theta(x_t, t)||^2 on a UNet2DModel."""

    def __init__(self, unet: UNet2DModel, schedule: NoiseSchedule):
        super().__init__()
        self.unet = unet
        self.schedule = schedule

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        eps = self.unet(self.schedule.q_sample(x0, t, noise), t).sample
        per_sample = ddpm_per_sample(eps, noise)
        return LossOutput(per_sample.mean(), per_sample, t)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

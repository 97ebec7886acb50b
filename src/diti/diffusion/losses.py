"""Training losses. Each returns per-sample values with the time-steps, so per-t logging is trivial."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .schedule import NoiseSchedule, extract


class LossOutput(NamedTuple):
    """mean: scalar to backpropagate; per_sample: (B,); t: (B,) the time-steps they were drawn at."""

    mean: torch.Tensor
    per_sample: torch.Tensor
    t: torch.Tensor


def sample_noise(
    batch: int, shape: tuple[int, ...], timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U{0..T-1} and eps ~ N(0, I) for a batch, from ``generator`` (on CPU, so every device agrees)."""
    t = torch.randint(0, timesteps, (batch,), generator=generator)
    noise = torch.randn((batch, *shape), generator=generator)
    return t, noise


def ddpm_per_sample(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The simple DDPM loss ||eps - eps_theta(x_t, t)||^2, averaged over pixels: (B,)."""
    return (noise - eps_pred.float()).pow(2).flatten(1).mean(1)


def shift_per_sample(
    schedule: NoiseSchedule, eps_theta: torch.Tensor, shift: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """PDAE's posterior-mean-gap loss per sample (PAPER.md, "Training"):

    lambda(t) * mean_pixels (eps - (eps_theta(x_t, t) + c(t) G(x_t, t, z~)))^2   -> (B,)
    """
    c = extract(schedule.shift, t, noise.shape)
    residual = noise - (eps_theta.float() + c * shift.float())
    return schedule.weight.to(t.device)[t] * residual.pow(2).flatten(1).mean(1)

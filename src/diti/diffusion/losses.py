"""Training losses. Each returns per-sample values with the time-steps, so per-t logging is trivial."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .schedule import NoiseSchedule, extract


class LossOutput(NamedTuple):
    """mean: scalar to backpropagate; per_sample: (B,); t: (B,) the time-steps they were drawn at;
    baseline: (B,) the same loss with no shift (the frozen DM alone), where the objective has one."""

    mean: torch.Tensor
    per_sample: torch.Tensor
    t: torch.Tensor
    baseline: torch.Tensor | None = None


def ddpm_per_sample(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The simple DDPM loss ||eps - eps_theta(x_t, t)||^2, averaged over pixels: (B,)."""
    return (noise - eps_pred.float()).pow(2).flatten(1).mean(1)


def shift_per_sample(
    schedule: NoiseSchedule,
    eps_theta: torch.Tensor,
    shift: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """PDAE's posterior-mean-gap loss per sample (docs/method.md, "Training"):

    lambda(t) * mean_pixels (eps - (eps_theta(x_t, t) + c(t) G(x_t, t, z~)))^2   -> (B,)

    ``weight`` (T,) replaces lambda(t) (the official ``schedule.weight``) when given.
    """
    c = extract(schedule.shift, t, noise.shape)
    residual = noise - (eps_theta.float() + c * shift.float())
    weight = schedule.weight if weight is None else weight
    return weight.to(t.device)[t] * residual.pow(2).flatten(1).mean(1)


def timestep_weights(schedule: NoiseSchedule, kind: str) -> torch.Tensor:
    """The loss weight per t: ``official`` lambda(t) = snr^0.1 / (1 + snr), or ``uniform`` (1 for every t)."""
    if kind == "official":
        return schedule.weight.clone()
    if kind == "uniform":
        return torch.ones_like(schedule.weight)
    raise ValueError(f"unknown loss weighting {kind!r}; expected 'official' or 'uniform'")

"""The DDPM noise schedule and the DiTi/PDAE coefficients c(t) and lambda(t).

Symbols (docs/method.md, "Training"):

| code            | paper                                   |
| --------------- | --------------------------------------- |
| ``betas[t]``    | beta_t, linspace(beta_start, beta_end)  |
| ``alphas[t]``   | alpha_t = 1 - beta_t                    |
| ``abar[t]``     | abar_t = prod_{s<=t} alpha_s            |
| ``abar_prev[t]``| abar_{t-1}, with abar_{-1} := 1         |
| ``shift[t]``    | c(t) = -sqrt(alpha_t) (1 - abar_{t-1}) / sqrt(1 - abar_t) |
| ``weight[t]``   | lambda(t) = snr^0.1 / (1 + snr), snr = abar_t / (1 - abar_t) |

Time-steps are indexed t = 0..T-1. The betas are made in float32 (as diffusers' DDPMScheduler and the
official code make them), every derived coefficient is computed from them in float64 and stored as float32.
"""

from __future__ import annotations

import torch
from torch import nn


def extract(coef: torch.Tensor, t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Gather ``coef[t]`` for a batch of time-steps and reshape to broadcast against ``shape``.

    coef: (T,), t: (B,) long -> (B, 1, 1, ...) with len(shape) dims.
    """
    out = coef.to(t.device)[t]
    return out.reshape(t.shape[0], *([1] * (len(shape) - 1)))


class NoiseSchedule(nn.Module):
    """A linear-beta DDPM schedule holding its coefficients as float32 buffers.

    Buffers move with ``.to(device)``; they are not saved in checkpoints (``persistent=False``) because they
    are a pure function of (timesteps, beta_start, beta_end), which the run's config records.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        self.timesteps = timesteps
        self.beta_start = beta_start
        self.beta_end = beta_end

        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float32).double()
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        snr = abar / (1.0 - abar)
        # c(t): the eps-space coefficient of PDAE's posterior-mean shift; c(0) = 0 since abar_{-1} = 1.
        shift = -torch.sqrt(alphas) * (1.0 - abar_prev) / torch.sqrt(1.0 - abar)
        weight = snr**0.1 / (1.0 + snr)

        def buf(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.float(), persistent=False)

        buf("betas", betas)
        buf("alphas", alphas)
        buf("abar", abar)
        buf("abar_prev", abar_prev)
        buf("sqrt_abar", torch.sqrt(abar))
        buf("sqrt_one_minus_abar", torch.sqrt(1.0 - abar))
        buf("snr", snr)
        buf("shift", shift)
        buf("weight", weight)

    def extra_repr(self) -> str:
        return f"timesteps={self.timesteps}, beta_start={self.beta_start}, beta_end={self.beta_end}"

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (the forward process q(x_t | x_0))."""
        return extract(self.sqrt_abar, t, x0.shape) * x0 + extract(self.sqrt_one_minus_abar, t, x0.shape) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x^_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (x_t - extract(self.sqrt_one_minus_abar, t, x_t.shape) * eps) / extract(self.sqrt_abar, t, x_t.shape)

    def to_diffusers_config(self) -> dict:
        """The DDPMScheduler config with the same betas (written next to pre-trained DMs)."""
        return {
            "_class_name": "DDPMScheduler",
            "num_train_timesteps": self.timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "beta_schedule": "linear",
            "prediction_type": "epsilon",
            "variance_type": "fixed_small",
            "clip_sample": True,
        }

    def check_diffusers_config(self, config: dict, source: str = "scheduler config") -> None:
        """Raise ValueError if a diffusers scheduler config describes a different forward process."""
        problems = []
        if config.get("num_train_timesteps", self.timesteps) != self.timesteps:
            problems.append(f"num_train_timesteps={config['num_train_timesteps']} (ours {self.timesteps})")
        schedule = config.get("beta_schedule", "linear")
        if schedule != "linear":
            problems.append(f"beta_schedule={schedule!r} (ours 'linear')")
        if config.get("trained_betas") is not None:
            problems.append("trained_betas is set (ours: a linear schedule)")
        for key, ours in (("beta_start", self.beta_start), ("beta_end", self.beta_end)):
            theirs = config.get(key, ours)
            if abs(float(theirs) - ours) > 1e-9:
                problems.append(f"{key}={theirs} (ours {ours})")
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            problems.append(f"prediction_type={prediction!r} (DiTi needs an eps-prediction DM)")
        if problems:
            raise ValueError(
                f"{source} does not match diti's diffusion schedule: " + "; ".join(problems)
                + ". Set the diffusion section of the config to match the DM, or use a DM trained with this schedule."
            )

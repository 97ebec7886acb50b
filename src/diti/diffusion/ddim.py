"""Deterministic DDIM decoding and inversion (eta = 0) over a sub-sequence of time-steps.

Both take ``eps_fn(x_t, t) -> eps``: the frozen DM alone, or DiTi's shifted predictor
eps' = eps_theta - sqrt(1 - abar_t) G(x_t, t, z~) with the per-t mask (``DiTiModel.eps_fn``). They walk the
same time-step sequence in opposite directions, so decoding the inversion of x_0 gives x_0 back up to the
usual DDIM inversion error (eps is evaluated at the source point of each step).

``clip_x0`` (decoding only): at each step the predicted x_0 is clipped to [-1, 1] and the step's eps is
re-derived from the clipped x_0, as every official sampler does. Where the prediction already lies in
[-1, 1] the clipped step equals the plain one. Inversion never clips: it must stay the exact reverse walk of
the unclipped decoder. diti's default is no clipping (``--clip-x0`` on the commands that decode).

We write the update ourselves instead of using diffusers' DDIMScheduler/DDIMInverseScheduler because the two
directions must pair exactly the same (t, t') steps, from the clean image (abar_{-1} = 1) to t = T - 1 and
back, which those schedulers' step offsets and final-alpha conventions do not guarantee.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(timesteps: int, num_steps: int) -> list[int]:
    """``num_steps`` evenly spaced time-steps from 0 to T - 1 inclusive, increasing."""
    if not 1 <= num_steps <= timesteps:
        raise ValueError(f"num_steps must be in [1, {timesteps}], got {num_steps}")
    if num_steps == 1:
        return [timesteps - 1]
    return sorted({round(i * (timesteps - 1) / (num_steps - 1)) for i in range(num_steps)})


def _step(
    x: torch.Tensor, eps: torch.Tensor, abar_from: float, abar_to: float, clip_x0: bool = False
) -> torch.Tensor:
    """x_from -> x_to along the deterministic DDIM path: predict x_0, re-noise it with the same eps.

    ``clip_x0``: clip the predicted x_0 to [-1, 1] and use the eps that points from x to the clipped x_0.
    """
    x0 = (x - (1 - abar_from) ** 0.5 * eps) / abar_from**0.5
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - abar_from**0.5 * x0) / (1 - abar_from) ** 0.5
    return abar_to**0.5 * x0 + (1 - abar_to) ** 0.5 * eps


def _abar(schedule: NoiseSchedule, t: int) -> float:
    return 1.0 if t < 0 else float(schedule.abar[t])


@torch.no_grad()
def ddim_invert(
    eps_fn: EpsFn, schedule: NoiseSchedule, x0: torch.Tensor, num_steps: int = 100, progress: bool = False
) -> torch.Tensor:
    """x_0 -> x_{T-1}: the deterministic DDIM encoding of x0 (B, C, H, W)."""
    seq = ddim_timesteps(schedule.timesteps, num_steps)
    x = x0
    prev = -1  # the clean image sits at abar_{-1} = 1
    for t in tqdm(seq, desc="DDIM inversion", disable=not progress, leave=False):
        # eps is evaluated at the current (less noisy) point; at the clean image we ask the model at t = 0
        t_eval = max(prev, 0)
        eps = eps_fn(x, torch.full((x.shape[0],), t_eval, device=x.device, dtype=torch.long))
        x = _step(x, eps.float(), _abar(schedule, prev), _abar(schedule, t))
        prev = t
    return x


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn, schedule: NoiseSchedule, x_T: torch.Tensor, num_steps: int = 100, progress: bool = False,
    clip_x0: bool = False,
) -> torch.Tensor:
    """x_{T-1} -> x_0: deterministic DDIM decoding of x_T (B, C, H, W).

    ``clip_x0``: clip the predicted x_0 to [-1, 1] at every step (the official samplers' behaviour; the output
    then lies in [-1, 1]). Without it nothing is clipped."""
    seq = ddim_timesteps(schedule.timesteps, num_steps)
    x = x_T
    for i in tqdm(range(len(seq) - 1, -1, -1), desc="DDIM decoding", disable=not progress, leave=False):
        t, prev = seq[i], (seq[i - 1] if i > 0 else -1)
        eps = eps_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x = _step(x, eps.float(), _abar(schedule, t), _abar(schedule, prev), clip_x0)
    return x

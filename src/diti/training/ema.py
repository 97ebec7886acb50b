"""Exponential moving average of a set of named parameters."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow <- decay_t * shadow + (1 - decay_t) * param after each optimizer step.

    decay_t = min(decay, (1 + step) / (10 + step)) with ``warmup``, else ``decay``: with warm-up the average
    of a short run is not dominated by the random initialisation.
    """

    def __init__(self, named_params: dict[str, nn.Parameter], decay: float, warmup: bool = True):
        self.params = named_params
        self.decay = decay
        self.warmup = warmup
        self.shadow = {name: p.detach().clone().float() for name, p in named_params.items()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """One EMA step: a single fused lerp over every tensor (``torch._foreach_lerp_``; per tensor on CPU)."""
        decay = self.decay_at(step)
        shadows = list(self.shadow.values())
        params = [p.detach().float() for p in self.params.values()]
        torch._foreach_lerp_(shadows, params, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state is missing {sorted(missing)[:5]}")
        for name in self.shadow:
            self.shadow[name].copy_(state[name])

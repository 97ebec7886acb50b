"""The counterfactual: a's code with chosen dims moved toward b's, decoded by DDIM (docs/evaluation.md).

For B pairs (a, b) with codes and inversions, G groups of dims (boolean masks over z) and n weights alpha:

1. z = z_a outside the group's dims and (1 - alpha) z_a + alpha z_b on them (``mix_codes``);
2. x_T = x_T(a) (``x_T="keep"``) or slerp(x_T(a), x_T(b), alpha) (``x_T="slerp"``);
3. decode with DDIM and eps_fn(z) (``Counterfactuals.decode``, or one (group, alpha) cell at a time with
   ``decode_cell``).

``mode="swap"`` is the single alpha 1 (the dims are replaced by b's; a slerped x_T is then b's);
``mode="interpolate"`` runs the given alphas. alpha 0 with a's x_T kept is exactly a's reconstruction.
The API (one edit), the figures (every group and alpha), fidelity (each group swapped in turn) and the
explorer (through the API) all build their counterfactuals here; they differ only in how they batch the
decoding, which each keeps (a batch's composition changes the last bits of a decoded image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .inversion import Inversion, decode

MODES = ("interpolate", "swap")
X_T_MODES = ("keep", "slerp")


def check_modes(mode: str, x_T: str) -> None:
    """ValueError naming an unknown counterfactual mode or x_T mode."""
    if mode not in MODES:
        raise ValueError(f"unknown counterfactual mode {mode!r}; expected one of {MODES}")
    if x_T not in X_T_MODES:
        raise ValueError(f"unknown x_T mode {x_T!r}; expected one of {X_T_MODES}")


def figure_alphas(mode: str, x_T: str, alphas: Sequence[float]) -> tuple[float, ...]:
    """The alphas of a figure's columns: (1.0,) for a swap (whatever ``alphas`` says), else ``alphas``."""
    check_modes(mode, x_T)
    alphas = (1.0,) if mode == "swap" else tuple(float(a) for a in alphas)
    if not alphas:
        raise ValueError("alphas is empty")
    return alphas


def edit_alpha(mode: str, x_T: str, alpha: float | None) -> float:
    """The alpha of one edit: 1 for a swap (which refuses any other), else ``alpha`` (default 0.5) in [0, 1]."""
    check_modes(mode, x_T)
    if mode == "swap":
        if alpha not in (None, 1, 1.0):
            raise ValueError(f"mode='swap' replaces the dims by b's (alpha 1); for alpha={alpha} use "
                             "mode='interpolate'")
        return 1.0
    alpha = 0.5 if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    return alpha


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation per sample between a and b (B, ...), at a scalar ``alpha`` in [0, 1].

    The angle is taken per sample over all its elements. alpha 0 gives a and alpha 1 gives b exactly; nearly
    parallel pairs fall back to linear interpolation.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    alpha = float(alpha)
    if alpha == 0.0:
        return a.clone()
    if alpha == 1.0:
        return b.clone()
    fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]  # (B, 1)
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, torch.full_like(sin, 1 - alpha), torch.sin((1 - alpha) * theta) / safe)
    wb = torch.where(parallel, torch.full_like(sin, alpha), torch.sin(alpha * theta) / safe)
    return (wa * fa + wb * fb).reshape(a.shape).to(a.dtype)


def mix_codes(
    z_a: torch.Tensor, z_b: torch.Tensor, dims_mask: np.ndarray, alphas: Sequence[float]
) -> torch.Tensor:
    """(n_alphas, B, d): z_a with the masked dims set to (1 - alpha) z_a + alpha z_b, for each alpha."""
    mask = torch.as_tensor(np.asarray(dims_mask, dtype=bool), device=z_a.device)
    if mask.shape != (z_a.shape[-1],):
        raise ValueError(f"dims_mask must have shape ({z_a.shape[-1]},), got {tuple(mask.shape)}")
    return torch.stack([torch.where(mask, (1 - a) * z_a + a * z_b, z_a) for a in alphas])


@dataclass(frozen=True)
class Counterfactuals:
    """The codes and noise of every (group, alpha) cell of B pairs: ``codes`` (G, n, B, d), ``noise``
    (n, B, C, R, R) (the x_T of each alpha, shared by the groups)."""

    codes: torch.Tensor
    noise: torch.Tensor
    alphas: tuple[float, ...]

    def decode(
        self, model, num_steps: int, batch_size: int | None = None, progress: bool = False, clip_x0: bool = False,
    ) -> torch.Tensor:
        """Every cell, (G, n, B, C, R, R): the G * n * B rows in group, alpha, pair order, decoded in batches
        of ``batch_size`` (None: one batch)."""
        groups, n, b = self.codes.shape[:3]
        out = decode(model, self.codes.flatten(0, 2), self.noise.expand(groups, *self.noise.shape).flatten(0, 2),
                     num_steps, batch_size, progress, clip_x0=clip_x0)
        return out.reshape(groups, n, b, *out.shape[1:])

    def decode_cell(
        self, model, group: int, alpha: int, num_steps: int, batch_size: int | None = None, clip_x0: bool = False,
    ) -> torch.Tensor:
        """The B pairs of one cell (group index, alpha index), (B, C, R, R), decoded as their own batch(es)."""
        return decode(model, self.codes[group, alpha], self.noise[alpha], num_steps, batch_size, clip_x0=clip_x0)


def counterfactuals(
    a: Inversion, b: Inversion | torch.Tensor, masks: Sequence[np.ndarray], alphas: Sequence[float],
    x_T: str = "keep",
) -> Counterfactuals:
    """The counterfactuals of the pairs (a, b) for every group of dims in ``masks`` ((d,) booleans) and every
    alpha (module docstring). ``b``: b's inversion, or only its codes (B, d) when x_T is kept."""
    z_b = b.z if isinstance(b, Inversion) else b
    if len(a) != len(z_b):
        raise ValueError(f"a and b must be pairs: got {len(a)} image(s) a and {len(z_b)} image(s) b")
    if x_T == "slerp" and not isinstance(b, Inversion):
        raise ValueError("x_T='slerp' needs b's inversion, not only its codes")
    alphas = tuple(float(al) for al in alphas)
    codes = torch.stack([mix_codes(a.z, z_b, mask, alphas) for mask in masks])
    noise = torch.stack([a.x_T if x_T == "keep" else slerp(a.x_T, b.x_T, al) for al in alphas])
    return Counterfactuals(codes, noise, alphas)

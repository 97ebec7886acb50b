"""Counterfactual figures: a grid of a toward b for chosen dims and alphas, and the standard figure of a
model (one row per dim group and pair), built with ``diti.inference`` (docs/evaluation.md).

The protocol (``diti.inference.counterfactual``), for a source image a and a reference image b: invert both
with their own codes, set the selected dims of z_a to (1 - alpha) z_a + alpha z_b, keep a's x_T or slerp it
toward b's, decode with DDIM (``clip_x0``: clip the predicted x_0 at every decoding step, off by default;
inversion never clips). ``mode="swap"`` is alpha 1 alone.

The model is used as given (``diti.load(...).model``: eval mode, EMA weights); inputs must be on its device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..inference import DimGroup, counterfactuals, decode, dim_groups, figure_alphas, invert
from .grids import save_image_grid

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _alpha_label(mode: str, alpha: float) -> str:
    return "swap" if mode == "swap" else f"alpha={alpha:g}"


@torch.no_grad()
def counterfactual_grid(
    model,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    dims_mask: np.ndarray,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    mode: str = "interpolate",
    x_T: str = "keep",
    num_steps: int = 100,
    progress: bool = False,
    clip_x0: bool = False,
) -> dict:
    """Counterfactuals of a toward b on the dims ``dims_mask`` (d,) bool (see the module docstring).

    x_a, x_b: (B, C, R, R) pairs in [-1, 1], or single images (C, R, R). Each image set is inverted as its own
    batch and each alpha is decoded as one batch of the B pairs, exactly as ``reconstruct`` does, so alpha 0
    with x_T kept is bit-identical to ``reconstruct(model, x_a)``. Returns a dict:

    - ``images``: (B, n, C, R, R), n = number of alphas ((n, C, R, R) for single images), clipped to [-1, 1]
      only with ``clip_x0``;
      ``labels``: n column labels; ``alphas``: the alphas used (``(1.0,)`` for a swap);
    - ``reconstruction``: the plain DDIM reconstruction of a (alpha 0 with x_T kept), same shape as x_a;
    - ``z_a``, ``z_b`` (B, d), ``x_T_a``, ``x_T_b`` (B, C, R, R): the codes and inversions.
    """
    alphas = figure_alphas(mode, x_T, alphas)
    single = x_a.dim() == 3
    if single:
        x_a, x_b = x_a[None], x_b[None]
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have one shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    inv_a, inv_b = invert(model, x_a, num_steps, progress), invert(model, x_b, num_steps, progress)
    cells = counterfactuals(inv_a, inv_b, [dims_mask], alphas, x_T)
    columns = [cells.decode_cell(model, 0, i, num_steps, clip_x0=clip_x0)
               for i in tqdm(range(len(alphas)), desc="alphas", disable=not progress, leave=False)]
    images = torch.stack(columns, dim=1)  # (B, n, C, R, R)
    recon_col = next((i for i, a in enumerate(alphas) if a == 0.0), None) if x_T == "keep" else None
    recon = (images[:, recon_col] if recon_col is not None
             else decode(model, inv_a.z, inv_a.x_T, num_steps, clip_x0=clip_x0))
    return {
        "images": images[0] if single else images,
        "labels": [_alpha_label(mode, a) for a in alphas],
        "alphas": list(alphas),
        "reconstruction": recon[0] if single else recon,
        "z_a": inv_a.z,
        "z_b": inv_b.z,
        "x_T_a": inv_a.x_T,
        "x_T_b": inv_b.x_T,
    }


@torch.no_grad()
def counterfactual_figure(
    model,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    path: str | Path,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    mode: str = "interpolate",
    x_T: str = "keep",
    num_steps: int = 100,
    max_groups: int = 4,
    groups: Sequence[DimGroup] | None = None,
    batch_size: int | None = None,
    cell: int = 64,
    title: str | None = None,
    progress: bool = False,
    clip_x0: bool = False,
) -> Path:
    """The standard figure: for each pair (x_a[p], x_b[p]) and each dim group, a row a -> b.

    Rows: one per (pair, group), groups from ``dim_groups(model.partition, max_groups)`` unless given (stages
    for DiTi, chunk groups for a one-stage partition, equal dim groups for PDAE). Columns: the real a, the
    decoded alphas, the real b. Every inversion is done once and all rows are decoded together (in batches of
    ``batch_size``). Saves a PNG at ``path``.
    """
    alphas = figure_alphas(mode, x_T, alphas)
    if x_a.dim() != 4 or x_a.shape != x_b.shape:
        raise ValueError(
            f"x_a and x_b must be batches (B, C, R, R) of one shape, got {tuple(x_a.shape)}, "
            f"{tuple(x_b.shape)}"
        )
    part = model.partition
    groups = list(groups) if groups is not None else dim_groups(part, max_groups)
    inv = invert(model, torch.cat([x_a, x_b]), num_steps, progress)
    b = len(x_a)
    cells = counterfactuals(inv[:b], inv[b:], [g.mask(part.latent_dim) for g in groups], alphas, x_T)
    out = cells.decode(model, num_steps, batch_size, progress, clip_x0=clip_x0)  # (G, n, B, C, R, R)

    images, row_labels = [], []
    for p in range(b):
        for g, group in enumerate(groups):
            images += [x_a[p], *out[g, :, p], x_b[p]]
            row_labels.append(f"pair {p}: {group.label}" if b > 1 else group.label)
    col_labels = ["a", *(_alpha_label(mode, a) for a in alphas), "b"]
    if title is None:
        kind = "PDAE (k=1)" if part.k == 1 else f"DiTi (k={part.k}, {part.num_stages} stage(s))"
        title = f"{kind}: {mode} z dims of a toward b, x_T {x_T}, {num_steps} DDIM steps" + (
            ", x0 clipped" if clip_x0 else "")
    pixels = torch.stack([c.float().cpu() for c in images])
    return save_image_grid(
        path, pixels, len(alphas) + 2, row_labels=row_labels, col_labels=col_labels, cell=cell, title=title
    )


def random_pairs(n: int, num_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) index arrays of ``num_pairs`` seeded random pairs of distinct items out of n."""
    if n < 2:
        raise ValueError(f"need at least 2 images to make pairs, got {n}")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, num_pairs)
    b = (a + rng.integers(1, n, num_pairs)) % n  # never equal to a
    return a, b


def standard_counterfactual_figure(
    model,
    dataset,
    path: str | Path,
    num_pairs: int = 4,
    seed: int = 0,
    **kwargs,
) -> Path:
    """``counterfactual_figure`` on ``num_pairs`` seeded random pairs of ``dataset`` (an ImageDataset), on the
    model's device; ``kwargs`` go to ``counterfactual_figure``."""
    device = next(model.parameters()).device
    a, b = random_pairs(len(dataset), num_pairs, seed)
    x_a = dataset.__getitems__(a.tolist()).to(device)
    x_b = dataset.__getitems__(b.tolist()).to(device)
    return counterfactual_figure(model, x_a, x_b, path, **kwargs)

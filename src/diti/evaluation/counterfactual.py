"""Counterfactual generation: edit chosen dims of z, decode with DDIM (docs/evaluation.md).

The protocol, for a source image a and a reference image b:

1. z_a = E(a), z_b = E(b); DDIM-invert each image with its own shifted predictor eps_fn(z) (the per-t mask
   included) to x_T(a), x_T(b).
2. For each alpha, z_alpha = z_a outside the selected dims and (1 - alpha) z_a + alpha z_b on them.
3. x_T is either kept (x_T(a)) or slerped, slerp(x_T(a), x_T(b), alpha) with the same alpha.
4. Decode x_T with DDIM and eps_fn(z_alpha); with ``clip_x0`` every decoding step clips its predicted x_0 to
   [-1, 1] (the official samplers' behaviour; off by default). Inversion never clips.

``mode="interpolate"`` runs the given alphas; ``mode="swap"`` is the single alpha 1: the selected dims are
replaced by b's (and x_T, when slerped, is b's). alpha 0 with a kept x_T is exactly the DDIM reconstruction of
a; alpha 1 on all dims with a slerped x_T is exactly the reconstruction of b.

Which dims to edit: ``select_dims`` (chunks, stages or explicit dims) and ``dim_groups`` (the rows of the
standard figure: one group per partition stage, or contiguous groups of chunks when the partition has one
stage, or equal groups of dims for PDAE, k = 1, which has no time structure).

The model is used as given (``load_diti_run`` returns it in eval mode, with EMA weights); inputs must be on
its device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..diffusion.ddim import ddim_invert, ddim_sample
from ..partition import Partition
from .grids import save_image_grid

MODES = ("interpolate", "swap")
X_T_MODES = ("keep", "slerp")
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


# ----------------------------------------------------------------------------------------------------
# Which dims
# ----------------------------------------------------------------------------------------------------
def select_dims(
    partition: Partition,
    chunks: Sequence[int] | None = None,
    stages: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
) -> np.ndarray:
    """Boolean mask (d,) of the dims of the given chunk indices, stage indices, or explicit dims.

    Exactly one of ``chunks``, ``stages``, ``dims`` must be given; an out-of-range index raises ValueError
    naming it. An empty list selects nothing.
    """
    given = [name for name, v in (("chunks", chunks), ("stages", stages), ("dims", dims)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of chunks, stages, dims; got {given or 'none'}")
    mask = np.zeros(partition.latent_dim, dtype=bool)
    if chunks is not None:
        for i in _check_indices(chunks, partition.k, "chunk"):
            lo, hi = partition.chunk_dim_ranges[i]
            mask[lo:hi] = True
    elif stages is not None:
        for j in _check_indices(stages, partition.num_stages, "stage"):
            lo, hi = partition.stage_dim_ranges[j]
            mask[lo:hi] = True
    else:
        mask[_check_indices(dims, partition.latent_dim, "dim")] = True
    return mask


def _check_indices(indices: Sequence[int], n: int, what: str) -> list[int]:
    out = []
    for i in indices:
        if isinstance(i, (bool, np.bool_)) or int(i) != i:
            raise ValueError(f"{what} index must be an integer, got {i!r}")
        if not 0 <= int(i) < n:
            raise ValueError(f"{what} index {i} is out of range; the partition has {n} {what}s (0..{n - 1})")
        out.append(int(i))
    return out


@dataclass(frozen=True)
class DimGroup:
    """A contiguous group of dims with its time-step range (None for PDAE, whose dims have none)."""

    label: str
    dim_range: tuple[int, int]  # [start, end)
    t_range: tuple[int, int] | None  # (first, last), inclusive

    def mask(self, latent_dim: int) -> np.ndarray:
        m = np.zeros(latent_dim, dtype=bool)
        m[self.dim_range[0] : self.dim_range[1]] = True
        return m


def selection_group(
    partition: Partition, chunks: Sequence[int] | None = None, stages: Sequence[int] | None = None,
    dims: Sequence[int] | None = None, label: str | None = None,
) -> DimGroup:
    """The dims of a selection (``select_dims``) as one row of a figure; they must be contiguous. ``label``
    None: "N dims"."""
    picked = np.flatnonzero(select_dims(partition, chunks=chunks, stages=stages, dims=dims))
    if not (len(picked) and picked[-1] - picked[0] + 1 == len(picked)):
        raise ValueError("the selected dims must be contiguous for the figure; pick one range")
    return DimGroup(label or f"{len(picked)} dims", (int(picked[0]), int(picked[-1]) + 1), None)


def dim_groups(partition: Partition, max_groups: int = 4) -> list[DimGroup]:
    """The rows of the standard counterfactual figure and the fidelity table.

    - several stages: one group per stage;
    - one stage, k > 1: the chunks in at most ``max_groups`` contiguous groups (by t-range, near-equal sizes);
    - k = 1 (PDAE): the d dims in at most ``max_groups`` groups of (nearly) equal size. PDAE's dims are used
      at every t, so these groups are arbitrary slices of z, labelled as such, with no t-range.

    The t-range of a stage or chunk group is the union of its chunks' t-ranges: the time-steps at which its
    dims first enter the decoder (a chunk may start inside a stage and end after the stage's boundary).
    """
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    d = partition.latent_dim
    if partition.k == 1:
        n = min(d, max_groups)
        groups = []
        for g, dims in enumerate(np.array_split(np.arange(d), n)):
            lo, hi = int(dims[0]), int(dims[-1]) + 1
            groups.append(DimGroup(f"dim group {g + 1}/{n}: dims {lo}-{hi - 1} (k=1, all t)", (lo, hi), None))
        return groups
    if partition.num_stages > 1:
        chunk_sets = [
            [i for i in range(partition.k) if partition.stage_of_chunk[i] == j]
            for j in range(partition.num_stages)
        ]
        names = [f"stage {j}" for j in range(partition.num_stages)]
    else:
        chunk_sets = [
            list(map(int, c)) for c in np.array_split(np.arange(partition.k), min(partition.k, max_groups))
        ]
        names = [f"chunk {c[0]}" if len(c) == 1 else f"chunks {c[0]}-{c[-1]}" for c in chunk_sets]
    groups = []
    for name, chunks in zip(names, chunk_sets, strict=True):
        lo, hi = partition.chunk_start_dims[chunks[0]], partition.chunk_end_dims[chunks[-1]]
        t0, t1 = partition.chunk_t_ranges[chunks[0]][0], partition.chunk_t_ranges[chunks[-1]][1]
        dims = f"dims {lo}-{hi - 1}" if hi > lo else "no dims"
        groups.append(DimGroup(f"{name}: t {t0}-{t1}, {dims}", (lo, hi), (t0, t1)))
    return groups


# ----------------------------------------------------------------------------------------------------
# Codes and noise
# ----------------------------------------------------------------------------------------------------
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


@torch.no_grad()
def invert(
    model, x0: torch.Tensor, num_steps: int = 100, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (B, d), x_T (B, C, R, R)): the code of x0 and its DDIM inversion with eps_fn(z)."""
    z = model.encode(x0)
    return z, ddim_invert(model.eps_fn(z), model.schedule, x0, num_steps, progress=progress)


@torch.no_grad()
def decode(
    model,
    z: torch.Tensor,
    x_T: torch.Tensor,
    num_steps: int = 100,
    batch_size: int | None = None,
    progress: bool = False,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM decoding of x_T (N, C, R, R) with eps_fn(z), z (N, d); ``batch_size`` None = one batch.

    ``clip_x0``: clip the predicted x_0 to [-1, 1] at every step (``ddim_sample``)."""
    if len(z) != len(x_T):
        raise ValueError(f"{len(z)} codes for {len(x_T)} noise maps")
    step = batch_size or max(len(z), 1)
    out = []
    starts = range(0, len(z), step)
    for s in tqdm(starts, desc="decode", disable=not (progress and len(starts) > 1), leave=False):
        out.append(
            ddim_sample(
                model.eps_fn(z[s : s + step]),
                model.schedule,
                x_T[s : s + step],
                num_steps,
                progress=progress and len(starts) == 1,
                clip_x0=clip_x0,
            )
        )
    return torch.cat(out)


@torch.no_grad()
def reconstruct(
    model, x0: torch.Tensor, num_steps: int = 100, progress: bool = False, clip_x0: bool = False
) -> torch.Tensor:
    """The plain DDIM reconstruction of x0: invert and decode with its own code (``clip_x0``: see ``decode``)."""
    z, x_T = invert(model, x0, num_steps, progress)
    return decode(model, z, x_T, num_steps, progress=progress, clip_x0=clip_x0)


# ----------------------------------------------------------------------------------------------------
# Counterfactuals
# ----------------------------------------------------------------------------------------------------
def _check_modes(mode: str, x_T: str, alphas: Sequence[float]) -> tuple[float, ...]:
    if mode not in MODES:
        raise ValueError(f"unknown counterfactual mode {mode!r}; expected one of {MODES}")
    if x_T not in X_T_MODES:
        raise ValueError(f"unknown x_T mode {x_T!r}; expected one of {X_T_MODES}")
    alphas = (1.0,) if mode == "swap" else tuple(float(a) for a in alphas)
    if not alphas:
        raise ValueError("alphas is empty")
    return alphas


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
    alphas = _check_modes(mode, x_T, alphas)
    single = x_a.dim() == 3
    if single:
        x_a, x_b = x_a[None], x_b[None]
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have one shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    z_a, xT_a = invert(model, x_a, num_steps, progress)
    z_b, xT_b = invert(model, x_b, num_steps, progress)

    codes = mix_codes(z_a, z_b, dims_mask, alphas)  # (n, B, d)
    columns = []
    for a, z in zip(tqdm(alphas, desc="alphas", disable=not progress, leave=False), codes, strict=True):
        noise = xT_a if x_T == "keep" else slerp(xT_a, xT_b, a)
        columns.append(decode(model, z, noise, num_steps, clip_x0=clip_x0))
    images = torch.stack(columns, dim=1)  # (B, n, C, R, R)
    recon_col = next((i for i, a in enumerate(alphas) if a == 0.0), None) if x_T == "keep" else None
    recon = images[:, recon_col] if recon_col is not None else decode(model, z_a, xT_a, num_steps, clip_x0=clip_x0)
    return {
        "images": images[0] if single else images,
        "labels": [_alpha_label(mode, a) for a in alphas],
        "alphas": list(alphas),
        "reconstruction": recon[0] if single else recon,
        "z_a": z_a,
        "z_b": z_b,
        "x_T_a": xT_a,
        "x_T_b": xT_b,
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
    alphas = _check_modes(mode, x_T, alphas)
    if x_a.dim() != 4 or x_a.shape != x_b.shape:
        raise ValueError(
            f"x_a and x_b must be batches (B, C, R, R) of one shape, got {tuple(x_a.shape)}, "
            f"{tuple(x_b.shape)}"
        )
    part = model.partition
    groups = list(groups) if groups is not None else dim_groups(part, max_groups)
    z, x_T_all = invert(model, torch.cat([x_a, x_b]), num_steps, progress)
    b = len(x_a)
    z_a, z_b, xT_a, xT_b = z[:b], z[b:], x_T_all[:b], x_T_all[b:]

    noise = torch.stack([xT_a if x_T == "keep" else slerp(xT_a, xT_b, a) for a in alphas])  # (n, B, C, R, R)
    codes = torch.stack(
        [mix_codes(z_a, z_b, g.mask(part.latent_dim), alphas) for g in groups]
    )  # (G, n, B, d)
    n_g, n_a = len(groups), len(alphas)
    out = decode(
        model,
        codes.flatten(0, 2),
        noise.expand(n_g, *noise.shape).flatten(0, 2),
        num_steps,
        batch_size,
        progress,
        clip_x0=clip_x0,
    )
    out = out.reshape(n_g, n_a, b, *out.shape[1:])

    cells, row_labels = [], []
    for p in range(b):
        for g, group in enumerate(groups):
            cells += [x_a[p], *out[g, :, p], x_b[p]]
            row_labels.append(f"pair {p}: {group.label}" if b > 1 else group.label)
    col_labels = ["a", *(_alpha_label(mode, a) for a in alphas), "b"]
    if title is None:
        kind = "PDAE (k=1)" if part.k == 1 else f"DiTi (k={part.k}, {part.num_stages} stage(s))"
        title = f"{kind}: {mode} z dims of a toward b, x_T {x_T}, {num_steps} DDIM steps" + (
            ", x0 clipped" if clip_x0 else "")
    images = torch.stack([c.float().cpu() for c in cells])
    return save_image_grid(
        path, images, n_a + 2, row_labels=row_labels, col_labels=col_labels, cell=cell, title=title
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

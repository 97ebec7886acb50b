"""Attribute loss vs time-step: the paper's Err(x_0, y_0, t), measured with the frozen DM.

docs/evaluation.md (attribute loss vs time-step): for two images x_0, y_0 that differ in exactly one attribute,

    Err(x_0, y_0, t) = 1/2 [ P(||x^_0 - x_0|| > ||x^_0 - y_0||) + P(||y^_0 - x_0|| < ||y^_0 - y_0||) ],

where x^_0 = predict_x0(x_t, t, eps_theta(x_t, t)) is the frozen DM's reconstruction from x_t ~ q(x_t|x_0)
(and y^_0 likewise from y_t ~ q(y_t|y_0)). Each term is the probability that a reconstruction lands closer to
the *other* image: 0 while the DM still recovers the attribute from x_t, 1/2 once it is lost (the
reconstruction is then as likely to side with either image). The theory says it rises with t, earlier for
finer attributes, which is the premise of DiTi's time-step partition.

Estimator: for every pair and every t, ``num_noise`` noise draws per image; an item is "wrong" when its
reconstruction is strictly closer to the other image, and a tie (e.g. a DM that ignores its input) counts
1/2. Err(t) is the mean over pairs, draws and the two images of a pair (the two terms have equal weight).

| code                | paper                         |
| ------------------- | ----------------------------- |
| ``images_a[p]``     | x_0 of pair p                 |
| ``images_b[p]``     | y_0 of pair p                 |
| ``rec``             | x^_0 (or y^_0)                |
| ``curve[i]``        | Err averaged over pairs at timesteps[i] |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..diffusion.schedule import NoiseSchedule
from ..folders.results import AttributeLossResult

# eps_theta(x_t, t) -> eps, or a module whose output has ``.sample`` (a diffusers UNet2DModel)
EpsModel = Callable[[torch.Tensor, torch.Tensor], object]

# Above this many candidate pairs find_pairs samples pairs instead of listing them all.
_ENUMERATE_LIMIT = 2_000_000


def default_timesteps(timesteps: int = 1000, num: int = 20) -> list[int]:
    """``num`` time-steps from 0 to T - 1, quadratically spaced (denser at small t, where fine attributes go).

    T = 1000, num = 20: 0, 3, 11, 25, 44, 69, 100, 136, 177, 224, 277, 335, 398, 468, 543, 623, 709, 800, 897, 999.
    """
    if timesteps < 1 or num < 1:
        raise ValueError(f"need timesteps >= 1 and num >= 1, got timesteps={timesteps}, num={num}")
    if num == 1:
        return [timesteps - 1]
    grid = np.round((timesteps - 1) * np.linspace(0.0, 1.0, num) ** 2).astype(int)
    return sorted(set(grid.tolist()))


# ----------------------------------------------------------------------------------------------------
# Pairs
# ----------------------------------------------------------------------------------------------------
def find_pairs(attributes, factor_index: int, max_pairs: int = 64, seed: int = 0) -> np.ndarray:
    """Row pairs (P, 2) whose column ``factor_index`` differs while every other column is equal.

    ``attributes``: a ``diti.data.Attributes`` (or anything with ``values`` (N, A) and ``names``). Pairs are
    drawn uniformly without replacement from all such pairs (P = min(max_pairs, number of such pairs)),
    deterministically for a given seed; each row is (i, j) with i < j. ValueError if there is none.
    """
    values = np.asarray(attributes.values)
    names = list(getattr(attributes, "names", range(values.shape[1])))
    if values.ndim != 2:
        raise ValueError(f"attribute values must be (N, A), got shape {values.shape}")
    if not 0 <= factor_index < values.shape[1]:
        raise ValueError(f"factor_index {factor_index} out of range for {values.shape[1]} attributes {names}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    rng = np.random.default_rng(seed)
    others = np.delete(values, factor_index, axis=1)
    target = values[:, factor_index]
    # group rows by the values of every other column: candidate pairs live inside one group
    if others.shape[1]:
        _, group = np.unique(others, axis=0, return_inverse=True)
        group = group.reshape(-1)
    else:
        group = np.zeros(len(values), dtype=np.int64)
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    members = [m for m in np.split(order, bounds) if len(m) > 1]
    counts = np.array([_differing_pairs(target[m]) for m in members], dtype=np.int64)
    total = int(counts.sum()) if len(counts) else 0
    if total == 0:
        raise ValueError(
            f"no pair of rows differs in attribute {names[factor_index]!r} alone (all other attributes equal) "
            f"among {len(values)} rows; use a larger data set or split"
        )
    if total <= _ENUMERATE_LIMIT:
        pairs = np.concatenate([_all_differing_pairs(m, target[m]) for m, c in zip(members, counts, strict=True)
                                if c])
        pick = rng.choice(len(pairs), size=min(max_pairs, len(pairs)), replace=False)
        return pairs[pick]
    # Too many to list (e.g. a large data set with few attributes): sample a group in proportion to its
    # number of pairs, then a uniform pair inside it; repeat until max_pairs distinct pairs are found.
    found: dict[tuple[int, int], None] = {}
    weights = counts / total
    while len(found) < min(max_pairs, total):
        m = members[rng.choice(len(members), p=weights)]
        i, j = rng.choice(m, size=2, replace=False)
        if target[i] != target[j]:
            found.setdefault((min(i, j), max(i, j)), None)
    return np.array(list(found), dtype=np.int64)


def _differing_pairs(column: np.ndarray) -> int:
    """Number of unordered pairs of rows with different values: (n^2 - sum_c n_c^2) / 2."""
    _, n_c = np.unique(column, return_counts=True)
    return int((len(column) ** 2 - (n_c.astype(np.int64) ** 2).sum()) // 2)


def _all_differing_pairs(rows: np.ndarray, column: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(len(rows), k=1)
    keep = column[i] != column[j]
    return np.stack([rows[i[keep]], rows[j[keep]]], axis=1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# The Monte-Carlo estimate
# ----------------------------------------------------------------------------------------------------
def _eps_fn(dm: EpsModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = dm(x_t, t)
        return getattr(out, "sample", out)

    return eps


def _device_of(dm: EpsModel, fallback: torch.device) -> torch.device:
    if isinstance(dm, torch.nn.Module):
        param = next(iter(dm.parameters()), None)
        if param is not None:
            return param.device
    return fallback


@torch.no_grad()
def attribute_loss_curve(
    dm: EpsModel,
    schedule: NoiseSchedule,
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    timesteps: Sequence[int],
    num_noise: int = 2,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
    per_pair: bool = False,
    clip: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Err(t) for pairs (images_a[p], images_b[p]), each (P, C, H, W) in the DM's range: (len(timesteps),).

    ``dm``: a UNet2DModel (its ``.sample`` is eps_theta) or any ``eps_fn(x_t, t) -> eps``. The noise comes from
    a CPU generator seeded with ``seed`` and is drawn per t in a fixed order, so the estimate does not depend
    on the device or on ``batch_size``. ``per_pair`` returns (len(timesteps), P) instead (mean over draws and
    the two images of each pair). ``clip`` clamps x^_0 to [-1, 1] (the paper's x^_0 is unclipped; clipping
    keeps the large-t reconstructions, amplified by 1 / sqrt(abar_t), inside the image range).
    """
    if images_a.shape != images_b.shape or images_a.ndim != 4:
        raise ValueError(f"images_a and images_b must both be (P, C, H, W), got {tuple(images_a.shape)} and "
                         f"{tuple(images_b.shape)}")
    bad = [t for t in timesteps if not 0 <= int(t) < schedule.timesteps]
    if bad:
        raise ValueError(f"timesteps {bad} out of range 0..{schedule.timesteps - 1}")
    if num_noise < 1 or batch_size < 1:
        raise ValueError(f"num_noise and batch_size must be >= 1, got {num_noise} and {batch_size}")
    device = torch.device(device) if device is not None else _device_of(dm, images_a.device)
    eps_fn = _eps_fn(dm)  # the schedule's buffers may stay on the CPU: extract() moves coefficients to t's device
    num_pairs, shape = images_a.shape[0], tuple(images_a.shape[1:])
    # own[p, 0] = x_0, own[p, 1] = y_0: item (p, side) is noised from own[p, side], compared with both
    own = torch.stack([images_a, images_b], dim=1).to(device, torch.float32)  # (P, 2, C, H, W)
    wrong = torch.zeros(len(timesteps), num_pairs, dtype=torch.float64)

    # One item per (t, draw, pair, side), streamed through the DM in batches of batch_size.
    generator = torch.Generator().manual_seed(seed)
    pair_idx = torch.arange(num_pairs).repeat_interleave(2).repeat(num_noise)  # (N * P * 2,)
    side_idx = torch.tensor([0, 1]).repeat(num_pairs * num_noise)
    pending: list[tuple[torch.Tensor, ...]] = []
    n_pending = 0
    total = len(timesteps) * len(pair_idx)
    bar = tqdm(total=total, desc="attribute loss", disable=not progress, leave=False, unit="img")

    def flush(n: int) -> None:
        nonlocal pending, n_pending
        ti, p, s, noise = (torch.cat(parts) for parts in zip(*pending, strict=True))
        pending = [tuple(x[n:] for x in (ti, p, s, noise))] if len(ti) > n else []
        n_pending = len(ti) - n
        ti, p, s, noise = ti[:n], p[:n], s[:n], noise[:n].to(device)
        t = torch.tensor([int(timesteps[i]) for i in ti.tolist()], dtype=torch.long, device=device)
        x0 = own[p, s]  # (n, C, H, W)
        x_t = schedule.q_sample(x0, t, noise)  # x_t ~ q(x_t | x_0)
        rec = schedule.predict_x0(x_t, t, eps_fn(x_t, t).float())  # x^_0
        if clip:
            rec = rec.clamp(-1.0, 1.0)
        d_own = (rec - x0).flatten(1).pow(2).sum(1)
        d_other = (rec - own[p, 1 - s]).flatten(1).pow(2).sum(1)
        # closer to the other image: wrong (1); a tie: 1/2
        miss = (d_own > d_other).double() + 0.5 * (d_own == d_other).double()
        wrong.index_put_((ti, p), miss.cpu(), accumulate=True)
        bar.update(n)

    for i in range(len(timesteps)):
        noise = torch.randn((len(pair_idx), *shape), generator=generator)
        pending.append((torch.full((len(pair_idx),), i, dtype=torch.long), pair_idx, side_idx, noise))
        n_pending += len(pair_idx)
        while n_pending >= batch_size:
            flush(batch_size)
    if n_pending:
        flush(n_pending)
    bar.close()
    per_pair_err = (wrong / (2 * num_noise)).numpy()
    return per_pair_err if per_pair else per_pair_err.mean(axis=1)


# ----------------------------------------------------------------------------------------------------
# Every factor of a data set
# ----------------------------------------------------------------------------------------------------
def attribute_loss(
    dm: EpsModel,
    schedule: NoiseSchedule,
    dataset,
    timesteps: Sequence[int] | None = None,
    max_pairs: int = 64,
    num_noise: int = 2,
    threshold: float = 0.25,
    seed: int = 0,
    factors: Sequence[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    clip: bool = False,
    progress: bool = False,
) -> AttributeLossResult:
    """Err(t) for every categorical factor (or those named in ``factors``) of ``dataset``.

    ``dataset``: a diti data set (``.attributes`` and ``__getitems__(indices)`` -> (B, 3, R, R) in [-1, 1]).
    ``timesteps`` None: ``default_timesteps(T, 20)``. Factors without any pair are listed in ``skipped``.
    """
    attributes = getattr(dataset, "attributes", None)
    if attributes is None:
        raise ValueError(f"{dataset!r} has no attribute table; the attribute loss needs known factors")
    if timesteps is None:
        timesteps = default_timesteps(schedule.timesteps)
    timesteps = [int(t) for t in timesteps]
    if not timesteps or timesteps != sorted(set(timesteps)):
        raise ValueError(f"timesteps must be a non-empty increasing list, got {timesteps}")
    if not 0 < threshold <= 0.5:
        raise ValueError(f"threshold must be in (0, 0.5] (Err is 1/2 when an attribute is lost), got {threshold}")
    categorical = [i for i in range(len(attributes.names)) if attributes.is_categorical(i)]
    if factors is not None:
        unknown = [f for f in factors if f not in attributes.names]
        if unknown:
            raise ValueError(f"unknown factor(s) {unknown}; the data set has {attributes.names}")
        categorical = [attributes.names.index(f) for f in factors]
    if not categorical:
        raise ValueError(f"the data set has no categorical factor (attributes {attributes.names})")

    names, curves, stderr, num_pairs, skipped = [], {}, {}, {}, {}
    for k, index in enumerate(categorical):
        name = attributes.names[index]
        try:
            pairs = find_pairs(attributes, index, max_pairs, seed + k)
        except ValueError as err:
            skipped[name] = str(err)
            continue
        images = dataset.__getitems__(pairs.reshape(-1).tolist())  # (2P, C, H, W), rows a0 b0 a1 b1 ...
        per_pair = attribute_loss_curve(
            dm, schedule, images[0::2], images[1::2], timesteps, num_noise, batch_size, seed + k, device,
            per_pair=True, clip=clip, progress=progress,
        )
        names.append(name)
        curves[name] = per_pair.mean(axis=1).tolist()
        spread = per_pair.std(axis=1, ddof=1) / np.sqrt(len(pairs)) if len(pairs) > 1 else np.zeros(len(timesteps))
        stderr[name] = spread.tolist()
        num_pairs[name] = len(pairs)
    if not names:
        raise ValueError("no factor has a pair of images differing in it alone: " + "; ".join(skipped.values()))
    return AttributeLossResult(timesteps, names, curves, stderr, num_pairs, threshold, num_noise, seed, clip,
                               skipped=skipped)

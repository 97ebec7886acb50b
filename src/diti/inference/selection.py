"""Which dims of z to edit or measure: a selection of chunks, stages or dims, and the standard groups of dims
(the rows of a counterfactual figure and of the fidelity table, the groups of the chunk-level metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..partition import Partition


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


def chunk_groups(partition, reference=None, num_slices: int = 8) -> list:
    """The dim groups of the chunk-level metrics, as ``DimGroup``s (label, dim range, t-range).

    ``reference``: the partition of the run this code is compared with (PDAE measured on the chunks of the
    DiTi run beside it); it must have the same latent dim. Otherwise the partition's own chunks, or, for
    k = 1 with no reference, ``num_slices`` equal slices of z (arbitrary for PDAE, whose dims act at every t).
    Chunks without dims are left out.
    """
    source = reference if reference is not None else partition
    if reference is not None and reference.latent_dim != partition.latent_dim:
        raise ValueError(f"the reference partition has d = {reference.latent_dim} but the code has "
                         f"d = {partition.latent_dim}")
    if source.k == 1:
        d = source.latent_dim
        n = min(d, num_slices)
        return [DimGroup(f"slice {g}: dims {int(dims[0])}-{int(dims[-1])} (k=1, all t)",
                         (int(dims[0]), int(dims[-1]) + 1), None)
                for g, dims in enumerate(np.array_split(np.arange(d), n))]
    groups = []
    for i, ((lo, hi), (t0, t1)) in enumerate(zip(source.chunk_dim_ranges, source.chunk_t_ranges, strict=True)):
        if hi > lo:
            groups.append(DimGroup(f"chunk {i}: t {t0}-{t1}, dims {lo}-{hi - 1}", (lo, hi), (t0, t1)))
    return groups

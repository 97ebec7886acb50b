"""The time-step partition of the code z: which dims the decoder may use at time-step t.

z in R^d is split into k chunks; chunk i covers dims [end(i-1), end(i)) and time-steps
{t : floor(t / (T / k)) = i}. At time-step t the decoder sees the chunks 0..chunk_of_t[t] (the cumulative set
of attributes lost by t). k = 1 is PDAE: every dim at every t.

This module reproduces the official DiTi algorithm exactly (docs/method.md, "The partition"):
- chunk_of_t[t] = int(t / (T / k)) (float division);
- balanced: end(i) = int(d / k * (i + 1)), computed as (d * (i + 1)) // k so float rounding never drops a dim;
- imbalanced: stages s_1 < ... < s_m = T with dims D_1..D_m (sum d); a chunk belongs to the stage holding its
  first time-step; in a stage of n chunks and D dims each chunk gets floor(D / n) dims and the stage's last
  chunk takes the remainder, so every stage ends at cumsum(D).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

MODES = ("base", "stop_grad", "dual")


@dataclass(frozen=True)
class Partition:
    """A validated partition of ``latent_dim`` code dims into ``k`` chunks over ``timesteps`` time-steps."""

    latent_dim: int
    k: int
    timesteps: int = 1000
    stages: tuple[int, ...] | None = None
    dims_per_stage: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Accept lists from configs; store tuples so the partition is hashable and immutable.
        if self.stages is not None:
            object.__setattr__(self, "stages", tuple(int(s) for s in self.stages))
        if self.dims_per_stage is not None:
            object.__setattr__(self, "dims_per_stage", tuple(int(s) for s in self.dims_per_stage))
        validate_partition(self.latent_dim, self.k, self.timesteps, self.stages, self.dims_per_stage)

    # ----------------------------------------------------------------------------------------------
    # The tables (plain Python lists, computed once)
    @cached_property
    def chunk_of_t(self) -> list[int]:
        """chunk_of_t[t] = int(t / (T / k)) for t = 0..T-1 (float division, as the official code)."""
        return chunk_of_timesteps(self.k, self.timesteps)

    @cached_property
    def chunk_first_t(self) -> list[int]:
        """The first time-step of each chunk."""
        return chunk_first_timesteps(self.k, self.timesteps)

    @cached_property
    def chunk_t_ranges(self) -> list[tuple[int, int]]:
        """(first, last) time-step of each chunk, both inclusive."""
        firsts = self.chunk_first_t
        return [(firsts[i], (firsts[i + 1] if i + 1 < self.k else self.timesteps) - 1) for i in range(self.k)]

    @cached_property
    def stage_of_chunk(self) -> list[int]:
        """Index of the stage holding each chunk's first time-step (all 0 for a balanced partition)."""
        if self.stages is None:
            return [0] * self.k
        return [stage_of_timestep(first, self.stages) for first in self.chunk_first_t]

    @cached_property
    def chunk_end_dims(self) -> list[int]:
        """end(i): chunk i covers dims [end(i-1), end(i)), end(-1) = 0, end(k-1) = d."""
        if self.stages is None:
            # the official int(d / k * (i + 1)) in exact integer arithmetic: the float product can fall just
            # below an integer (d=97, k=21: 96.99999...) and lose the last dim
            return [self.latent_dim * (i + 1) // self.k for i in range(self.k)]
        ends: list[int] = []
        start = 0
        for j, dims in enumerate(self.dims_per_stage):
            n = self.stage_of_chunk.count(j)
            per_chunk = dims // n
            for c in range(n):
                # the stage's last chunk takes the remainder, so the stage ends at cumsum(dims)
                ends.append(start + (dims if c == n - 1 else per_chunk * (c + 1)))
            start += dims
        return ends

    @cached_property
    def chunk_start_dims(self) -> list[int]:
        return [0] + self.chunk_end_dims[:-1]

    @property
    def num_stages(self) -> int:
        return 1 if self.stages is None else len(self.stages)

    @cached_property
    def stage_dim_ranges(self) -> list[tuple[int, int]]:
        """[start, end) dims of each stage (one stage covering all dims when balanced)."""
        if self.stages is None:
            return [(0, self.latent_dim)]
        ranges, start = [], 0
        for dims in self.dims_per_stage:
            ranges.append((start, start + dims))
            start += dims
        return ranges

    @cached_property
    def stage_t_ranges(self) -> list[tuple[int, int]]:
        """(first, last) time-step of each stage, both inclusive."""
        if self.stages is None:
            return [(0, self.timesteps - 1)]
        bounds = (0, *self.stages)
        return [(bounds[j], bounds[j + 1] - 1) for j in range(len(self.stages))]

    @cached_property
    def chunk_dim_ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.chunk_start_dims, self.chunk_end_dims, strict=True))

    # ----------------------------------------------------------------------------------------------
    # Masks (tensors, cached per device)
    def masks(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-time-step masks, each (T, d) float32 on ``device``.

        cum[t]:  1 on dims [0, end(idx)) with idx = chunk_of_t[t]   (the dims the decoder may use at t)
        prev[t]: 1 on dims [0, end(idx-1))                         (the earlier chunks)
        cur[t]:  1 on dims [end(idx-1), end(idx))                  (the chunk of t's own range)
        """
        key = str(torch.device(device))
        cache = self.__dict__.setdefault("_mask_cache", {})
        if key not in cache:
            dims = torch.arange(self.latent_dim)
            idx = torch.tensor(self.chunk_of_t)
            end = torch.tensor(self.chunk_end_dims)[idx]
            start = torch.tensor(self.chunk_start_dims)[idx]
            cum = (dims[None, :] < end[:, None]).float()
            prev = (dims[None, :] < start[:, None]).float()
            cache[key] = tuple(m.to(device) for m in (cum, prev, cum - prev))
        return cache[key]

    def apply(
        self, z: torch.Tensor, t: torch.Tensor, mode: str = "base",
        masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """z~ for a batch: z (B, d), t (B,) long -> (B, d).

        base:      z * cum[t]                            (gradient to every used chunk)
        stop_grad: sg(z) * prev[t] + z * cur[t]          (gradient only to the chunk of t's range)

        ``masks``: (cum, prev, cur) already on z's device (a module's buffers: DiTiModel registers them, so that
        its forward builds no tensor and changes no state, which torch.compile would trace as a graph break);
        None: this partition's per-device cache (``masks``).
        """
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z has {z.shape[-1]} dims but the partition has latent_dim={self.latent_dim}")
        cum, prev, cur = (m[t].to(z.dtype) for m in (self.masks(z.device) if masks is None else masks))
        if mode == "base":
            return z * cum
        if mode == "stop_grad":
            return z.detach() * prev + z * cur
        raise ValueError(f"unknown partition mode {mode!r}; expected 'base' or 'stop_grad' ('dual' sums both)")

    def timestep_probs(self, kind: str = "uniform") -> torch.Tensor:
        """A distribution over t (T,): ``uniform`` (official), or equal mass per stage / per chunk."""
        if kind == "uniform":
            return torch.full((self.timesteps,), 1.0 / self.timesteps, dtype=torch.float64)
        if kind == "stage_balanced":
            ranges = self.stage_t_ranges
        elif kind == "chunk_balanced":
            ranges = self.chunk_t_ranges
        else:
            raise ValueError(f"unknown timestep sampling {kind!r}; expected uniform, stage_balanced, chunk_balanced")
        probs = torch.zeros(self.timesteps, dtype=torch.float64)
        for first, last in ranges:
            probs[first : last + 1] = 1.0 / (len(ranges) * (last - first + 1))
        return probs

    # ----------------------------------------------------------------------------------------------
    def describe(self) -> list[dict]:
        """One row per chunk: chunk, stage, t-range (inclusive) and dim range [start, end)."""
        return [
            {
                "chunk": i,
                "stage": self.stage_of_chunk[i],
                "t_first": self.chunk_t_ranges[i][0],
                "t_last": self.chunk_t_ranges[i][1],
                "dim_start": self.chunk_start_dims[i],
                "dim_end": self.chunk_end_dims[i],
                "dims": self.chunk_end_dims[i] - self.chunk_start_dims[i],
            }
            for i in range(self.k)
        ]

    def format_table(self) -> str:
        """The partition as a fixed-width text table (chunk, stage, t-range, dims)."""
        header = f"{'chunk':>5}  {'stage':>5}  {'t-range':>11}  {'dims':>11}  {'n':>4}"
        lines = [header, "-" * len(header)]
        for row in self.describe():
            t_range = f"{row['t_first']}-{row['t_last']}"
            d_range = f"{row['dim_start']}-{row['dim_end'] - 1}" if row["dims"] else "-"
            lines.append(f"{row['chunk']:>5}  {row['stage']:>5}  {t_range:>11}  {d_range:>11}  {row['dims']:>4}")
        kind = "balanced" if self.stages is None else f"imbalanced, stages {list(self.stages)}"
        lines.append(f"d={self.latent_dim}, k={self.k}, T={self.timesteps}, {kind}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"chunk_end_dims": list(self.chunk_end_dims), "chunk_of_t": list(self.chunk_of_t)}


def validate_partition(
    latent_dim: int,
    k: int,
    timesteps: int,
    stages: tuple[int, ...] | list[int] | None,
    dims_per_stage: tuple[int, ...] | list[int] | None,
) -> None:
    """Raise ValueError naming the problem if these arguments do not describe a valid partition."""
    if latent_dim < 1:
        raise ValueError(f"partition: latent_dim must be >= 1, got {latent_dim}")
    if timesteps < 1:
        raise ValueError(f"partition: timesteps must be >= 1, got {timesteps}")
    if not 1 <= k <= timesteps:
        raise ValueError(f"partition: k must be in [1, timesteps={timesteps}], got k={k}")
    if (stages is None) != (dims_per_stage is None):
        raise ValueError("partition: stages and dims_per_stage must be given together (or neither, for balanced)")
    if stages is None:
        if k > latent_dim:
            raise ValueError(f"partition: balanced partition needs k <= latent_dim, got k={k} > d={latent_dim}")
        return
    stages, dims = list(stages), list(dims_per_stage)
    if len(stages) != len(dims):
        raise ValueError(
            f"partition: {len(stages)} stages but {len(dims)} dims_per_stage ({stages} vs {dims})"
        )
    if not stages:
        raise ValueError("partition: stages is empty")
    if any(b <= a for a, b in zip(stages[:-1], stages[1:], strict=True)) or stages[0] <= 0:
        raise ValueError(f"partition: stages must be positive and strictly increasing, got {stages}")
    if stages[-1] != timesteps:
        raise ValueError(f"partition: the last stage must end at T={timesteps}, got stages {stages}")
    if any(d < 1 for d in dims):
        raise ValueError(f"partition: every stage needs at least one dim, got dims_per_stage {dims}")
    if sum(dims) != latent_dim:
        raise ValueError(
            f"partition: dims_per_stage {dims} sum to {sum(dims)}, not latent_dim={latent_dim}"
        )
    if k < len(stages):
        raise ValueError(f"partition: k={k} is smaller than the number of stages ({len(stages)})")
    counts = [0] * len(stages)
    for first in chunk_first_timesteps(k, timesteps):
        counts[stage_of_timestep(first, stages)] += 1
    empty = [stages[j] for j, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(
            f"partition: with k={k} (chunks of {timesteps / k:g} time-steps) no chunk starts in the stage(s) "
            f"ending at {empty}; increase k or merge those stages"
        )


def chunk_of_timesteps(k: int, timesteps: int) -> list[int]:
    """int(t / (T / k)) for every t: float division first, as the official code does."""
    width = timesteps / k
    return [int(t / width) for t in range(timesteps)]


def chunk_first_timesteps(k: int, timesteps: int) -> list[int]:
    """The first time-step of each of the k chunks (every chunk has one when k <= T)."""
    first: dict[int, int] = {}
    for t, c in enumerate(chunk_of_timesteps(k, timesteps)):
        first.setdefault(c, t)
    return [first[c] for c in range(k)]


def stage_of_timestep(t: int, stages: tuple[int, ...] | list[int]) -> int:
    """Index of the first stage boundary above t (stages are exclusive upper bounds)."""
    return next(j for j, s in enumerate(stages) if t < s)


def official_celeba_partition() -> Partition:
    """The paper's CelebA/FFHQ/Bedroom setting: d=512, k=64, stages 50..1000, dims 10,25,327,100,50."""
    return Partition(512, 64, 1000, (50, 100, 300, 500, 1000), (10, 25, 327, 100, 50))


def largest_remainder(total: int, weights: list[float], minimum: int = 0) -> list[int]:
    """``total`` units shared in proportion to ``weights`` after ``minimum`` each (largest remainders; ties to
    the earlier entry). All weights 0: shared equally. ValueError if the minimums exceed the total."""
    n = len(weights)
    if n == 0:
        raise ValueError("nothing to share the dims among")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative, got {weights}")
    rest = total - minimum * n
    if rest < 0:
        raise ValueError(f"{total} dims cannot give {minimum} to each of {n} parts")
    if sum(weights) <= 0:
        weights = [1.0] * n
    shares = [rest * w / sum(weights) for w in weights]
    out = [minimum + int(x) for x in shares]
    order = sorted(range(n), key=lambda j: (-(shares[j] - int(shares[j])), j))
    for i in range(total - sum(out)):
        out[order[i % n]] += 1
    return out


def partition_from_chunk_weights(
    weights: list[float], latent_dim: int, k: int, timesteps: int = 1000, floor: int = 1,
) -> Partition:
    """Every chunk its own stage, with ``floor`` dims each and the rest of the d dims in proportion to the
    chunk's weight (largest remainders): dims go where the weight is, and a chunk of weight 0 keeps ``floor``
    dims (at least 1: a stage needs a dim). ``weights``: one non-negative number per chunk of the k-chunk grid.
    """
    if len(weights) != k:
        raise ValueError(f"{len(weights)} chunk weights for k = {k} chunks")
    if floor < 1:
        raise ValueError(f"the floor must be at least 1 dim per chunk (a stage needs a dim), got {floor}")
    if latent_dim < floor * k:
        raise ValueError(f"latent_dim={latent_dim} cannot give {floor} dim(s) to each of k={k} chunks")
    dims = largest_remainder(latent_dim, [float(w) for w in weights], floor)
    ends = [*chunk_first_timesteps(k, timesteps)[1:], timesteps]
    return Partition(latent_dim, k, timesteps, tuple(ends), tuple(dims))


def partition_from_crossings(
    crossings: dict[str, float | None], latent_dim: int, k: int, timesteps: int = 1000, floor: int = 1,
) -> tuple[Partition, list[list[str]]]:
    """The attribute-loss rule: dims where the DM loses the factors, from their crossings (diti's own rule).

    ``crossings``: factor -> the t where its attribute loss reaches the threshold (``diti attribute-loss``'s
    ``crossing_t_interp``, or ``crossing_t``); None for a factor never lost, which is left out. On the grid of
    the k chunks (each T / k time-steps wide), each factor weighs 1 in the chunk whose t-range holds its
    crossing (the newest chunk the decoder sees while the attribute is lost); every chunk is its own stage
    and gets ``floor`` dims plus a share of the remaining d - k * floor dims in proportion to its factors
    (``partition_from_chunk_weights``). So a chunk where no factor is lost keeps only the floor, and the
    dims follow the crossings however narrow their band is.

    Returns the partition and the factor names of each chunk. ValueError if no factor crosses, a crossing is
    outside [0, T), or latent_dim < k * floor.
    """
    lost = _lost(crossings, timesteps)
    if not 1 <= k <= timesteps:
        raise ValueError(f"k must be in [1, T={timesteps}], got k={k}")
    chunk_of = chunk_of_timesteps(k, timesteps)
    groups: list[list[str]] = [[] for _ in range(k)]
    for name, t in lost.items():
        groups[chunk_of[int(t)]].append(name)
    return partition_from_chunk_weights([len(g) for g in groups], latent_dim, k, timesteps, floor), groups


def stages_from_crossings(
    crossings: dict[str, float | None], latent_dim: int, k: int, timesteps: int = 1000,
) -> tuple[Partition, list[list[str]]]:
    """The official imbalanced structure with its stage boundaries at the DM's crossings (the benchmark's
    ``diti-imb-sg`` variant; the rule ``diti partition --from-attribute-loss`` used before 2026-12-03).

    1. each factor belongs to the chunk whose t-range holds its crossing; factors of the same chunk share a
       stage;
    2. each such chunk opens a stage that runs to the next one; the first stage also takes the chunks
       before it (from t = 0), the last runs to T;
    3. dims are shared out in proportion to the number of factors per stage (largest remainders, ties to
       the earlier stage), at least one per stage. Inside a stage the official rule applies (floor(D / n)
       dims per chunk, the remainder to the stage's last chunk).

    A stage that spans chunks where nothing is lost spends dims there (its dims are spread evenly over its
    chunks): ``partition_from_crossings`` places the dims in the crossing chunks instead. Never-lost factors
    join the last stage. Returns the partition and the factor names of each stage.
    """
    lost = _lost(crossings, timesteps)
    if not 1 <= k <= timesteps:
        raise ValueError(f"k must be in [1, T={timesteps}], got {k}")
    chunk_of = chunk_of_timesteps(k, timesteps)
    firsts = chunk_first_timesteps(k, timesteps)
    chunk = {n: chunk_of[int(t)] for n, t in lost.items()}
    opened = sorted(set(chunk.values()))
    groups = [[n for n in lost if chunk[n] == c] for c in opened]
    groups[-1] += [n for n, t in crossings.items() if t is None]
    ends = [firsts[c] for c in opened[1:]] + [timesteps]
    if latent_dim < len(groups):
        raise ValueError(f"latent_dim={latent_dim} is smaller than the {len(groups)} stages of these crossings")
    weights = [len(g) for g in groups]
    shares = [latent_dim * w / sum(weights) for w in weights]
    dims = [max(1, int(x)) for x in shares]
    # hand out (or take back) what rounding left, by the largest (smallest) remainder
    order = sorted(range(len(dims)), key=lambda j: (-(shares[j] - int(shares[j])), j))
    i = 0
    while sum(dims) < latent_dim:
        dims[order[i % len(order)]] += 1
        i += 1
    for j in reversed(order):
        if sum(dims) <= latent_dim:
            break
        if dims[j] > 1:
            dims[j] -= 1
    return Partition(latent_dim, k, timesteps, tuple(ends), tuple(dims)), groups


def partition_from_removed_loss(
    removed: list[float], latent_dim: int, k: int, floor: int = 1,
) -> tuple[Partition, list[float]]:
    """The label-free rule (diti's own): dims where the decoder removes loss, read from a PDAE run.

    ``removed``: r(t) for t = 0..T-1, the frozen DM's weighted loss minus the PDAE model's (the loss the code
    removes at t; ``training.partition_rule.removed_loss_curve`` measures it). Each chunk of the k-chunk grid
    weighs the mean of max(r, 0) over its t-range, and ``partition_from_chunk_weights`` shares the dims: the
    floor for every chunk, the rest in proportion to the weights. Returns the partition and the chunk weights.
    """
    r = [max(float(x), 0.0) if x is not None and x == x else 0.0 for x in removed]
    timesteps = len(r)
    if timesteps < k:
        raise ValueError(f"a removed-loss curve of {timesteps} time-steps cannot fill k = {k} chunks")
    if sum(r) <= 0:
        raise ValueError("the removed-loss curve is zero or negative everywhere: the PDAE run removes no loss yet "
                         "(train it longer)")
    ranges = Partition(max(latent_dim, k), k, timesteps).chunk_t_ranges
    weights = [sum(r[lo : hi + 1]) / (hi - lo + 1) for lo, hi in ranges]
    return partition_from_chunk_weights(weights, latent_dim, k, timesteps, floor), weights


def _lost(crossings: dict[str, float | None], timesteps: int) -> dict[str, float]:
    lost = {name: float(t) for name, t in crossings.items() if t is not None}
    if not lost:
        raise ValueError("no factor reaches the attribute-loss threshold: there is no crossing to place dims at")
    outside = {n: t for n, t in lost.items() if not 0 <= t < timesteps}
    if outside:
        raise ValueError(f"crossings outside [0, T={timesteps}): {outside}")
    return lost

"""Every random draw of a training step as a pure function of (seed, step).

The data order, t, eps and flips of step s are computed from the config's seed and s alone, for the whole
global batch, and each process takes its slice. Hence:
- resume continues exactly where the run stopped (no RNG state to restore, no restarted data order);
- N processes with micro-batches see the same global batch, time-steps and noise as 1 process.
"""

from __future__ import annotations

import numpy as np
import torch


def derive_seed(*key: int) -> int:
    """A 63-bit seed from a tuple of non-negative ints (mixed by numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(*key: int) -> torch.Generator:
    """A CPU torch.Generator seeded from a tuple of non-negative ints."""
    return torch.Generator().manual_seed(derive_seed(*key))


# distinct stream tags so data order, noise and the global RNG never share a sequence
DATA, NOISE, GLOBAL = 1, 2, 3


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's global RNGs for one step of one process (dropout, if a model has any): resume then needs
    no RNG state, and processes draw different dropout masks."""
    torch.manual_seed(derive_seed(seed, GLOBAL, step, rank))


def global_batch_indices(n: int, batch: int, step: int, seed: int) -> torch.Tensor:
    """Data indices of the global batch of ``step``: positions [step*B, (step+1)*B) of the endless
    concatenation of per-epoch permutations of range(n)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=generator(seed, DATA, epoch))
        out.extend(perm[offset : offset + batch - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def step_noise(
    batch: int, image_shape: tuple[int, ...], timesteps: int, step: int, seed: int,
    t_probs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t (B,), eps (B, C, H, W), flip (B,) bool) for the global batch of ``step``.

    t is uniform on 0..T-1, or drawn from ``t_probs`` (T,) when given.
    """
    g = generator(seed, NOISE, step)
    if t_probs is None:
        t = torch.randint(0, timesteps, (batch,), generator=g)
    else:
        t = torch.multinomial(t_probs, batch, replacement=True, generator=g)
    noise = torch.randn((batch, *image_shape), generator=g)
    flip = torch.rand(batch, generator=g) < 0.5
    return t, noise, flip


DRAW_NOISE = 0x7158  # keeps the noise of several draws per image apart from every other draw


def draw_noise(batch: int, draws: int, image_shape: tuple[int, ...], seed: int, step: int) -> torch.Tensor:
    """eps for every draw of a step's global batch when each image gets ``draws`` (t, eps) draws:
    (batch * draws, C, H, W), rows b * draws .. b * draws + draws - 1 being image b's."""
    return torch.randn((batch * draws, *image_shape), generator=generator(seed, step, DRAW_NOISE))


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields, for each step from ``start_step`` on and each accumulation micro-step, this process's slice
    of the global batch (a list of indices), for a DataLoader's ``batch_sampler``."""

    def __init__(
        self, n: int, batch: int, seed: int, start_step: int, end_step: int, rank: int = 0, world: int = 1,
        accum: int = 1,
    ):
        if n < 1:
            raise ValueError("the data set is empty")
        self.n, self.batch, self.seed = n, batch, seed
        self.start_step, self.end_step = start_step, end_step
        self.rank, self.world, self.accum = rank, world, accum
        self.micro = batch // (world * accum)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.accum

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            indices = global_batch_indices(self.n, self.batch, step, self.seed)
            for a in range(self.accum):
                lo = micro_slice(a, self.rank, self.world, self.micro)
                yield indices[lo : lo + self.micro].tolist()


def micro_slice(accum_index: int, rank: int, world: int, micro: int) -> int:
    """Start of this process's micro-batch inside the global batch."""
    return (accum_index * world + rank) * micro

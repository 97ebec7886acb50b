"""The training DataLoader: each item is one micro-batch of one step, ready for the device.

A worker process builds everything a micro-batch needs on the CPU, off the training loop's thread: it
decodes the images, makes the step's random draws that the run's time-step sampler asks for
(``TimestepSampler.loader_draws``: t, eps and flips, and a stratified sampler's uniforms, each a pure function
of the seed and the step) and flips the images. The loop only copies the tensors to the device (pinned memory, non-blocking),
so a GPU is not left waiting on image decoding or on CPU random numbers. The draws are those of the whole
global batch, sliced for this process and micro-step, exactly as when the loop drew them itself: resume,
several processes and gradient accumulation see the same batches, time-steps and noise as before.

Defaults (``data.num_workers`` None): no worker on CPU (the loop's own thread is as fast there), and
min(8, CPU cores) workers when training on CUDA. With workers, memory is pinned on CUDA and the workers
persist for the loader's life; each keeps ``prefetch_factor`` micro-batches ready.
"""

from __future__ import annotations

import os

import torch

from .randomness import GlobalBatchSampler, global_batch_indices, micro_slice
from .timesteps import LoaderDraws


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers when ``data.num_workers`` is None: min(8, CPU cores) on CUDA, else 0."""
    if torch.device(device).type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


class StepBatchSampler(GlobalBatchSampler):
    """As GlobalBatchSampler, but each item is the key (step, micro-step, indices) of one micro-batch."""

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            indices = global_batch_indices(self.n, self.batch, step, self.seed)
            for a in range(self.accum):
                lo = micro_slice(a, self.rank, self.world, self.micro)
                yield step, a, indices[lo : lo + self.micro].tolist()


class StepBatches(torch.utils.data.Dataset):
    """Micro-batches ``{"x0", "t", "noise"}`` of a training run, keyed by StepBatchSampler's keys.

    ``x0`` (b, C, R, R) in [-1, 1], flipped where the step's flip draw says so when ``hflip``; ``t`` (b,)
    int64; ``noise`` (b, C, R, R): this process's slice of the global batch's draws (``t_draws``, by default
    uniform t: ``step_noise``).

    A stratified sampler's ``t_draws`` (training/timesteps.py) add ``u`` (b * draws,) float64, the slice of the
    step's stratified uniforms that the sampler turns into t on the device; with several draws per image,
    ``noise`` is then (b * draws, C, R, R), the slice of the step's draw noise. Every random number of the step
    is thus drawn here, in the workers.
    """

    def __init__(
        self, dataset, batch: int, sample_shape: tuple[int, ...], timesteps: int, seed: int, hflip: bool = False,
        rank: int = 0, world: int = 1, accum: int = 1, t_draws: LoaderDraws | None = None,
    ):
        self.dataset, self.batch, self.sample_shape = dataset, batch, tuple(sample_shape)
        self.timesteps, self.seed, self.hflip = timesteps, seed, hflip
        self.rank, self.world, self.micro = rank, world, batch // (world * accum)
        self.t_draws = t_draws or LoaderDraws()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, key: tuple[int, int, list[int]]) -> dict[str, torch.Tensor]:
        step, a, indices = key
        x0 = self.dataset.__getitems__(indices)
        draws = self.t_draws(self.batch, self.sample_shape, self.timesteps, self.seed, step)
        lo = micro_slice(a, self.rank, self.world, self.micro)
        # this micro-batch's images' rows of every draw (a draw has a whole number of rows per image)
        item = {k: v[lo * (len(v) // self.batch) : (lo + self.micro) * (len(v) // self.batch)]
                for k, v in draws.items()}
        flip = item.pop("flip")
        if self.hflip:
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        return {"x0": x0, **item}


def _passthrough(batch):
    return batch


def step_loader(
    batches: StepBatches, sampler: StepBatchSampler, num_workers: int, device: torch.device,
    prefetch_factor: int = 4,
) -> torch.utils.data.DataLoader:
    """The DataLoader of a run: ``num_workers`` processes, pinned memory on CUDA, persistent workers."""
    workers = int(num_workers)
    if workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {workers}")
    return torch.utils.data.DataLoader(
        batches,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_passthrough,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )

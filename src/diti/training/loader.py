"""The training DataLoader: each item is one micro-batch of one step, ready for the device.

A worker process builds everything a micro-batch needs on the CPU, off the training loop's thread: it
decodes the images, draws the step's t, eps and flips (``step_noise``, a pure function of the seed and the
step) and flips the images. The loop only copies the tensors to the device (pinned memory, non-blocking),
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

from .randomness import GlobalBatchSampler, draw_noise, global_batch_indices, micro_slice, step_noise
from .timesteps import draw_uniforms


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
    int64; ``noise`` (b, C, R, R): this process's slice of the global batch's draws (``step_noise``).

    ``uniforms=True`` (a run whose t-sampler draws t at the step, training/timesteps.py) adds ``u`` (b * draws,)
    float64, the slice of the step's stratified uniforms (``draw_uniforms``) that the sampler turns into t on
    the device; with ``draws`` > 1, ``noise`` is then (b * draws, C, R, R), the slice of the step's draw noise
    (``draw_noise``). Every random number of the step is thus drawn here, in the workers.
    """

    def __init__(
        self, dataset, batch: int, sample_shape: tuple[int, ...], timesteps: int, seed: int,
        t_probs: torch.Tensor | None = None, hflip: bool = False, rank: int = 0, world: int = 1, accum: int = 1,
        uniforms: bool = False, draws: int = 1,
    ):
        if draws < 1:
            raise ValueError(f"draws per image must be >= 1, got {draws}")
        if draws > 1 and not uniforms:
            raise ValueError("several draws per image need the step's uniforms (a t-sampler)")
        self.dataset, self.batch, self.sample_shape = dataset, batch, tuple(sample_shape)
        self.timesteps, self.seed, self.t_probs, self.hflip = timesteps, seed, t_probs, hflip
        self.rank, self.world, self.micro = rank, world, batch // (world * accum)
        self.uniforms, self.draws = uniforms, draws

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, key: tuple[int, int, list[int]]) -> dict[str, torch.Tensor]:
        step, a, indices = key
        x0 = self.dataset.__getitems__(indices)
        t_all, noise_all, flip_all = step_noise(
            self.batch, self.sample_shape, self.timesteps, step, self.seed, self.t_probs
        )
        lo = micro_slice(a, self.rank, self.world, self.micro)
        sl = slice(lo, lo + self.micro)
        if self.hflip:
            x0 = torch.where(flip_all[sl, None, None, None], x0.flip(-1), x0)
        item = {"x0": x0, "t": t_all[sl], "noise": noise_all[sl]}
        if self.uniforms:
            m = self.draws
            rows = slice(lo * m, (lo + self.micro) * m)  # this micro-batch's images' draws
            item["u"] = draw_uniforms(self.batch, m, self.seed, step)[rows]
            if m > 1:
                item["noise"] = draw_noise(self.batch, m, self.sample_shape, self.seed, step)[rows]
        return item


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

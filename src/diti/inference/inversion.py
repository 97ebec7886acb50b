"""A model's code z and DDIM inversion x_T of images, and the DDIM decoding of (z, x_T) back to images.

Both directions use the shifted noise predictor ``DiTiModel.eps_fn(z)`` with z's per-t mask
(docs/method.md, "DDIM inversion and decoding"); decoding the inversion of x_0 with its own code gives x_0
back up to the usual DDIM error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..diffusion.ddim import ddim_invert, ddim_sample


@dataclass(frozen=True)
class Inversion:
    """The code and the DDIM inversion of a batch of images: z (B, d), x_T (B, C, R, R), ``steps`` DDIM steps."""

    z: torch.Tensor
    x_T: torch.Tensor
    steps: int

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, index: int | slice) -> Inversion:
        """The inversion of one image (kept as a batch of 1) or of a slice of the batch."""
        index = slice(index, index + 1 if index != -1 else None) if isinstance(index, int) else index
        return Inversion(self.z[index], self.x_T[index], self.steps)

    @staticmethod
    def cat(items: Sequence[Inversion]) -> Inversion:
        """One batch from several inversions made with the same number of steps."""
        steps = {i.steps for i in items}
        if len(steps) != 1:
            raise ValueError(f"cannot join inversions made with different numbers of DDIM steps: {sorted(steps)}")
        return Inversion(torch.cat([i.z for i in items]), torch.cat([i.x_T for i in items]), steps.pop())


@torch.no_grad()
def invert(model, x0: torch.Tensor, num_steps: int = 100, progress: bool = False) -> Inversion:
    """The code of x0 (B, C, R, R) and its DDIM inversion with eps_fn(z)."""
    z = model.encode(x0)
    return Inversion(z, ddim_invert(model.eps_fn(z), model.schedule, x0, num_steps, progress=progress), num_steps)


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
    inv = invert(model, x0, num_steps, progress)
    return decode(model, inv.z, inv.x_T, num_steps, progress=progress, clip_x0=clip_x0)

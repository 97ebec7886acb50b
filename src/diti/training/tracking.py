"""Training logs in TensorBoard or Weights & Biases (``train.log_with``), through accelerate's trackers.

Off by default (``none``); ``RUN/metrics.jsonl`` is written either way. With a tracker, every ``log_every``
steps: the scalars of metrics.jsonl (``loss``, ``img_per_s``, ``images``, ``lr``) and the mean loss of the
steps since the last log in ten equal bins of t (``loss_t/000-099`` ...: where the objective still has
something to learn); every ``train.image_every`` steps (and at the last step), one image: for a DiTi/PDAE run
the reconstructions of a fixed batch (originals above, DDIM inversion and decoding with the current weights
and 20 steps below), for a DDPM the samples decoded from fixed noise. TensorBoard's event files go to
``RUN/logs/diti/`` (``tensorboard --logdir RUN/logs``); wandb logs to its project ``diti`` as a run named
after the run folder, where its own settings say (``WANDB_MODE=offline`` keeps it on disk). The run's
resolved config is stored as the tracker's hyperparameters.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..config.loader import ConfigError
from ..data.images import to_uint8

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
LOSS_BINS = 10
PREVIEW_IMAGES = 8
PREVIEW_STEPS = 20  # DDIM steps of the image grids

# x0 (B, C, R, R) in [-1, 1] -> rows of images, each (N, C, R, R) in [-1, 1]
Preview = Callable[[torch.Tensor], list[torch.Tensor]]


def check_tracker(log_with: str) -> None:
    """Refuse ``train.log_with`` naming a tracker whose package is missing (accelerate would drop it silently)."""
    package = TRACKER_PACKAGES.get(log_with)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(f"train.log_with={log_with} needs the {package} package: pip install {package}")


def flat_config(config: Mapping, prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``; lists and None as text (trackers' hparams take
    only scalars)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def loss_bins(loss_sum: np.ndarray, loss_count: np.ndarray, bins: int = LOSS_BINS) -> dict[str, float]:
    """Mean loss per equal range of t (``loss_t/000-099``: 0 <= t <= 99) from a per-t sum and count; a range
    with no draw is left out."""
    timesteps = len(loss_sum)
    edges = np.linspace(0, timesteps, bins + 1).round().astype(int)
    width = len(str(timesteps - 1))
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        n = loss_count[lo:hi].sum()
        if n > 0:
            out[f"loss_t/{lo:0{width}d}-{hi - 1:0{width}d}"] = float(loss_sum[lo:hi].sum() / n)
    return out


def image_strip(rows: list[torch.Tensor]) -> np.ndarray:
    """Rows of images (each (N, C, R, R) in [-1, 1]) -> one uint8 grid (H, W, 3), a row per tensor."""
    grid = torch.cat([torch.cat(list(row.float().cpu()), dim=2) for row in rows], dim=1)
    if grid.shape[0] == 1:
        grid = grid.expand(3, -1, -1)
    return to_uint8(grid[None])[0]


class Tracking:
    """The trackers of one run (main process only): scalars, per-t loss bins and the image grid.

    ``preview``: the job's image function (``reconstructions`` or ``samples``), applied to a fixed batch
    ``images`` with the module in eval mode and without gradients.
    """

    def __init__(self, accelerator, image_every: int, preview: Preview | None, images: torch.Tensor | None):
        self.acc = accelerator
        self.image_every = image_every
        self.preview = preview
        self.images = images
        self._last_sum: np.ndarray | None = None
        self._last_count: np.ndarray | None = None

    def start(self, config: Mapping, run_name: str, loss_sum: np.ndarray, loss_count: np.ndarray) -> None:
        self.acc.init_trackers("diti", config=flat_config(config), init_kwargs={"wandb": {"name": run_name}})
        self._last_sum, self._last_count = loss_sum.copy(), loss_count.copy()

    def scalars(self, row: Mapping, loss_sum: np.ndarray, loss_count: np.ndarray) -> None:
        """Log a metrics.jsonl row and the window's per-t loss bins (the histogram since the last call)."""
        step = int(row["step"])
        values = {k: float(v) for k, v in row.items() if k != "step"}
        values.update(loss_bins(loss_sum - self._last_sum, loss_count - self._last_count))
        self._last_sum, self._last_count = loss_sum.copy(), loss_count.copy()
        self.acc.log(values, step=step)

    def wants_image(self, step: int, last: bool) -> bool:
        return self.preview is not None and self.image_every > 0 and (step % self.image_every == 0 or last)

    @torch.no_grad()
    def image(self, module: torch.nn.Module, step: int) -> None:
        was_training = module.training
        module.eval()
        try:
            x0 = self.images.to(self.acc.device)
            strip = image_strip(self.preview(x0))
        finally:
            module.train(was_training)
        for tracker in self.acc.trackers:
            extra = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
            tracker.log_images({"preview": strip[None]}, step=step, **extra)

    def end(self) -> None:
        # not ``Accelerator.end_training``: that also ends the process group, which later jobs of a process use
        for tracker in self.acc.trackers:
            tracker.finish()


def reconstructions(model, num_steps: int = PREVIEW_STEPS) -> Preview:
    """A DiTi/PDAE preview: the originals, and their DDIM inversion decoded with their own code."""
    from ..inference.inversion import reconstruct

    return lambda x0: [x0, reconstruct(model, x0, num_steps)]


def samples(unet, schedule, seed: int, num_steps: int = PREVIEW_STEPS) -> Preview:
    """A DDPM preview: images decoded from the same noise at every call (seeded), so that runs show progress."""
    from ..diffusion.ddim import ddim_sample

    def preview(x0: torch.Tensor) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn(x0.shape, generator=gen).to(x0.device)
        return [ddim_sample(lambda x, t: unet(x, t).sample, schedule, x_T, num_steps)]

    return preview

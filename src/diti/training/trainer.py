"""The training loop shared by ``diti pretrain`` and ``diti train``, on accelerate.

The trained module's ``forward(x0, t, noise)`` returns a LossOutput (so the DDP wrapper sees the whole
objective); it also provides ``trainable_parameters()``, ``trainable_state_dict()`` and
``load_trainable_state_dict()``. The same code runs on CPU, one GPU, or many processes under
``accelerate launch``: ``train.batch_size`` is the global batch and ``train.lr`` does not depend on the
number of processes. Only the main process writes.

Placement comes first: accelerate places (and, for several processes, wraps) the module, and the optimizer,
the EMA and the t-sampler's state are made from the placed parameters on their device; a checkpoint is loaded
into them afterwards (Adam's ``step`` counters stay on the CPU, as torch keeps them). Nothing waits on the
device during a step: data, t, noise and the t-sampler's uniforms come ready from the DataLoader
(training/loader.py); the sampler's history, the loss, the per-time-step loss histogram and the NaN guard
stay on the device (tests/test_devices.py runs the loop on the ``meta`` device to prove it). The
host reads them back every ``log_every`` steps, before every checkpoint and at the end (one transfer), so
a GPU runs ahead of Python. The NaN guard still names the first step whose loss was not finite, and no
checkpoint is ever written after such a step (the run stops at the next read-back, without saving).
``train.mixed_precision=bf16`` runs the forward passes under autocast while weights, optimizer state and
EMA stay float32; ``train.compile`` compiles the training module, and checkpoints are always written from
the unwrapped, uncompiled float32 module. ``train.log_with`` sends the log to TensorBoard or wandb as well
(training/tracking.py); metrics.jsonl is written either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from ..config.schema import DataConfig, TrainConfig
from ..errors import CheckpointSaveError, TrainingDiverged
from ..folders.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from ..folders.files import atomic_write_text
from ..folders.layout import CHECKPOINTS, LOGS, LOSS_PER_T, METRICS
from .ema import EMA
from .loader import StepBatches, StepBatchSampler, default_num_workers, step_loader
from .randomness import seed_step
from .timesteps import Sampler
from .tracking import PREVIEW_IMAGES, Preview, Tracking, check_tracker


def make_accelerator(cfg: TrainConfig, out: Path) -> Accelerator:
    # accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision;
    # a process that runs several jobs (tests, the demo) starts each from a fresh state. The process group
    # (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    tracked = cfg.log_with != "none"
    if tracked:
        check_tracker(cfg.log_with)
    return Accelerator(
        cpu=cfg.device == "cpu",
        mixed_precision=cfg.mixed_precision,
        log_with=cfg.log_with if tracked else None,
        project_dir=str(Path(out) / LOGS) if tracked else None,  # the trackers' logs: RUN/logs
        gradient_accumulation_steps=1,  # accumulation is done by hand below (explicit no_sync)
    )


class Trainer:
    """Runs ``train.steps`` optimizer steps of ``module`` on ``dataset``, writing checkpoints to ``out``.

    ``data``: the data config's loader settings (``hflip``, ``num_workers``); ``sampler``: where each draw's t
    comes from (training/timesteps.py; the loop always asks it, and saves its state in every checkpoint).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        dataset: torch.utils.data.Dataset,
        train: TrainConfig,
        data: DataConfig,
        sampler: Sampler,
        out: Path,
        accelerator: Accelerator | None = None,
    ):
        cfg = self.cfg = train
        self.t_sampler = sampler
        self.hflip = data.hflip
        self.dataset = dataset
        self.timesteps = sampler.timesteps
        self.out = Path(out)
        self.ckpt_dir = self.out / CHECKPOINTS
        self.acc = accelerator or make_accelerator(cfg, self.out)
        # None: 0 on CPU, min(8, cores) on CUDA (training/loader.py)
        self.num_workers = default_num_workers(self.acc.device) if data.num_workers is None else data.num_workers
        world = self.acc.num_processes
        if cfg.batch_size % (world * cfg.grad_accum_steps):
            raise ValueError(
                f"train.batch_size={cfg.batch_size} must be divisible by processes ({world}) x "
                f"grad_accum_steps ({cfg.grad_accum_steps})"
            )
        self.micro = cfg.batch_size // (world * cfg.grad_accum_steps)
        self.module = module
        # Placement first, every state after it: accelerate moves the module (and wraps it for several
        # processes); the optimizer, the EMA shadows and the t-sampler's state are then made from the placed
        # parameters, on their device, and a resumed state is loaded onto it (``resume``). (A move may replace
        # the Parameter objects, e.g. to another device type, so nothing holds them from before.)
        if cfg.channels_last:
            module.to(memory_format=torch.channels_last)
        self.model = self.acc.prepare(module)
        self.named_trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.optimizer = self.acc.prepare(torch.optim.Adam(
            module.trainable_parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
        ))
        self.ema = EMA(self.named_trainable, cfg.ema_decay, cfg.ema_warmup)
        self.t_sampler.to(self.acc.device)
        self.step = 0
        self.loss_sum = np.zeros(self.timesteps)  # per-time-step loss histogram (main process)
        self.loss_count = np.zeros(self.timesteps, dtype=np.int64)

    # ------------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Restore model, EMA, optimizer, step and loss histogram from the latest checkpoint, if any.

        The checkpoint is read on the CPU and copied into the placed module, EMA and optimizer: torch's
        ``Optimizer.load_state_dict`` casts each state tensor to its parameter's device but keeps Adam's
        ``step`` counters on the CPU (where the non-fused Adam reads them every step without a device sync).
        """
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:  # killed before its first checkpoint: it starts again, and so does its log
            _truncate_metrics(self.out / METRICS, 0)
            return False
        ckpt = load_checkpoint(path)
        self.module.load_trainable_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        self.step = int(state["step"])
        self.loss_sum = np.asarray(state["loss_sum"], dtype=np.float64)
        self.loss_count = np.asarray(state["loss_count"], dtype=np.int64)
        self.t_sampler.load_state_dict(state.get("t_sampler", {}))
        _truncate_metrics(self.out / METRICS, self.step)
        return True

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable state dict with EMA values in place of the parameters."""
        state = dict(self.module.trainable_state_dict())
        state.update({k: v.to(state[k].dtype) for k, v in self.ema.shadow.items() if k in state})
        return state

    def save(self) -> Path:
        state = {"loss_sum": self.loss_sum.tolist(), "loss_count": self.loss_count.tolist(),
                 "t_sampler": self.t_sampler.state_dict()}
        try:
            path = save_checkpoint(
                self.ckpt_dir, self.step, self.module.trainable_state_dict(), self.ema_state_dict(),
                self.optimizer.state_dict(), state, keep=self.cfg.keep_checkpoints,
            )
            self.write_loss_per_t()
        except OSError as err:
            previous = latest_checkpoint(self.ckpt_dir)
            raise CheckpointSaveError(
                f"could not write the checkpoint of step {self.step} to {self.ckpt_dir}: "
                f"{err.strerror or err}; the previous checkpoint ({previous or 'none'}) is intact"
            ) from err
        return path

    def write_loss_per_t(self) -> None:
        count = np.maximum(self.loss_count, 1)
        mean = np.where(self.loss_count > 0, self.loss_sum / count, np.nan)
        data = {"t": list(range(self.timesteps)), "mean_loss": [None if np.isnan(v) else float(v) for v in mean],
                "count": self.loss_count.tolist()}
        atomic_write_text(self.out / LOSS_PER_T, json.dumps(data))

    # ------------------------------------------------------------------------------------------------
    def run(self, config: Mapping | None = None, preview: Preview | None = None) -> None:
        """Train from ``self.step`` to ``cfg.steps``: setup, then one ``train_step`` per optimizer step.

        With ``train.log_with``: ``config`` (the run's resolved config) is stored as the trackers'
        hyperparameters and ``preview`` draws the image grid (training/tracking.py)."""
        cfg, acc = self.cfg, self.acc
        model, optimizer = self.model, self.optimizer
        if cfg.compile:
            model = torch.compile(model)
        loader = self.loader()
        self._start_device_state()
        tracking = self._tracking(config or {}, preview) if cfg.log_with != "none" and acc.is_main_process else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not (cfg.progress and acc.is_main_process),
                   dynamic_ncols=True)
        window_start, window_first, paused = time.perf_counter(), self.step, 0.0
        model.train()
        try:
            while self.step < cfg.steps:
                self.train_step(model, optimizer, loader)
                self.step += 1
                bar.update(1)
                last = self.step == cfg.steps
                log = self.step % cfg.log_every == 0 or last
                save = self.step % cfg.checkpoint_every == 0 or last
                if tracking is not None and tracking.wants_image(self.step, last):
                    # the preview's time is left out of the window's img_per_s: wait for the queued steps first
                    self._read_back()
                    start = time.perf_counter()
                    tracking.image(self.module, self.step)
                    paused += time.perf_counter() - start
                if not (log or save):
                    continue
                window_loss = self._read_back()  # the one host synchronisation; raises on a bad step
                bar.set_postfix(loss=f"{window_loss:.4g}")
                if log and acc.is_main_process:
                    elapsed, n = time.perf_counter() - window_start - paused, self.step - window_first
                    row = {"step": self.step, "images": self.step * cfg.batch_size, "loss": window_loss,
                           "lr": cfg.lr, "img_per_s": n * cfg.batch_size / max(elapsed, 1e-9)}
                    self._log(row)
                    if tracking is not None:
                        tracking.scalars(row, self.loss_sum, self.loss_count)
                if log:
                    self._window_sum.zero_()
                    self._window_n = 0
                    window_start, window_first, paused = time.perf_counter(), self.step, 0.0
                if save:
                    acc.wait_for_everyone()
                    if acc.is_main_process:
                        self.save()
        finally:
            bar.close()
            if tracking is not None:
                tracking.end()
        acc.wait_for_everyone()

    def _tracking(self, config: Mapping, preview: Preview | None) -> Tracking:
        """The run's trackers, started; the image grid's fixed batch is the data set's first images."""
        images = None
        if preview is not None and self.cfg.image_every > 0:
            n = min(PREVIEW_IMAGES, len(self.dataset))
            images = torch.stack([self.dataset[i] for i in range(n)])
        tracking = Tracking(self.acc, self.cfg.image_every, preview, images)
        tracking.start(config, self.out.name, self.loss_sum, self.loss_count)
        return tracking

    def loader(self):
        """An iterator over the micro-batches from ``self.step`` to ``cfg.steps`` (training/loader.py): every
        random draw of a step (those the t-sampler asks for: t, eps, flips, and its uniforms) is made there, in
        the workers."""
        cfg, acc = self.cfg, self.acc
        sampler = StepBatchSampler(
            len(self.dataset), cfg.batch_size, cfg.seed, self.step, cfg.steps, acc.process_index,
            acc.num_processes, cfg.grad_accum_steps,
        )
        batches = StepBatches(
            self.dataset, cfg.batch_size, tuple(self.dataset[0].shape), self.timesteps, cfg.seed, self.hflip,
            acc.process_index, acc.num_processes, cfg.grad_accum_steps, t_draws=self.t_sampler.loader_draws(),
        )
        return iter(step_loader(batches, sampler, self.num_workers, acc.device))

    def _start_device_state(self) -> None:
        """Device tensors for the loss window, the per-t histogram and the NaN guard (read back by
        ``_read_back``); the histogram continues from the resumed one."""
        device = self.acc.device
        self._window_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._window_n = 0
        self._hist_sum = torch.as_tensor(self.loss_sum, dtype=torch.float64, device=device)
        self._hist_count = torch.as_tensor(self.loss_count, dtype=torch.int64, device=device)
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite step, or -1
        self._bad_loss = torch.zeros((), dtype=torch.float32, device=device)

    def _read_back(self) -> float:
        """Copy the device state to the host: raise TrainingDiverged naming the first bad step, update the
        loss histogram, and return the mean loss of the current log window."""
        bad_step, bad_loss = int(self._bad_step), float(self._bad_loss)
        if bad_step >= 0:
            raise TrainingDiverged(
                f"loss is {bad_loss} at step {bad_step}; stopped at step {self.step} without saving. The last "
                f"good checkpoint is {latest_checkpoint(self.ckpt_dir) or 'none (no checkpoint yet)'}"
            )
        self.loss_sum = self._hist_sum.cpu().numpy().copy()
        self.loss_count = self._hist_count.cpu().numpy().copy()
        return float(self._window_sum) / max(self._window_n, 1)

    def train_step(self, model, optimizer, loader) -> torch.Tensor:
        """One optimizer step over the global batch of ``self.step``; returns its mean loss (a device scalar).

        The step's micro-batches come from ``loader`` (``StepBatches``: the step's t, eps and flips are drawn
        for the whole global batch and each micro-batch of each process takes its slice). Nothing here waits
        on the device: a non-finite loss is recorded on the device (``_bad_step``) and reported by the next
        ``_read_back``, which comes before any checkpoint.
        """
        cfg, acc = self.cfg, self.acc
        device = acc.device
        seed_step(cfg.seed, self.step, acc.process_index)
        step_loss = torch.zeros((), device=device)
        for a in range(cfg.grad_accum_steps):
            try:
                batch = next(loader)
            except ValueError as err:  # an unreadable image; from a worker the message carries its traceback
                raise ValueError(_data_error(err, self.step + 1)) from None
            x0 = batch["x0"].to(device, non_blocking=True)
            noise = batch["noise"].to(device, non_blocking=True)  # (micro * m, ...) with m draws per image
            # the loader's draws of this micro-batch -> t and importance weights (None: all 1), on the device
            t, weights = self.t_sampler.timesteps_of(batch, device)
            if cfg.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            sync = a == cfg.grad_accum_steps - 1  # gradients are all-reduced on the last micro-batch only
            with nullcontext() if sync else acc.no_sync(model), acc.autocast():
                out = model(x0, t, noise)
                # importance weights 1 / (T p(t)) keep the expected loss that of uniform t
                objective = out.mean if weights is None else (weights * out.per_sample.float()).mean()
                acc.backward(objective / cfg.grad_accum_steps)
            step_loss += objective.detach().float() / cfg.grad_accum_steps
            per_sample, t_seen = acc.gather(out.per_sample.detach().float()), acc.gather(out.t)
            self._record(per_sample, t_seen)
            baseline = (acc.gather(out.baseline.detach().float())
                        if self.t_sampler.uses_baseline and out.baseline is not None else None)
            self.t_sampler.update(t_seen, per_sample, baseline)
        loss = acc.reduce(step_loss, reduction="mean")
        first_bad = (self._bad_step < 0) & ~torch.isfinite(loss)
        self._bad_step = torch.where(first_bad, torch.full_like(self._bad_step, self.step + 1), self._bad_step)
        self._bad_loss = torch.where(first_bad, loss, self._bad_loss)
        self._window_sum += loss.double()
        self._window_n += 1
        if cfg.grad_clip is not None:
            acc.clip_grad_norm_(self.module.trainable_parameters(), cfg.grad_clip)
        optimizer.step()
        self.ema.update(self.step)
        optimizer.zero_grad(set_to_none=True)
        return loss

    def _record(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        if self.acc.is_main_process:
            self._hist_sum.index_add_(0, t, per_sample.double())
            self._hist_count.index_add_(0, t, torch.ones_like(t))

    def _log(self, row: dict) -> None:
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")



def _data_error(err: ValueError, step: int) -> str:
    """One line for a data error at ``step``. An error raised in a DataLoader worker reaches us with the
    worker's traceback in its message ("Caught ValueError in DataLoader worker ... Original Traceback ..."):
    keep only its last line, the original message."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith("ValueError: ") else last
    return (f"{text} (step {step}); `diti data check DIR` lists every unreadable file, "
            "--set data.skip_unreadable=true skips them with a warning")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))

"""The training loop shared by ``diti pretrain`` and ``diti train``, on accelerate.

The trained module's ``forward(x0, t, noise)`` returns a LossOutput (so the DDP wrapper sees the whole
objective); it also provides ``trainable_parameters()``, ``trainable_state_dict()`` and
``load_trainable_state_dict()``. The same code runs on CPU, one GPU, or many processes under
``accelerate launch``: ``train.batch_size`` is the global batch and ``train.lr`` does not depend on the
number of processes. Only the main process writes.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from ..config.schema import TrainConfig
from ..data import collate_images
from ..errors import CheckpointSaveError, TrainingDiverged
from .checkpoint import atomic_write_text, latest_checkpoint, load_checkpoint, save_checkpoint
from .ema import EMA
from .randomness import GlobalBatchSampler, micro_slice, seed_step, step_noise


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    # accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision;
    # a process that runs several jobs (tests, the demo) starts each from a fresh state. The process group
    # (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=cfg.device == "cpu",
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=1,  # accumulation is done by hand below (explicit no_sync)
    )


class Trainer:
    """Runs ``cfg.steps`` optimizer steps of ``module`` on ``dataset``, writing checkpoints to ``out``."""

    def __init__(
        self,
        module: torch.nn.Module,
        dataset: torch.utils.data.Dataset,
        cfg: TrainConfig,
        timesteps: int,
        out: Path,
        hflip: bool = False,
        num_workers: int = 0,
        t_probs: torch.Tensor | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.cfg = cfg
        self.t_probs = t_probs  # None: t ~ U{0..T-1}
        self.hflip = hflip
        self.num_workers = num_workers
        self.dataset = dataset
        self.timesteps = timesteps
        self.out = Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.acc = accelerator or make_accelerator(cfg)
        world = self.acc.num_processes
        if cfg.batch_size % (world * cfg.grad_accum_steps):
            raise ValueError(
                f"train.batch_size={cfg.batch_size} must be divisible by processes ({world}) x "
                f"grad_accum_steps ({cfg.grad_accum_steps})"
            )
        self.micro = cfg.batch_size // (world * cfg.grad_accum_steps)
        self.module = module
        self.named_trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.Adam(
            module.trainable_parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
        )
        self.ema = EMA(self.named_trainable, cfg.ema_decay, cfg.ema_warmup)
        self.step = 0
        self.loss_sum = np.zeros(timesteps)  # per-time-step loss histogram (main process)
        self.loss_count = np.zeros(timesteps, dtype=np.int64)

    # ------------------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Restore model, EMA, optimizer, step and loss histogram from the latest checkpoint, if any."""
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            return False
        ckpt = load_checkpoint(path)
        self.module.load_trainable_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        self.step = int(state["step"])
        self.loss_sum = np.asarray(state["loss_sum"], dtype=np.float64)
        self.loss_count = np.asarray(state["loss_count"], dtype=np.int64)
        _truncate_metrics(self.out / "metrics.jsonl", self.step)
        return True

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable state dict with EMA values in place of the parameters."""
        state = dict(self.module.trainable_state_dict())
        state.update({k: v.to(state[k].dtype) for k, v in self.ema.shadow.items() if k in state})
        return state

    def save(self) -> Path:
        state = {"loss_sum": self.loss_sum.tolist(), "loss_count": self.loss_count.tolist()}
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
        atomic_write_text(self.out / "loss_per_t.json", json.dumps(data))

    # ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Train from ``self.step`` to ``cfg.steps``: setup, then one ``train_step`` per optimizer step."""
        cfg, acc = self.cfg, self.acc
        if cfg.channels_last:
            self.module.to(memory_format=torch.channels_last)
        model, optimizer = acc.prepare(self.module, self.optimizer)
        if cfg.compile:
            model = torch.compile(model)
        sampler = GlobalBatchSampler(
            len(self.dataset), cfg.batch_size, cfg.seed, self.step, cfg.steps, acc.process_index,
            acc.num_processes, cfg.grad_accum_steps,
        )
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=collate_images,
        )
        batches = iter(loader)
        sample_shape = tuple(self.dataset[0].shape)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", disable=not (cfg.progress and acc.is_main_process),
                   dynamic_ncols=True)
        window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
        model.train()
        while self.step < cfg.steps:
            loss_value = self.train_step(model, optimizer, batches, sample_shape)
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainingDiverged(
                    f"loss is {loss_value} at step {self.step + 1}; stopped without saving. The last good "
                    f"checkpoint is {latest_checkpoint(self.ckpt_dir) or 'none (no checkpoint yet)'}"
                )
            self.step += 1
            window_loss, window_n = window_loss + loss_value, window_n + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4g}")
            if acc.is_main_process and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                elapsed = time.perf_counter() - window_start
                self._log({"step": self.step, "images": self.step * cfg.batch_size, "loss": window_loss / window_n,
                           "lr": cfg.lr, "img_per_s": window_n * cfg.batch_size / max(elapsed, 1e-9)})
                window_loss, window_n, window_start = 0.0, 0, time.perf_counter()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    self.save()
        bar.close()
        acc.wait_for_everyone()

    def train_step(self, model, optimizer, batches, sample_shape: tuple[int, ...]) -> float:
        """One optimizer step over the global batch of ``self.step``; returns its mean loss.

        The step's t, eps and flips are drawn for the whole global batch and each micro-batch of each process
        takes its slice (training/randomness.py). The optimizer does not step on a non-finite loss.
        """
        cfg, acc = self.cfg, self.acc
        device = acc.device
        seed_step(cfg.seed, self.step, acc.process_index)
        t_all, noise_all, flip_all = step_noise(
            cfg.batch_size, sample_shape, self.timesteps, self.step, cfg.seed, self.t_probs
        )
        step_loss = torch.zeros((), device=device)
        for a in range(cfg.grad_accum_steps):
            lo = micro_slice(a, acc.process_index, acc.num_processes, self.micro)
            x0 = next(batches).to(device, non_blocking=True)
            if cfg.channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            t = t_all[lo : lo + self.micro].to(device)
            noise = noise_all[lo : lo + self.micro].to(device)
            if self.hflip:
                flip = flip_all[lo : lo + self.micro].to(device)
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            sync = a == cfg.grad_accum_steps - 1  # gradients are all-reduced on the last micro-batch only
            with nullcontext() if sync else acc.no_sync(model), acc.autocast():
                out = model(x0, t, noise)
                acc.backward(out.mean / cfg.grad_accum_steps)
            step_loss += out.mean.detach() / cfg.grad_accum_steps
            self._record(acc.gather(out.per_sample.detach().float()), acc.gather(out.t))
        loss_value = acc.reduce(step_loss, reduction="mean").item()
        if math.isfinite(loss_value):
            if cfg.grad_clip is not None:
                acc.clip_grad_norm_(self.module.trainable_parameters(), cfg.grad_clip)
            optimizer.step()
            self.ema.update(self.step)
        optimizer.zero_grad(set_to_none=True)
        return loss_value

    def _record(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        if self.acc.is_main_process:
            t_np = t.cpu().numpy()
            np.add.at(self.loss_sum, t_np, per_sample.cpu().double().numpy())
            np.add.at(self.loss_count, t_np, 1)

    def _log(self, row: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")



def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))

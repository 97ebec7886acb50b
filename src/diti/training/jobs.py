"""The two training jobs: ``pretrain`` (a DDPM to freeze) and ``train_diti`` (E and G on a frozen DM)."""

from __future__ import annotations

import copy
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import PartialState
from diffusers import UNet2DModel

from ..config import build_config
from ..config.loader import ConfigError, read_yaml, to_dict
from ..config.schema import DiTiConfig, PretrainConfig
from ..folders.layout import CONFIG, read_meta, read_run_config, write_run_files
from ..models.ddpm import DDPMObjective
from ..models.diti import DiTiModel
from ..models.dm import build_unet, dm_resolution, load_dm, save_dm
from .partition_rule import (
    RULE_SOURCE,
    RULE_SOURCE_CURVE,
    RULE_SOURCE_RUN,
    removed_loss_curve,
    resolve_partition_rule,
)
from .precision import resolve_mixed_precision
from .timesteps import IndependentSampler, build_sampler
from .tracking import reconstructions, samples
from .trainer import Trainer

logger = logging.getLogger(__name__)

C = TypeVar("C", DiTiConfig, PretrainConfig)

# Config keys that may change when a run is resumed (bookkeeping, not the experiment).
RESUMABLE_KEYS = {
    "train": ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "progress", "device", "compile",
              "channels_last", "log_with", "image_every"),
    "data": ("num_workers", "skip_unreadable"),
}


def job_config(
    cls: type[C], out: str | Path, preset: str | None = None, file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (), resume: bool = False, data: str | Path | None = None,
    steps: int | None = None, dm: str | Path | None = None,
) -> C:
    """A job's config: defaults < preset < file < overrides < ``data`` / ``steps`` / ``dm`` (the command's own
    flags); on ``resume`` without a preset or file, the run's saved config.yaml is the base."""
    extra = list(overrides)
    if data is not None:
        extra.append(f"data.path={json.dumps(str(data))}")
    if steps is not None:
        extra.append(f"train.steps={steps}")
    if dm is not None:
        extra.append(f"dm={json.dumps(str(dm))}")
    saved = Path(out) / CONFIG
    base = read_yaml(saved) if resume and saved.is_file() and preset is None and file is None else None
    return build_config(cls, preset, file, extra, base=base)


def check_out(out: Path, resume: bool) -> bool:
    """Whether ``out`` holds a run; raise where a new run may not start there (a run without ``resume``, or other
    files; the removed-loss rule's own source folder, RULE_SOURCE, may be there already)."""
    has_run = (out / CONFIG).is_file()
    if has_run and not resume:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if not has_run and not resume and out.exists() and any(p.name != RULE_SOURCE for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    return has_run


def prepare_run_folder(out: Path, kind: str, cfg, resume: bool):
    """Create ``out`` for a new run, or check that a resumed run keeps its experiment config.

    Returns the config to use: on resume, the saved one with only bookkeeping keys (RESUMABLE_KEYS) taken
    from ``cfg``.
    """
    out = Path(out)
    if not check_out(out, resume):
        return cfg
    read_meta(out, kind)
    saved = read_run_config(out, type(cfg))
    diffs = _config_diffs(to_dict(saved), to_dict(cfg))
    allowed = {f"{section}.{key}" for section, keys in RESUMABLE_KEYS.items() for key in keys}
    changed = [k for k in diffs if k not in allowed]
    if changed:
        raise ConfigError(
            f"cannot resume {out} with a different experiment config: {', '.join(changed)} differ from "
            f"its config.yaml (only {', '.join(sorted(allowed))} may change on resume)"
        )
    # keep the saved experiment, take the new bookkeeping values
    for section, keys in RESUMABLE_KEYS.items():
        new = getattr(cfg, section)
        setattr(saved, section, replace(getattr(saved, section), **{k: getattr(new, k) for k in keys}))
    return saved


def _config_diffs(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _config_diffs(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _resolve_path(path: str | None, what: str) -> str:
    if path is None:
        raise ConfigError(f"{what} is not set")
    return str(Path(path).expanduser().resolve())


def pretrain(cfg: PretrainConfig, out: str | Path, resume: bool = False) -> Path:
    """Train a UNet2DModel DDPM; writes RUN/dm/ (a diffusers pipeline folder with the EMA weights)."""
    out = Path(out)
    cfg = copy.deepcopy(cfg)
    cfg.data.path = _resolve_path(cfg.data.path, "data.path")
    cfg.validate()
    cfg.train.mixed_precision = resolve_mixed_precision(cfg.train.mixed_precision, cfg.train.device)
    dataset = cfg.data.open()
    cfg.data.resolution = dataset.resolution
    cfg = prepare_run_folder(out, "pretrain", cfg, resume)
    schedule = cfg.diffusion.build()
    torch.manual_seed(cfg.train.seed)  # initial weights from the config's seed, never the clock
    module = DDPMObjective(build_unet(cfg.unet, dataset.resolution), schedule)
    trainer = Trainer(module, dataset, cfg.train, cfg.data, IndependentSampler(schedule.timesteps), out)
    if trainer.acc.is_main_process:
        write_run_files(out, "pretrain", cfg)
    trainer.resume()
    trainer.run(to_dict(cfg), samples(module.unet, schedule, cfg.train.seed))
    if trainer.acc.is_main_process:
        unet = copy.deepcopy(module.unet)
        unet.load_state_dict({k.removeprefix("unet."): v for k, v in trainer.ema_state_dict().items()})
        save_dm(unet, out / "dm", schedule)
    trainer.acc.wait_for_everyone()
    return out / "dm"


def train_diti(cfg: DiTiConfig, out: str | Path, resume: bool = False) -> Path:
    """Train the encoder and shift decoder of DiTi (PDAE when partition.k = 1) on a frozen DM."""
    out = Path(out)
    cfg = copy.deepcopy(cfg)
    cfg.dm = _resolve_path(cfg.dm, "dm (the frozen diffusion model folder)")
    cfg.data.path = _resolve_path(cfg.data.path, "data.path")
    cfg.validate()
    cfg.train.mixed_precision = resolve_mixed_precision(cfg.train.mixed_precision, cfg.train.device)
    if cfg.partition.trains_source:  # the removed-loss rule's PDAE run, trained first
        check_out(out, resume)
        cfg.partition.rule_source = str(removed_loss_source(cfg, out / RULE_SOURCE, cfg.partition.rule_source_steps))
    cfg.partition = resolve_partition_rule(cfg.partition, cfg.diffusion.timesteps)
    schedule = cfg.diffusion.build()
    dm = load_dm(cfg.dm, schedule)
    cfg.data.resolution = cfg.data.resolution or dm_resolution(dm)
    cfg = prepare_run_folder(out, "diti", cfg, resume)
    dataset = cfg.data.open()
    check_data_fits_dm(dataset, dm)
    torch.manual_seed(cfg.train.seed)  # initial weights from the config's seed, never the clock
    model = DiTiModel.from_config(cfg, dm, schedule)
    obj = cfg.objective
    sampler = build_sampler(obj.timestep_sampling, model.partition, obj.importance_history, obj.importance_uniform,
                            obj.draws_per_image, obj.loss_normalization, obj.normalization_decay)
    trainer = Trainer(model, dataset, cfg.train, cfg.data, sampler, out)
    if trainer.acc.is_main_process:
        write_run_files(out, "diti", cfg)
        note_resize(dataset, "the DM's resolution" if cfg.data.resolution == dm_resolution(dm) else "data.resolution")
        if cfg.train.progress:  # the partition it trains with, beside the progress bar (stderr)
            print(f"partition (rule: {cfg.partition.rule}):\n{model.partition.format_table()}", file=sys.stderr)
    trainer.resume()
    trainer.run(to_dict(cfg), reconstructions(model))
    return out


def removed_loss_source(cfg: DiTiConfig, folder: str | Path, steps: int) -> Path:
    """The label-free partition rule's source made from ``cfg``: a PDAE run (k = 1, base mode, the rest of ``cfg``)
    of ``steps`` steps in ``folder/pdae`` and its removed-loss curve r(t) in ``folder/removed_loss.json``, the file
    ``partition.rule_source`` then points to. Kept: a second call (a resumed run) trains nothing."""
    folder = Path(folder)
    path, run = folder / RULE_SOURCE_CURVE, folder / RULE_SOURCE_RUN
    if path.is_file():
        return path
    pdae = copy.deepcopy(cfg)
    pdae.partition = replace(cfg.partition, k=1, mode="base", stages=None, dims_per_stage=None, rule="given",
                             rule_source=None)
    pdae.train.steps = steps
    state = PartialState()
    if state.is_main_process and cfg.train.progress:
        print(f"partition rule removed_loss: training its source, a PDAE run of {steps} steps, in {run}",
              file=sys.stderr)
    run = train_diti(pdae, run, resume=(run / CONFIG).is_file())
    if state.is_main_process:
        curve = removed_loss_curve(run, device=str(state.device))
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**curve, "pdae_steps": steps}))
        tmp.replace(path)  # whole or absent: a killed run measures again
    state.wait_for_everyone()
    return path


def note_resize(dataset, why: str) -> None:
    """A warning when a data set stored at one resolution (decoded pixels, e.g. the shapes data) is resized to
    another for training: a silent resize would train on images the user did not expect."""
    stored = getattr(dataset, "stored_resolution", None)
    if stored is not None and stored != dataset.resolution:
        logger.warning("the data %s is stored at %d px; every image is resized to %d px (%s) with %s resampling",
                       dataset.root, stored, dataset.resolution, why, dataset.resize)


def check_data_fits_dm(dataset, dm: UNet2DModel) -> None:
    channels = dataset[0].shape[0]
    if channels != dm.config.in_channels or dataset.resolution != dm_resolution(dm):
        raise ValueError(
            f"the data ({channels} channels, {dataset.resolution}px) does not fit the DM "
            f"({dm.config.in_channels} channels, {dm_resolution(dm)}px)"
        )

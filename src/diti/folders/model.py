"""The one loader of a trained model from either layout (a run folder or an export), and the export writer.

``load_model`` rebuilds the model from the folder's resolved config, never from code defaults, and loads the
weights the folder holds: a run's latest checkpoint (EMA or raw), or an export's components, each named by
its ``model_index.json`` entry. Every tensor must have the shape the config implies (a mismatch names it).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..config.loader import ConfigError, dump_yaml, from_dict, read_yaml, to_dict
from ..config.schema import DiTiConfig
from ..models.diti import DiTiModel
from ..models.dm import load_dm, save_dm
from .checkpoints import latest_checkpoint, load_tensors, save_tensors
from .layout import (
    CHECKPOINTS,
    CONFIG,
    DM,
    EVAL,
    INDEX,
    MODEL_CARD,
    WEIGHTS,
    export_index,
    is_export,
    is_run,
    read_index,
    read_meta,
    read_run_config,
)

# The components of an export: model_index.json entry -> (library, class); each trained one is a folder with
# WEIGHTS, holding a part of the DiTiModel's trainable state (its prefix there).
EXPORT_COMPONENTS = {"dm": ["diffusers", "DDPMPipeline"], "encoder": ["diti", "Encoder"],
                     "shift_decoder": ["diti", "ShiftDecoder"]}
TRAINED_COMPONENTS = {"encoder": "encoder.", "shift_decoder": "decoder."}


def _component_state(model: DiTiModel, component: str) -> dict[str, torch.Tensor]:
    """The trainable state of one trained component (without its prefix)."""
    return model.encoder.state_dict() if component == "encoder" else model.decoder.trainable_state_dict()


@dataclass
class LoadedModel:
    """A trained model and what its folder says about it."""

    model: DiTiModel  # eval mode, on the device asked for
    config: DiTiConfig  # the resolved config; ``dm`` points to the DM that was loaded
    folder: Path
    layout: str  # "run" or "export"
    checkpoint: str | None  # e.g. "step-00000500": the training step of the weights
    weights: str  # "ema" or "raw"
    index: dict | None = None  # an export's model_index.json


def load_model(
    path: str | Path, device: str | torch.device = "cpu", ema: bool = True, dm: str | Path | None = None,
    layout: str | None = None,
) -> LoadedModel:
    """Open a ``diti train`` run folder (its latest checkpoint) or a folder written by ``diti export``.

    ``ema``: the EMA weights (default) or the raw ones (run folders only; an export holds the weights it was
    written with). ``dm``: the frozen DM's folder when it is not where the folder says (e.g. a run copied from
    another machine, with a downloaded diffusers DM); the returned config then points to it. ``layout``: "run"
    to accept run folders only; None: either.
    """
    path = Path(path)
    if layout == "run":
        return _load_run(path, device, ema, dm)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    if is_export(path):
        if not ema:
            raise ValueError(f"{path} is an exported model: it holds only the weights it was exported with")
        return _load_export(path, device, dm)
    if not is_run(path):
        raise ValueError(
            f"{path} is not a diti run folder (no meta.json) nor a model folder written by `diti export` (no "
            "model_index.json)"
        )
    return _load_run(path, device, ema, dm)


def load_diti_run(
    run: str | Path, device: str | torch.device = "cpu", ema: bool = True, dm: str | Path | None = None
) -> tuple[DiTiModel, DiTiConfig]:
    """(model, config) of a ``diti train`` run folder: ``load_model(run, layout="run")``."""
    loaded = load_model(run, device, ema, dm, layout="run")
    return loaded.model, loaded.config


def _load_run(run: Path, device, ema: bool, dm) -> LoadedModel:
    read_meta(run, "diti")
    cfg = read_run_config(run, DiTiConfig)
    ckpt = latest_checkpoint(run / CHECKPOINTS)
    if ckpt is None:
        raise FileNotFoundError(f"{run} has no checkpoint yet")
    if dm is not None:
        cfg.dm = str(Path(dm).expanduser().resolve())
    elif cfg.dm is None or not Path(cfg.dm).exists():
        raise FileNotFoundError(
            f"the frozen DM of {run} is not found at {cfg.dm} (its config.yaml's dm); give its folder "
            f"(a diffusers UNet2DModel or pipeline folder) with dm=... (diti.load) or --dm"
        )
    schedule = cfg.diffusion.build()
    model = DiTiModel.from_config(cfg, load_dm(cfg.dm, schedule), schedule)
    model.load_trainable_state_dict(load_tensors(ckpt / ("ema.safetensors" if ema else "model.safetensors")))
    return LoadedModel(model.to(device).eval(), cfg, run, "run", ckpt.name, "ema" if ema else "raw")


def _load_export(path: Path, device, dm) -> LoadedModel:
    index = read_index(path)
    for name, entry in EXPORT_COMPONENTS.items():
        if index.get(name) != entry:
            raise ValueError(f"{path / INDEX} names {name!r} {index.get(name)!r}; a DiTiPipeline export holds "
                             f"{entry}")
    cfg_file = path / index.get("config", CONFIG)
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} has no {cfg_file.name} (the resolved config the model is rebuilt from)")
    cfg = from_dict(DiTiConfig, read_yaml(cfg_file))
    try:
        cfg.validate()
    except ConfigError as err:
        raise ValueError(f"{cfg_file}: {err}") from None
    schedule = cfg.diffusion.build()
    dm_dir = Path(dm) if dm is not None else path / DM
    cfg.dm = str(dm_dir.resolve())
    model = DiTiModel.from_config(cfg, load_dm(dm_dir, schedule), schedule)
    state = {}
    for component, prefix in TRAINED_COMPONENTS.items():
        file = path / component / WEIGHTS
        tensors = load_tensors(file)
        expected = _component_state(model, component)
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{file} does not fit the model that config.yaml describes: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        state.update({prefix + k: v for k, v in tensors.items()})
    model.load_trainable_state_dict(state)
    return LoadedModel(model.to(device).eval(), cfg, path, "export", index.get("checkpoint"),
                       index.get("weights", "ema"), index)


def write_export(
    out: str | Path, model: DiTiModel, config: DiTiConfig, kind: str, checkpoint: str | None, weights: str,
    source: Path | None, data_format: str | None, eval_files: Sequence[Path],
    model_card: Callable[[dict, str], str],
) -> Path:
    """Write a self-contained export folder at ``out`` (which must not hold anything); returns ``out``.

    ``eval_files``: files copied into DIR/eval; ``model_card(index, name)``: the text of DIR/README.md. The
    config is written with nothing that points outside the folder (dm and data paths cleared; the data
    format kept, for the input crop rule), and model_index.json names the run, DM and data it came from by
    their folder names only. The folder is written under a temporary name and renamed when
    complete.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    tmp = out.with_name(f".{out.name}.tmp-export")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous export that was interrupted
    tmp.mkdir(parents=True)
    try:
        save_dm(model.dm, tmp / DM, model.schedule)
        meta = {"format": "diti-export", "diti_version": __version__, "checkpoint": checkpoint or "",
                "weights": weights}
        for component in TRAINED_COMPONENTS:
            (tmp / component).mkdir()
            save_tensors(tmp / component / WEIGHTS, _component_state(model, component),
                         {**meta, "component": component})
        cfg = copy.deepcopy(config)
        # provenance by folder name only: the export holds no path of the machine it was made on
        origin = {key: Path(path).resolve().name if path else None
                  for key, path in (("run", source), ("dm", cfg.dm), ("data", cfg.data.path))}
        cfg.dm, cfg.data.path, cfg.data.attributes = None, None, None
        cfg.data.format = data_format
        (tmp / CONFIG).write_text(dump_yaml(to_dict(cfg)))
        if eval_files:
            (tmp / EVAL).mkdir()
            for file in eval_files:
                shutil.copy2(file, tmp / EVAL / file.name)
        index = export_index(kind, checkpoint, weights, [f.name for f in eval_files], origin)
        (tmp / INDEX).write_text(json.dumps(index, indent=2))
        (tmp / MODEL_CARD).write_text(model_card(index, out.name))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

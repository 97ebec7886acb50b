"""Crash-safe checkpoints in safetensors (the safetensors files of exports are written with ``save_tensors`` too).

Layout of a run's ``checkpoints/`` folder::

    step-00001000/  model.safetensors  ema.safetensors  optimizer.safetensors  state.json
    latest          (text: the name of the newest complete step folder; written last)

A step folder is written under a temporary name, every file fsync'ed, then renamed; ``latest`` is replaced
atomically afterwards. A crash at any moment leaves the previous checkpoint and pointer intact. Only tensors
and JSON are stored: loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .files import atomic_write_text, fsync_dir

LATEST = "latest"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """safetensors file of contiguous CPU tensors (+ string metadata), fsync'ed."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return load_file(str(path), device=str(device))


# ---------------------------------------------------------------------------------------------------
# Optimizer state <-> flat tensors + JSON (safetensors holds tensors only)
def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, param_state in state["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    optimizer: dict,
    state: dict,
    keep: int = 3,
) -> Path:
    """Write one checkpoint atomically, move ``latest`` to it, then prune to the newest ``keep``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / (final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_tensors(tmp / "model.safetensors", model)
        save_tensors(tmp / "ema.safetensors", ema)
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        atomic_write_text(tmp / "optimizer.json", json.dumps(opt_meta))
        atomic_write_text(tmp / "state.json", json.dumps({"step": step, **state}))
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written checkpoint behind
        raise
    atomic_write_text(ckpt_dir / LATEST, final.name)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete step folders, oldest first (temporary folders are ignored)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The folder ``latest`` points to (or the newest complete one if the pointer is missing)."""
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        target = ckpt_dir / pointer.read_text().strip()
        if (target / "state.json").is_file():
            return target
    found = [p for p in list_checkpoints(ckpt_dir) if (p / "state.json").is_file()]
    return found[-1] if found else None


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """{'model', 'ema', 'optimizer', 'state'} of one step folder."""
    meta = json.loads((path / "optimizer.json").read_text())
    return {
        "model": load_tensors(path / "model.safetensors", device),
        "ema": load_tensors(path / "ema.safetensors", device),
        "optimizer": optimizer_from_tensors(load_tensors(path / "optimizer.safetensors", device), meta),
        "state": json.loads((path / "state.json").read_text()),
    }

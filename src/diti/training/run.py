"""Run folders: what every job writes next to its outputs, and how a finished run is read back.

    RUN/config.yaml      the resolved config (every default filled in)
    RUN/meta.json        kind (pretrain | diti), diti/torch/diffusers versions, creation time, command line
    RUN/metrics.jsonl    training log, one JSON object per logged step
    RUN/loss_per_t.json  the per-time-step loss histogram (mean loss and count for every t)
    RUN/checkpoints/     see training/checkpoint.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TypeVar

import diffusers
import torch

from .. import __version__
from ..config.loader import dump_yaml, from_dict, read_yaml, to_dict
from .checkpoint import atomic_write_text

C = TypeVar("C")

# Bump when a run folder written by an older diti can no longer be read.
RUN_FORMAT = 1


def write_run_files(out: Path, kind: str, config) -> None:
    """config.yaml and meta.json (main process only)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(to_dict(config)))
    meta = {
        "kind": kind,
        "run_format": RUN_FORMAT,
        "diti_version": __version__,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))


def read_meta(run: Path, kind: str | None = None) -> dict:
    """meta.json of a run, checked for the expected kind and a readable format."""
    meta_file = Path(run) / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{run} is not a diti run folder (no meta.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("run_format") != RUN_FORMAT:
        raise ValueError(
            f"{run} was written by diti {meta.get('diti_version', '?')} with run format "
            f"{meta.get('run_format')}; this diti ({__version__}) reads format {RUN_FORMAT}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{run} is a {meta.get('kind')!r} run, expected a {kind!r} run")
    return meta


def read_run_config(run: Path, cls: type[C]) -> C:
    return from_dict(cls, read_yaml(Path(run) / "config.yaml"))

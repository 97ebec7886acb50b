"""The names and formats of the two folder layouts, and reading and writing their small files.

A run folder (``diti train``, ``diti pretrain``)::

    RUN/config.yaml      the resolved config (every default filled in)
    RUN/meta.json        kind (pretrain | diti), run format, diti/torch/diffusers versions, creation time, command
    RUN/metrics.jsonl    training log, one JSON object per logged step
    RUN/loss_per_t.json  the per-time-step loss histogram (mean loss and count for every t)
    RUN/checkpoints/     folders/checkpoints.py
    RUN/logs/            (``train.log_with``) the trackers' logs, e.g. TensorBoard's event files
    RUN/eval/            evaluation results (folders/results.py), figures, cached features
    RUN/dm/              (pretrain runs) the EMA DM as a diffusers pipeline folder

An exported model folder (``diti export``; the layout of a diffusers pipeline folder, nothing outside it)::

    DIR/model_index.json                {"_class_name": "DiTiPipeline", "export_format": 1, the components, the
                                         checkpoint and weights it holds, where it came from}
    DIR/config.yaml                     the run's resolved config (dm and data paths cleared)
    DIR/dm/                             the frozen DM, a diffusers pipeline folder
    DIR/encoder/model.safetensors       the encoder E
    DIR/shift_decoder/model.safetensors the trainable part of the shift decoder G (without the frozen DM)
    DIR/eval/                           the run's measured results, when it has them
    DIR/README.md                       the model card

Each layout has a format number; a folder of another format is refused by ``check_format`` with its version.
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
from .files import atomic_write_text

C = TypeVar("C")

# every folder
CONFIG = "config.yaml"
EVAL = "eval"
DM = "dm"
# run folders
META = "meta.json"
METRICS = "metrics.jsonl"
LOSS_PER_T = "loss_per_t.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
# export folders
INDEX = "model_index.json"
EXPORT_CLASS = "DiTiPipeline"
COMPONENTS = ("encoder", "shift_decoder")  # each holds WEIGHTS
WEIGHTS = "model.safetensors"
MODEL_CARD = "README.md"
# eval/ files that are not results (folders/results.py names those)
FEATURES = "features"
FACTOR_CLASSIFIER = "factor_classifier.safetensors"
COUNTERFACTUAL_PNG = "counterfactual.png"
RECONSTRUCTION_PNG = "reconstruction.png"

# Bump when a folder written by an older diti can no longer be read.
RUN_FORMAT = 1
EXPORT_FORMAT = 1


def check_format(folder: Path, layout: str, found, expected: int, version: str) -> None:
    """ValueError unless a ``layout`` ("run" or "export") folder has the format this diti reads."""
    if found == expected:
        return
    how = "written by diti {v} with run format {f}" if layout == "run" else "exported by diti {v} in export format {f}"
    raise ValueError(f"{folder} was {how.format(v=version, f=found)}; this diti ({__version__}) reads format {expected}")


def eval_dir(folder: str | Path, create: bool = True) -> Path:
    """FOLDER/eval (made if ``create``)."""
    path = Path(folder) / EVAL
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def manipulate_file(attribute: str, suffix: str = ".json") -> str:
    """eval/manipulate-ATTRIBUTE.json (the ProbMask direction) or .png (its figure)."""
    return f"manipulate-{attribute}{suffix}"


# ----------------------------------------------------------------------------------------------------
# Run folders
def write_run_files(out: Path, kind: str, config) -> None:
    """config.yaml and meta.json (main process only)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG, dump_yaml(to_dict(config)))
    meta = {
        "kind": kind,
        "run_format": RUN_FORMAT,
        "diti_version": __version__,
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
    }
    atomic_write_text(out / META, json.dumps(meta, indent=2))


def is_run(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def read_meta(run: Path, kind: str | None = None) -> dict:
    """meta.json of a run, checked for the expected kind and a readable format."""
    meta_file = Path(run) / META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{run} is not a diti run folder (no meta.json)")
    meta = json.loads(meta_file.read_text())
    check_format(run, "run", meta.get("run_format"), RUN_FORMAT, meta.get("diti_version", "?"))
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{run} is a {meta.get('kind')!r} run, expected a {kind!r} run")
    return meta


def read_run_config(run: Path, cls: type[C]) -> C:
    return from_dict(cls, read_yaml(Path(run) / CONFIG))


# ----------------------------------------------------------------------------------------------------
# Export folders
def is_export(path: str | Path) -> bool:
    """Whether ``path`` holds a folder written by ``diti export`` (a model_index.json naming DiTiPipeline)."""
    index = Path(path) / INDEX
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == EXPORT_CLASS
    except (ValueError, AttributeError):
        return False


def read_index(path: Path) -> dict:
    """model_index.json of an export, checked for a readable format and the components it must name."""
    try:
        index = json.loads((Path(path) / INDEX).read_text())
    except ValueError as err:
        raise ValueError(f"{path / INDEX} is not valid JSON: {err}") from None
    check_format(path, "export", index.get("export_format"), EXPORT_FORMAT, index.get("_diti_version", "?"))
    return index


def export_index(kind: str, checkpoint: str | None, weights: str, eval_files: list[str], source: dict) -> dict:
    """The model_index.json of an export."""
    return {
        "_class_name": EXPORT_CLASS,
        "_diti_version": __version__,
        "export_format": EXPORT_FORMAT,
        "kind": kind,
        "config": CONFIG,
        "dm": ["diffusers", "DDPMPipeline"],
        "encoder": ["diti", "Encoder"],
        "shift_decoder": ["diti", "ShiftDecoder"],
        "checkpoint": checkpoint,
        "weights": weights,
        "eval": eval_files,
        "source": source,
        "versions": {"diti": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

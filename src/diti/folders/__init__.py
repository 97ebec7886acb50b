"""The on-disk contract: what a run folder and an exported model folder hold, the result files of their eval/,
and the one loader of a trained model from either.

- ``layout``: the names of every file of both layouts, their format numbers and the one format check,
  meta.json / config.yaml of runs, model_index.json of exports;
- ``checkpoints``: a run's crash-safe checkpoints (safetensors + JSON);
- ``results``: one dataclass per result file of eval/ (``RESULTS``), with its file name, ``to_dict`` and
  ``from_dict``;
- ``model``: ``load_model`` (a run or an export, into a ``LoadedModel``) and ``write_export``.

Training writes runs through this package; evaluation, the API, the report and the explorer read them through
it, and none of them imports ``diti.training``.
"""

from .checkpoints import latest_checkpoint, list_checkpoints
from .layout import eval_dir, is_export, is_run, read_meta, read_run_config, write_run_files
from .model import LoadedModel, load_diti_run, load_model, write_export
from .results import (
    RESULTS,
    AttributeLossResult,
    DisentangleResult,
    FidelityResult,
    ProbeResult,
    Result,
    SavedProbMask,
)

__all__ = [
    "RESULTS",
    "AttributeLossResult",
    "DisentangleResult",
    "FidelityResult",
    "LoadedModel",
    "ProbeResult",
    "Result",
    "SavedProbMask",
    "eval_dir",
    "is_export",
    "is_run",
    "latest_checkpoint",
    "list_checkpoints",
    "load_diti_run",
    "load_model",
    "read_meta",
    "read_run_config",
    "write_export",
    "write_run_files",
]

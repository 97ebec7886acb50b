"""The result files of eval/, one dataclass each: its file name, the command that writes it, ``to_dict`` (the
file's JSON) and ``from_dict`` (reads it back, typed).

``from_dict`` reads what older diti versions wrote: a key that a file lacks (e.g. ``protocol`` or ``budget``
before 2026-12-01) is None, or empty where the field is a table; keys it does not know are left out. A file
that is not a JSON object, or lacks what a result cannot do without, raises ValueError naming the problem.

``RESULTS`` lists every result file. The report, the export (which copies the results of the model, ``OF =
"model"``, and shows them on the model card), the API's ``results`` and the explorer find them there: a new
result file is one dataclass here, added to ``RESULTS`` (and the code that computes it).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from .files import write_json
from .layout import manipulate_file

R = TypeVar("R", bound="Result")

# the metric a probe's epoch is chosen on, per task (also the headline metric of its table)
SELECTION_METRIC = {"multiclass": "accuracy", "binary": "ap", "regression": "pearson_r"}


class Result(ABC):
    """A result file of eval/ (FOLDER/eval/FILE, or FOLDER/FILE for a folder of results)."""

    FILE: ClassVar[str]
    FIGURE: ClassVar[str | None] = None  # the PNG written beside it
    COMMAND: ClassVar[str]  # the command that writes it ({run}: the folder)
    FEATURE_COMMAND: ClassVar[str | None] = None  # ... for codes saved by `diti encode` (no run folder)
    # "model": a result of a trained model (expected of a diti run, carried by `diti export`, on the model card);
    # "dm": a result of the frozen DM (expected of a pretrain run)
    OF: ClassVar[str] = "model"

    @abstractmethod
    def to_dict(self) -> dict:
        """The file's JSON."""

    @classmethod
    @abstractmethod
    def from_dict(cls: type[R], data: Any) -> R:
        """The result of a file's JSON (ValueError when it is not one)."""

    def write(self, folder: str | Path) -> Path:
        """FOLDER/FILE."""
        return write_json(self.to_dict(), Path(folder) / self.FILE)

    @classmethod
    def read(cls: type[R], folder: str | Path) -> R | None:
        """FOLDER/FILE typed; None when there is no such file, ValueError when it cannot be read."""
        file = Path(folder) / cls.FILE
        if not file.is_file():
            return None
        try:
            return cls.from_dict(json.loads(file.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"invalid JSON: {err}") from None


def _mapping(data: Any, what: str) -> Mapping:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def _known(cls, data: Any) -> dict:
    """The entries of ``data`` that are fields of ``cls`` ({} when ``data`` is not a mapping)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names} if isinstance(data, Mapping) else {}


@dataclass
class Record:
    """A part of a result file read leniently: every field optional, unknown keys ignored."""

    @classmethod
    def from_dict(cls, data: Any):
        """The record, or None when ``data`` is not a JSON object."""
        return cls(**_known(cls, data)) if isinstance(data, Mapping) else None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------------------------
# probe.json
@dataclass
class ProbeResult(Result):
    """Linear probes per attribute (``diti probe``): metrics per attribute and their mean, at the epoch chosen
    on the validation split, with the budget that trained them."""

    FILE: ClassVar[str] = "probe.json"
    COMMAND: ClassVar[str] = "diti probe {run} --data DIR"
    FEATURE_COMMAND: ClassVar[str] = "diti probe --features FILE --test-features FILE --out {run}/probe.json"

    task: str
    names: list[str]
    per_attribute: dict[str, dict[str, float]]
    mean: dict[str, float] | None
    best_epoch: int | None
    valid_curve: list[float] = field(default_factory=list)  # selection metric on the valid split, per validation
    budget: dict = field(default_factory=dict)  # epochs / steps asked for, epochs run, whether it stopped early

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ProbeResult:
        data = _mapping(data, cls.FILE)
        per = data.get("per_attribute")
        return cls(task=data.get("task", "?"), names=list(data.get("names") or []),
                   per_attribute={k: v for k, v in per.items() if isinstance(v, Mapping)} if isinstance(per, Mapping)
                   else {},
                   mean=data["mean"] if isinstance(data.get("mean"), Mapping) else None,
                   best_epoch=data.get("best_epoch"), valid_curve=list(data.get("valid_curve") or []),
                   budget=data["budget"] if isinstance(data.get("budget"), Mapping) else {})

    @property
    def metric(self) -> str | None:
        """The headline metric: accuracy (multiclass), AP (binary), Pearson r (regression)."""
        mean = self.mean or {}
        metric = SELECTION_METRIC.get(self.task)
        return metric if metric in mean else next(iter(mean), None)

    def format_table(self) -> str:
        metrics = list(next(iter(self.per_attribute.values())))
        width = max(9, *(len(n) for n in self.names))
        lines = [f"{'attribute':<{width}}  " + "  ".join(f"{m:>9}" for m in metrics)]
        for name in self.names:
            lines.append(f"{name:<{width}}  " + "  ".join(f"{self.per_attribute[name][m]:>9.4f}" for m in metrics))
        lines.append(f"{'mean':<{width}}  " + "  ".join(f"{self.mean[m]:>9.4f}" for m in metrics))
        run = f" of {self.budget['epochs_run']} run" if self.budget else ""
        lines.append(f"(epoch {self.best_epoch}{run} chosen on the validation split by mean "
                     f"{SELECTION_METRIC[self.task]})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# disentangle.json
@dataclass
class DCIScores(Record):
    disentanglement: float | None = None
    completeness: float | None = None
    informativeness_train: float | None = None  # mean GBT accuracy on the rows they were fitted on
    informativeness_test: float | None = None  # the same on the test rows
    per_factor_train: list[float] | None = None
    per_factor_test: list[float] | None = None
    num_train: int | None = None
    num_test: int | None = None


@dataclass
class MIGScores(Record):
    mig: float | None = None
    per_factor: list[float | None] | None = None
    mutual_info: list[list[float]] | None = None
    factor_entropy: list[float] | None = None
    skipped_factors: list[int] | None = None


@dataclass
class FactorVAEScores(Record):
    train_accuracy: float | None = None
    eval_accuracy: float | None = None
    num_active_dims: int | None = None


@dataclass
class ChunkLevel(Record):
    """DCI D and C over the chunks (and the stages) of the partition instead of single dims."""

    source: str | None = None
    chunk_labels: list[str] | None = None
    chunk_dim_ranges: list[list[int]] | None = None
    chunk_importance: list[list[float]] | None = None
    disentanglement: float | None = None
    completeness: float | None = None
    stage_labels: list[str] | None = None
    stage_dim_ranges: list[list[int]] | None = None
    stage_importance: list[list[float]] | None = None
    stage_disentanglement: float | None = None
    stage_completeness: float | None = None


@dataclass
class Alignment(Record):
    """Each factor's share of DCI importance per stage group and per chunk, and the probe accuracy from each
    stage group's dims alone."""

    group_labels: list[str] | None = None
    group_dim_ranges: list[list[int]] | None = None
    group_importance_share: list[list[float]] | None = None
    group_probe_accuracy: list[list[float]] | None = None
    chunk_labels: list[str] | None = None
    chunk_dim_ranges: list[list[int]] | None = None
    chunk_importance_share: list[list[float]] | None = None


@dataclass
class DisentangleResult(Result):
    """DCI (per dim, per chunk and per stage), MIG, FactorVAE score and the partition-factor alignment
    (``diti disentangle``). ``protocol``: the sample counts behind the numbers (None before 2026-12-01);
    ``dci``, ``importance``, ``chunk_level``, ``alignment``: None when DCI was not computed."""

    FILE: ClassVar[str] = "disentangle.json"
    FIGURE: ClassVar[str] = "alignment.png"
    COMMAND: ClassVar[str] = "diti disentangle {run} --data DIR"
    FEATURE_COMMAND: ClassVar[str] = "diti disentangle --features FILE --test-features FILE --out {run}"

    protocol: dict | None
    factors: list[str]
    mig: MIGScores | None
    factor_vae: FactorVAEScores | None
    num_train: int | None
    dci: DCIScores | None
    importance: list[list[float]] | None
    chunk_level: ChunkLevel | None
    alignment: Alignment | None
    features: dict | None = None  # the saved codes measured (``--features``), when not a run's

    def to_dict(self) -> dict:
        out = {"protocol": self.protocol, "factors": self.factors}
        for name in ("mig", "factor_vae", "num_train", "dci", "importance", "chunk_level", "alignment"):
            value = getattr(self, name)
            out[name] = value.to_dict() if isinstance(value, Record) else value
        if self.features is not None:
            out["features"] = self.features
        return out

    @classmethod
    def from_dict(cls, data: Any) -> DisentangleResult:
        data = _mapping(data, cls.FILE)
        factors = data.get("factors")
        return cls(protocol=data["protocol"] if isinstance(data.get("protocol"), Mapping) else None,
                   factors=list(factors) if isinstance(factors, list) else [],
                   mig=MIGScores.from_dict(data.get("mig")), factor_vae=FactorVAEScores.from_dict(data.get("factor_vae")),
                   num_train=data.get("num_train"), dci=DCIScores.from_dict(data.get("dci")),
                   importance=data.get("importance"), chunk_level=ChunkLevel.from_dict(data.get("chunk_level")),
                   alignment=Alignment.from_dict(data.get("alignment")),
                   features=data["features"] if isinstance(data.get("features"), Mapping) else None)


# ----------------------------------------------------------------------------------------------------
# fidelity.json
def _nan_to_none(a):
    if isinstance(a, (list, tuple, np.ndarray)):
        return [_nan_to_none(x) for x in a]
    return None if isinstance(a, float) and math.isnan(a) else a


def _floats(values, what: str) -> np.ndarray:
    try:
        return np.array([[np.nan if v is None else v for v in row] if isinstance(row, list) else
                         (np.nan if row is None else row) for row in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fidelity.json: {what} is not a table of numbers") from None


@dataclass
class FidelityResult(Result):
    """What each dim group transfers (``diti fidelity``; definitions in evaluation/fidelity.py)."""

    FILE: ClassVar[str] = "fidelity.json"
    FIGURE: ClassVar[str] = "fidelity.png"
    COMMAND: ClassVar[str] = "diti fidelity {run} --data DIR"

    factor_names: list[str]
    group_labels: list[str]
    group_dim_ranges: list[tuple[int, int]]  # [start, end)
    group_t_ranges: list[tuple[int, int] | None]  # inclusive; None for PDAE's dim groups
    takes_source: np.ndarray  # (G, F)
    keeps_target: np.ndarray  # (G, F)
    num_differ: np.ndarray  # (F,) pairs whose source and target differ in each factor
    reconstruction_accuracy: np.ndarray  # (F,) the ceiling: accuracy on plain DDIM reconstructions
    real_accuracy: np.ndarray  # (F,) accuracy on the real target images
    num_pairs: int
    num_steps: int
    seed: int
    clip_x0: bool = False  # decodings clipped their predicted x_0 to [-1, 1] at every step
    classifier: dict | None = None  # the factor classifier's test scores and training budget

    def to_dict(self) -> dict:
        """JSON-ready: arrays as nested lists, NaN as None."""
        out = {
            "factor_names": list(self.factor_names),
            "group_labels": list(self.group_labels),
            "group_dim_ranges": [list(r) for r in self.group_dim_ranges],
            "group_t_ranges": [None if r is None else list(r) for r in self.group_t_ranges],
            "takes_source": _nan_to_none(self.takes_source.tolist()),
            "keeps_target": _nan_to_none(self.keeps_target.tolist()),
            "num_differ": [int(n) for n in self.num_differ],
            "reconstruction_accuracy": _nan_to_none(self.reconstruction_accuracy.tolist()),
            "real_accuracy": _nan_to_none(self.real_accuracy.tolist()),
            "num_pairs": self.num_pairs,
            "num_steps": self.num_steps,
            "seed": self.seed,
            "clip_x0": self.clip_x0,
            "definitions": {
                "takes_source": "P(pred == source value | source and target differ in the factor)",
                "keeps_target": "P(pred == target value | source and target differ in the factor)",
                "reconstruction_accuracy": "accuracy on DDIM reconstructions of the targets (ceiling)",
            },
        }
        if self.classifier is not None:
            out["classifier"] = self.classifier
        return out

    @classmethod
    def from_dict(cls, data: Any) -> FidelityResult:
        data = _mapping(data, cls.FILE)
        try:
            names, labels = list(data["factor_names"]), list(data["group_labels"])
            return cls(
                factor_names=names, group_labels=labels,
                group_dim_ranges=[tuple(r) for r in data.get("group_dim_ranges") or []],
                group_t_ranges=[None if r is None else tuple(r) for r in data.get("group_t_ranges") or []],
                takes_source=_floats(data.get("takes_source") or [], "takes_source"),
                keeps_target=_floats(data.get("keeps_target") or [], "keeps_target"),
                num_differ=np.asarray(data.get("num_differ") or [], dtype=np.int64),
                reconstruction_accuracy=_floats(data.get("reconstruction_accuracy") or [], "reconstruction_accuracy"),
                real_accuracy=_floats(data.get("real_accuracy") or [], "real_accuracy"),
                num_pairs=data.get("num_pairs"), num_steps=data.get("num_steps"), seed=data.get("seed"),
                clip_x0=bool(data.get("clip_x0", False)),
                classifier=data["classifier"] if isinstance(data.get("classifier"), Mapping) else None)
        except (KeyError, TypeError) as err:
            raise ValueError(f"{cls.FILE}: missing or malformed {err}") from None

    def format_table(self) -> str:
        width = max(12, *(len(n) for n in self.factor_names))
        label_w = max(len(g) for g in [*self.group_labels, "reconstruction (ceiling)"])
        lines = []
        for title, m in (("takes source", self.takes_source), ("keeps target", self.keeps_target)):
            lines.append(
                f"{title:<{label_w}}  " + "  ".join(f"{n[:width]:>{width}}" for n in self.factor_names)
            )
            for label, row in zip(self.group_labels, m, strict=True):
                lines.append(f"{label:<{label_w}}  " + "  ".join(f"{v:>{width}.3f}" for v in row))
            lines.append(
                f"{'reconstruction (ceiling)':<{label_w}}  "
                + "  ".join(f"{v:>{width}.3f}" for v in self.reconstruction_accuracy)
            )
            lines.append("")
        lines.append(
            f"{self.num_pairs} pairs, {self.num_steps} DDIM steps{', x0 clipped' if self.clip_x0 else ''}, "
            f"seed {self.seed}; pairs differing per "
            f"factor: {', '.join(str(int(n)) for n in self.num_differ)}"
        )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# attribute_loss.json
def crossing(timesteps: Sequence[int], curve: Sequence[float], threshold: float) -> tuple[int | None, float | None]:
    """(first grid t with curve >= threshold, the linearly interpolated crossing t), or (None, None)."""
    for i, (t, v) in enumerate(zip(timesteps, curve, strict=True)):
        if v >= threshold:
            if i == 0:
                return int(t), float(t)
            t0, v0 = timesteps[i - 1], curve[i - 1]
            return int(t), float(t0 + (threshold - v0) / (v - v0) * (t - t0))
    return None, None


@dataclass
class AttributeLossResult(Result):
    """Err(t) per factor, the first t where it reaches ``threshold``, and the factors ordered by that t
    (``diti attribute-loss``: a result of the frozen DM, not carried by exports).

    ``crossing_t[f]``: the first grid time-step with Err >= threshold (None if never);
    ``crossing_t_interp[f]``: the same point linearly interpolated between grid time-steps (ranks factors that
    cross at the same grid step). ``stderr``: standard error over pairs. ``skipped``: factors without a pair.
    """

    FILE: ClassVar[str] = "attribute_loss.json"
    FIGURE: ClassVar[str] = "attribute_loss.png"
    COMMAND: ClassVar[str] = "diti attribute-loss --dm {run} --data DIR --out {run}/eval"
    OF: ClassVar[str] = "dm"

    timesteps: list[int]
    factors: list[str]
    curves: dict[str, list[float]]
    stderr: dict[str, list[float]]
    num_pairs: dict[str, int]
    threshold: float
    num_noise: int
    seed: int
    clip: bool = False
    crossing_t: dict[str, int | None] = field(default_factory=dict)
    crossing_t_interp: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.factors:
            if name not in self.crossing_t:
                self.crossing_t[name], self.crossing_t_interp[name] = crossing(
                    self.timesteps, self.curves[name], self.threshold
                )

    @property
    def order(self) -> list[str]:
        """Factors by the time-step at which they are lost (earliest first; never-crossing last)."""
        def key(name: str) -> tuple[float, int]:
            t = self.crossing_t_interp.get(name)
            return (float("inf") if t is None else t, self.factors.index(name))

        return sorted(self.factors, key=key)

    def to_dict(self) -> dict:
        return {**asdict(self), "order": self.order}

    @classmethod
    def from_dict(cls, data: Any) -> AttributeLossResult:
        try:
            return cls(**_known(cls, _mapping(data, cls.FILE)))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{cls.FILE}: missing or malformed {err}") from None

    def format_table(self) -> str:
        width = max(6, *(len(n) for n in self.factors)) if self.factors else 6
        lines = [f"{'factor':<{width}}  {'pairs':>5}  {'cross t':>7}  {'Err(0)':>6}  {'Err(T-1)':>8}"]
        for name in self.order:
            t = self.crossing_t[name]
            curve = self.curves[name]
            lines.append(f"{name:<{width}}  {self.num_pairs[name]:>5}  {'never' if t is None else t:>7}  "
                         f"{curve[0]:>6.3f}  {curve[-1]:>8.3f}")
        lines.append(f"(Err >= {self.threshold:g}; t grid {self.timesteps[0]}..{self.timesteps[-1]}, "
                     f"{len(self.timesteps)} steps, {self.num_noise} noise draws per image)")
        for name, why in self.skipped.items():
            lines.append(f"skipped {name}: {why}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# manipulate-ATTRIBUTE.json
@dataclass
class SavedProbMask:
    """A ProbMask direction saved by ``diti manipulate`` (eval/manipulate-ATTRIBUTE.json) with the checkpoint
    it was fitted on; ``direction``: the fitted result (``evaluation.manipulate.ProbMaskResult.to_dict``), read
    back with everything else the file holds; ``extra``: what is saved beside it (e.g. how the figure beside it
    was decoded)."""

    GLOB: ClassVar[str] = manipulate_file("*")

    direction: dict
    checkpoint: str | None
    extra: dict = field(default_factory=dict)

    @staticmethod
    def file(attribute: str) -> str:
        return manipulate_file(attribute)

    @property
    def target(self) -> str | None:
        return self.direction.get("target")

    @property
    def d_prime(self) -> int | None:
        return self.direction.get("d_prime")

    def to_dict(self) -> dict:
        return {**self.direction, **self.extra, "checkpoint": self.checkpoint}

    @classmethod
    def from_dict(cls, data: Any) -> SavedProbMask:
        data = _mapping(data, "a saved ProbMask")
        return cls({k: v for k, v in data.items() if k != "checkpoint"}, data.get("checkpoint"))

    @classmethod
    def read(cls, path: str | Path) -> SavedProbMask | None:
        """The file at ``path``, or None when it is missing or not a saved ProbMask."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            return None


# Every result file of eval/, in the order the report and the model card show them.
RESULTS: tuple[type[Result], ...] = (ProbeResult, DisentangleResult, FidelityResult, AttributeLossResult)

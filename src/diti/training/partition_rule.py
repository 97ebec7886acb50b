"""``partition.rule``: the partition's stages and dims set by a rule when a run starts (docs/method.md).

- ``given``: ``partition.stages`` / ``dims_per_stage`` as written (None: balanced);
- ``balanced``: every chunk d / k dims;
- ``official``: the paper's CelebA stages (50, 100, 300, 500, 1000) and dims (10, 25, 327, 100, 50) scaled to
  T and d (largest remainders, at least one dim per stage);
- ``attribute_loss``: dims at the chunks where the frozen DM loses each factor (``rule_source``: an
  ``attribute_loss.json`` of ``diti attribute-loss``; ``diti.partition.partition_from_crossings``);
- ``removed_loss``: dims at the chunks where a PDAE run's code removes the most loss, read without labels
  (``rule_source``: that run's folder, measured here, or the JSON of ``diti partition --from-removed-loss``;
  ``diti.partition.partition_from_removed_loss``); ``rule_source: auto`` trains that run first, inside the run
  folder (``jobs.removed_loss_source``: ``partition.rule_source_steps`` steps of PDAE on the same data and DM).

The resolved stages and dims replace the config's, so that ``RUN/config.yaml`` records the partition that
trained; the rule and its source stay beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config.loader import ConfigError
from ..config.schema import PartitionConfig
from ..partition import (
    Partition,
    largest_remainder,
    partition_from_crossings,
    partition_from_removed_loss,
)

RULE_SOURCE = "rule-source"  # RUN/rule-source: the PDAE run of partition.rule_source=auto and its curve
RULE_SOURCE_RUN = "pdae"  # RUN/rule-source/pdae: that PDAE run's folder
RULE_SOURCE_CURVE = "removed_loss.json"  # RUN/rule-source/removed_loss.json: its removed-loss curve, once measured
OFFICIAL_STAGES = (50, 100, 300, 500, 1000)
OFFICIAL_DIMS = (10, 25, 327, 100, 50)


def official_partition(latent_dim: int, k: int, timesteps: int) -> Partition:
    """The paper's stages and dims scaled to T and d."""
    stages = tuple(dict.fromkeys(max(1, round(s * timesteps / 1000)) for s in OFFICIAL_STAGES))
    if len(stages) != len(OFFICIAL_STAGES):
        raise ValueError(f"T = {timesteps} is too small for the official stages")
    dims = largest_remainder(latent_dim, [float(d) for d in OFFICIAL_DIMS], 1)
    return Partition(latent_dim, k, timesteps, stages, tuple(dims))


def crossings_of(path: str | Path) -> dict[str, float | None]:
    """The crossing table of a ``diti attribute-loss`` JSON (interpolated where present)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"attribute-loss file not found: {path}")
    data = json.loads(path.read_text())
    crossings = data.get("crossing_t_interp") or data.get("crossing_t")
    if not isinstance(crossings, dict):
        raise ValueError(f"{path} has no crossing_t_interp / crossing_t table (is it a `diti attribute-loss` JSON?)")
    return crossings


@torch.no_grad()
def removed_loss_curve(
    run: str | Path, data: str | Path | None = None, images: int = 64, stride: int = 5, seed: int = 0,
    device: str = "cpu",
) -> dict:
    """The loss a trained run's code removes at each t: r(t) = the frozen DM's weighted loss - the model's.

    ``images`` training images (the first ones of the run's data, or of ``data``) are noised at t = 0, stride,
    2 stride, ... with fixed noise per t (seeded); r at the other t repeats the value of the grid t below.
    Uses the run's EMA weights. Returns {"t_grid", "removed_grid", "removed_loss" (T values), "images",
    "stride", "run"}.
    """
    from ..folders import load_diti_run

    model, cfg = load_diti_run(run, device=device)
    dataset = cfg.data.open(path=data) if data is not None else cfg.data.open()
    n = min(images, len(dataset))
    x0 = dataset.__getitems__(list(range(n))).to(device)
    T = model.partition.timesteps
    grid = list(range(0, T, stride))
    gen = torch.Generator().manual_seed(seed)
    removed = []
    for t in grid:
        noise = torch.randn(x0.shape, generator=gen).to(device)
        out = model(x0, torch.full((n,), t, dtype=torch.long, device=device), noise)
        removed.append(float((out.baseline - out.per_sample).mean()))
    full = np.repeat(removed, stride)[:T]
    return {"run": str(run), "images": n, "stride": stride, "t_grid": grid, "removed_grid": removed,
            "removed_loss": [float(x) for x in full]}


def removed_loss_of(source: str | Path) -> list[float]:
    """r(t) from a PDAE run folder (measured) or a JSON holding ``removed_loss``."""
    source = Path(source)
    if source.is_dir():
        return removed_loss_curve(source)["removed_loss"]
    if not source.is_file():
        raise FileNotFoundError(f"removed-loss source not found: {source} (a run folder or a JSON)")
    data = json.loads(source.read_text())
    if not isinstance(data.get("removed_loss"), list):
        raise ValueError(f"{source} has no removed_loss list (write one with `diti partition --from-removed-loss "
                         "RUN --out FILE`)")
    return data["removed_loss"]


def resolve_partition_rule(pcfg: PartitionConfig, timesteps: int) -> PartitionConfig:
    """``pcfg`` with stages and dims set by its rule (a copy; ``given`` keeps its stages and dims)."""
    rule = pcfg.rule
    if rule in ("given", "balanced", "official"):
        pcfg = replace(pcfg, rule_source=None)  # a source (a preset's auto) these rules do not read
    elif pcfg.rule_source is None:
        raise ConfigError(f"partition.rule={rule} needs partition.rule_source")
    elif pcfg.rule_source == "auto":
        raise ConfigError(f"partition.rule={rule} with rule_source=auto: the source is a PDAE run `diti train` "
                          "trains first (diti.training.jobs.removed_loss_source); resolve it there")
    try:
        if rule == "given":
            return pcfg
        if rule == "balanced":
            part = Partition(pcfg.latent_dim, pcfg.k, timesteps)
        elif rule == "official":
            part = official_partition(pcfg.latent_dim, pcfg.k, timesteps)
        elif rule == "attribute_loss":
            part, _ = partition_from_crossings(crossings_of(pcfg.rule_source), pcfg.latent_dim, pcfg.k, timesteps,
                                               pcfg.floor_dims)
        else:
            curve = removed_loss_of(pcfg.rule_source)
            if len(curve) != timesteps:
                raise ValueError(f"the removed-loss curve has {len(curve)} time-steps, the diffusion T = {timesteps}")
            part, _ = partition_from_removed_loss(curve, pcfg.latent_dim, pcfg.k, pcfg.floor_dims)
    except ValueError as err:
        raise ConfigError(f"partition.rule={rule}: {err}") from None
    stages = None if part.stages is None else list(part.stages)
    dims = None if part.dims_per_stage is None else list(part.dims_per_stage)
    source = pcfg.rule_source if pcfg.rule_source is None else str(Path(pcfg.rule_source).expanduser().resolve())
    return replace(pcfg, stages=stages, dims_per_stage=dims, rule_source=source)


@dataclass
class RulePartition:
    """A partition set by the attribute-loss or removed-loss rule from its source (``diti partition
    --from-attribute-loss / --from-removed-loss``): the partition, a label per chunk, and what it was read from."""

    partition: Partition
    rule: str  # attribute_loss | removed_loss
    source: Path  # what ``partition.rule_source`` reads it from again
    floor: int
    labels: list[str]  # per chunk: the factors lost in its t-range, or the loss removed there
    extra: dict  # chunk_factors and crossings, or chunk_weights and removed_loss

    def overrides(self) -> list[str]:
        """The ``--set`` values that train with this partition."""
        part = self.partition
        return [f"partition.latent_dim={part.latent_dim}", f"partition.k={part.k}", f"partition.rule={self.rule}",
                f"partition.rule_source={self.source}"] + ([f"partition.floor_dims={self.floor}"]
                                                           if self.floor != 1 else [])

    def to_json(self) -> dict:
        part = self.partition
        return {**part.to_json(), "stages": list(part.stages), "dims_per_stage": list(part.dims_per_stage),
                "rule": self.rule, **self.extra}

    def format_text(self) -> str:
        """The partition table, each chunk's dims and label, and the overrides that train with it."""
        part = self.partition
        lines = [part.format_table()]
        for i, label in enumerate(self.labels):
            lo, hi = part.chunk_t_ranges[i]
            lines.append(f"chunk {i} (t {lo}-{hi}): {part.dims_per_stage[i]} dims; {label}")
        lines.append("train with: " + " ".join(f"--set {o}" for o in self.overrides()))
        return "\n".join(lines)


def attribute_loss_partition(path: str | Path, latent_dim: int, k: int, timesteps: int | None = None,
                             floor: int = 1) -> RulePartition:
    """The attribute-loss rule on the crossings of a ``diti attribute-loss`` JSON."""
    crossings = crossings_of(path)
    part, groups = partition_from_crossings(crossings, latent_dim, k, timesteps or 1000, floor)
    labels = [", ".join(f"{n} ({crossings[n]:.0f})" for n in g) or "no factor lost" for g in groups]
    return RulePartition(part, "attribute_loss", Path(path), floor, labels,
                         {"chunk_factors": groups, "crossings": crossings})


def removed_loss_partition(source: str | Path, latent_dim: int, k: int, floor: int = 1,
                           data: str | Path | None = None, out: str | Path | None = None) -> RulePartition:
    """The removed-loss rule: on a PDAE run folder (measured, on ``data`` or the run's data) or on a JSON with a
    ``removed_loss`` curve (read as it is). ``out``: write the curve and the partition there (JSON), which then
    becomes the rule's source."""
    source = Path(source)
    if source.is_dir():
        curve = removed_loss_curve(source, data)
    else:
        curve = json.loads(source.read_text()) if source.is_file() else None
        if not isinstance(curve, dict) or not isinstance(curve.get("removed_loss"), list):
            raise FileNotFoundError(f"{source} is neither a run folder nor a JSON with a removed_loss curve")
    part, weights = partition_from_removed_loss(curve["removed_loss"], latent_dim, k, floor)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**curve, "partition": {"stages": list(part.stages),
                                                          "dims_per_stage": list(part.dims_per_stage)}}))
    return RulePartition(part, "removed_loss", out if out is not None else source, floor,
                         [f"removed loss {w:.3g}" for w in weights],
                         {"chunk_weights": weights, "removed_loss": curve["removed_loss"]})

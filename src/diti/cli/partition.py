"""``diti partition``: the time-step partition of z as a table (or JSON), from flags, a config, a run, a preset or
an attribute-loss file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .common import Overrides, int_list


def partition(
    latent_dim: int = typer.Option(None, help="d, the code size."),
    k: int = typer.Option(None, help="Number of chunks (1 = PDAE)."),
    timesteps: int = typer.Option(None, help="T."),
    stages: str = typer.Option(None, help="Stage ends, e.g. 50,100,300,500,1000 (omit for balanced)."),
    dims_per_stage: str = typer.Option(None, help="Dims per stage, e.g. 10,25,327,100,50."),
    config: Path = typer.Option(None, help="Read the partition from a YAML config."),
    run: Path = typer.Option(None, help="Read the partition from a run folder's config."),
    preset: str = typer.Option(None, help="Read the partition from a preset."),
    set_: Overrides = None,
    from_attribute_loss: Path = typer.Option(None, help="Put the dims at the chunks where the DM loses each "
                                             "factor, from this attribute_loss.json (`diti attribute-loss`); "
                                             "needs --latent-dim, --k."),
    from_removed_loss: Path = typer.Option(None, help="Put the dims where this PDAE run's code removes loss (no "
                                           "labels needed; measured on the run's data, or --data); needs "
                                           "--latent-dim, --k. A JSON written by --out is read as it is."),
    data: Path = typer.Option(None, help="With --from-removed-loss RUN: the images to measure on [the run's data]."),
    floor: int = typer.Option(1, help="With --from-attribute-loss / --from-removed-loss: dims every chunk keeps."),
    out: Path = typer.Option(None, help="With --from-removed-loss: write the measured curve and partition here (JSON)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"chunk_end_dims": [...], "chunk_of_t": [...]}.'),
):
    """Print the time-step partition of z as a table (chunk, t-range, dims).

    With --from-attribute-loss (the DM's crossings, needs labels) or --from-removed-loss (a PDAE run, no labels):
    every chunk becomes its own stage and keeps --floor dims, and the other dims go to the chunks in proportion
    to the factors lost in their t-range, or to the loss the PDAE code removes there (docs/method.md). Prints
    the --set overrides that train with it.
    """
    if from_attribute_loss is not None or from_removed_loss is not None:
        from ..training.partition_rule import attribute_loss_partition, removed_loss_partition

        flag = "--from-attribute-loss" if from_attribute_loss is not None else "--from-removed-loss"
        if from_attribute_loss is not None and from_removed_loss is not None:
            raise ValueError("give --from-attribute-loss or --from-removed-loss, not both")
        if stages is not None or set_ or any(v is not None for v in (config, run, preset)):
            raise ValueError(f"{flag} replaces --stages/--config/--run/--preset/--set; give it alone")
        if latent_dim is None or k is None:
            raise ValueError(f"{flag} needs --latent-dim and --k")
        if from_attribute_loss is not None:
            placed = attribute_loss_partition(from_attribute_loss, latent_dim, k, timesteps, floor)
        else:
            if data is not None and not from_removed_loss.is_dir():
                raise ValueError("--data goes with a run folder; a JSON curve is read as it is")
            placed = removed_loss_partition(from_removed_loss, latent_dim, k, floor, data, out)
        typer.echo(json.dumps(placed.to_json()) if as_json else placed.format_text())
        return
    from ..config import DiTiConfig, build_config
    from ..folders.layout import CONFIG

    if run is not None:
        config = Path(run) / CONFIG
    overrides = list(set_ or [])
    for key, value in (("latent_dim", latent_dim), ("k", k)):
        if value is not None:
            overrides.append(f"partition.{key}={value}")
    if timesteps is not None:
        overrides.append(f"diffusion.timesteps={timesteps}")
    if (stages is None) != (dims_per_stage is None):
        raise ValueError("--stages and --dims-per-stage go together")
    if stages is not None:
        overrides.append(f"partition.stages={int_list(stages, '--stages')}")
        overrides.append(f"partition.dims_per_stage={int_list(dims_per_stage, '--dims-per-stage')}")
    elif latent_dim is not None or k is not None:
        # flags without stages describe a balanced partition
        overrides += ["partition.stages=null", "partition.dims_per_stage=null"]
    cfg = build_config(DiTiConfig, preset, config, overrides)
    pcfg = cfg.partition
    if pcfg.trains_source:  # nothing to read yet: `diti train` trains the rule's source
        typer.echo(f"partition.rule={pcfg.rule} with partition.rule_source=auto (d={pcfg.latent_dim}, k={pcfg.k}): "
                   f"the dims are read when `diti train` starts, from a {pcfg.rule_source_steps}-step PDAE run it "
                   "trains first in RUN/rule-source; `diti partition --run RUN` prints them")
        return
    from ..training.partition_rule import resolve_partition_rule

    part = resolve_partition_rule(pcfg, cfg.diffusion.timesteps).build(cfg.diffusion.timesteps)
    typer.echo(json.dumps(part.to_json()) if as_json else part.format_table())

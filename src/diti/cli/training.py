"""``diti pretrain``, ``diti train`` and ``diti convert-dm``: the commands that make a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import ConfigFile, Overrides, Preset, Resume, RunOut, TrainData, TrainSteps


def pretrain(
    data: TrainData = None,
    *,
    out: RunOut,
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    steps: TrainSteps = None,
    resume: Resume = False,
):
    """Train a DDPM (diffusers UNet2DModel) to use as the frozen DM; writes RUN/dm/."""
    from ..config import PretrainConfig
    from ..training.jobs import job_config
    from ..training.jobs import pretrain as run_pretrain

    cfg = job_config(PretrainConfig, out, preset, config, set_ or [], resume, data=data, steps=steps)
    typer.echo(f"DM written to {run_pretrain(cfg, out, resume=resume)}")


def train(
    dm: Annotated[Path, typer.Option(help="Frozen DM: a diffusers UNet2DModel/pipeline folder or a pretrain run.")]
    = None,
    data: TrainData = None,
    *,
    out: RunOut,
    preset: Preset = None,
    config: ConfigFile = None,
    set_: Overrides = None,
    steps: TrainSteps = None,
    resume: Resume = False,
):
    """Train DiTi's encoder and shift decoder on a frozen DM (partition.k=1 is PDAE)."""
    from ..config import DiTiConfig
    from ..training.jobs import job_config, train_diti

    cfg = job_config(DiTiConfig, out, preset, config, set_ or [], resume, data=data, steps=steps, dm=dm)
    typer.echo(f"run written to {train_diti(cfg, out, resume=resume)}")


def convert_dm(
    checkpoint: Annotated[Path, typer.Argument(help="PDAE/DiTi pre-trained-dpms/<name>/checkpoint.pt.")],
    out: Annotated[Path, typer.Option(help="diffusers UNet2DModel folder to write.")],
    config: Annotated[Path, typer.Option(help="Its config.yml (default: the one beside the checkpoint).")] = None,
    drop_learned_sigma: Annotated[bool, typer.Option(help="Keep only the eps channels of a learn_sigma model.")]
    = False,
):
    """Convert an official guided-diffusion-style DM checkpoint into a diffusers folder diti can freeze."""
    from ..models.convert import convert_guided_dm

    typer.echo(f"wrote {convert_guided_dm(checkpoint, config, out, drop_learned_sigma=drop_learned_sigma)}")

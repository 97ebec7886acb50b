"""What every command shares: the one error handler, the options used by several commands, argument parsing.

A command raises; ``DitiGroup`` turns a user error (bad input, or a failure whose message explains it fully)
into one red line and exit code 2, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ..errors import CheckpointSaveError, TrainingDiverged

# Errors that end a command with one line (exit 2) instead of a traceback: bad input (a bad config value is a
# ``ConfigError``, which is a ValueError), or a failure the message fully explains (diverged loss, checkpoint
# that could not be written). Nothing heavier than typer is imported here: `diti --help` and every command's
# help load no torch, diffusers, scikit-learn or gradio (each command imports them when it runs).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, TrainingDiverged, CheckpointSaveError)


def fail(err: Exception) -> None:
    """Print a user error on one line and exit 2 (no traceback for bad input)."""
    typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


class DitiGroup(TyperGroup):
    """The command group of ``diti`` (and its sub-groups): every command runs inside the one error handler."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            fail(err)


def int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


def floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


# ------------------------------------------------------------------------------------------------------
# Options of several commands, defined once
SET_HELP = "Override a config value, e.g. --set train.lr=3e-4 (repeatable; values are YAML)."
RUN_HELP = "A `diti train` run folder, or a folder written by `diti export`."
DM_HELP = "The frozen DM's folder, when it is not where the run says (e.g. a downloaded diffusers folder)."
CLIP_HELP = ("Clip the predicted x0 to [-1, 1] at every DDIM decoding step, as the official samplers do (never in "
             "the inversion).")

# the training jobs (pretrain, train)
TrainData = Annotated[Path, typer.Option(help="Training data folder (overrides data.path).")]
RunOut = Annotated[Path, typer.Option(help="Run folder to write.")]
Preset = Annotated[str, typer.Option(help="Named preset, e.g. shapes-demo.")]
ConfigFile = Annotated[Path, typer.Option(help="YAML config file.")]
Overrides = Annotated[list[str], typer.Option("--set", "-s", help=SET_HELP)]
TrainSteps = Annotated[int, typer.Option(help="Optimizer steps (overrides train.steps).")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out from its latest checkpoint.")]

# the commands on a trained model
ModelFolder = Annotated[Path, typer.Argument(help=RUN_HELP)]
DmFolder = Annotated[Path, typer.Option(help=DM_HELP)]
Device = Annotated[str, typer.Option(help="cpu, cuda, ...")]
ClipX0 = Annotated[bool, typer.Option("--clip-x0/--no-clip-x0", help=CLIP_HELP)]

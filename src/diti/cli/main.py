"""The ``diti`` command line. Each command parses its arguments and calls the library; no logic lives here."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..config import DiTiConfig, PretrainConfig, build_config
from ..config.loader import ConfigError
from ..errors import CheckpointSaveError, TrainingDiverged

app = typer.Typer(
    help="DiTi and PDAE: disentangled representations from the time-steps of a frozen diffusion model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SET_HELP = "Override a config value, e.g. --set train.lr=3e-4 (repeatable; values are YAML)."


def _fail(err: Exception) -> None:
    """Print a user error on one line and exit 2 (no traceback for bad input)."""
    typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


# Errors that end a command with one line (exit 2) instead of a traceback: bad input, or a failure the
# message fully explains (diverged loss, checkpoint that could not be written).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, ConfigError, TrainingDiverged, CheckpointSaveError)


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


# ------------------------------------------------------------------------------------------------------
@data_app.command("shapes")
def data_shapes(
    out: Path = typer.Option(..., help="Output folder."),
    resolution: int = typer.Option(32, help="Image size in pixels."),
    n_train: int = typer.Option(10000, help="Training images."),
    n_test: int = typer.Option(2000, help="Test images."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
):
    """Generate the embedded shapes data set (7 known factors, coarse to fine)."""
    from ..data import generate_shapes

    try:
        path = generate_shapes(out, resolution=resolution, n_train=n_train, n_test=n_test, seed=seed)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@app.command()
def pretrain(
    data: Path = typer.Option(None, help="Training data folder (overrides data.path)."),
    out: Path = typer.Option(..., help="Run folder to write."),
    preset: str = typer.Option(None, help="Named preset, e.g. shapes-demo."),
    config: Path = typer.Option(None, help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    steps: int = typer.Option(None, help="Optimizer steps (overrides train.steps)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
):
    """Train a DDPM (diffusers UNet2DModel) to use as the frozen DM; writes RUN/dm/."""
    from ..training.jobs import pretrain as run_pretrain

    try:
        cfg = _job_config(PretrainConfig, out, preset, config, set_, resume, data=data, steps=steps)
        path = run_pretrain(cfg, out, resume=resume)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"DM written to {path}")


@app.command()
def train(
    dm: Path = typer.Option(None, help="Frozen DM: a diffusers UNet2DModel/pipeline folder or a pretrain run."),
    data: Path = typer.Option(None, help="Training data folder (overrides data.path)."),
    out: Path = typer.Option(..., help="Run folder to write."),
    preset: str = typer.Option(None, help="Named preset, e.g. shapes-demo."),
    config: Path = typer.Option(None, help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", "-s", help=SET_HELP),
    steps: int = typer.Option(None, help="Optimizer steps (overrides train.steps)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
):
    """Train DiTi's encoder and shift decoder on a frozen DM (partition.k=1 is PDAE)."""
    from ..training.jobs import train_diti

    try:
        cfg = _job_config(DiTiConfig, out, preset, config, set_, resume, data=data, steps=steps, dm=dm)
        run = train_diti(cfg, out, resume=resume)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"run written to {run}")


def _job_config(cls, out, preset, config, overrides, resume, data=None, steps=None, dm=None):
    """Defaults < preset < file < --set < explicit flags; on --resume the run's saved config is the base."""
    from ..config.loader import read_yaml

    extra = list(overrides)
    if data is not None:
        extra.append(f"data.path={json.dumps(str(data))}")
    if steps is not None:
        extra.append(f"train.steps={steps}")
    if dm is not None:
        extra.append(f"dm={json.dumps(str(dm))}")
    saved = Path(out) / "config.yaml"
    base = read_yaml(saved) if resume and saved.is_file() and preset is None and config is None else None
    return build_config(cls, preset, config, extra, base=base)


@app.command()
def encode(
    run: Path = typer.Argument(..., help="A `diti train` run folder."),
    data: Path = typer.Option(..., help="Data folder to encode."),
    out: Path = typer.Option(..., help="Output file: .npy (+ .attributes.csv) or .safetensors."),
    split: str = typer.Option("test", help="Which split of the data to encode."),
    batch_size: int = typer.Option(256, help="Images per batch."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    raw: bool = typer.Option(False, help="Use the raw weights instead of the EMA weights."),
):
    """Features z of a data set with the run's (EMA) encoder."""
    from ..evaluation.features import encode_dataset, save_features
    from ..training.jobs import load_diti_run

    try:
        model, cfg = load_diti_run(run, device=device, ema=not raw)
        dataset = cfg.data.open(split, data)
        features = encode_dataset(model.encoder, dataset, batch_size=batch_size, device=device)
        written = save_features(out, features, dataset.attributes)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"encoded {len(features)} images to {features.shape[1]} dims: " + ", ".join(map(str, written)))


@app.command()
def probe(
    run: Path = typer.Argument(None, help="A `diti train` run folder (encode --data with its EMA encoder)."),
    data: Path = typer.Option(None, help="Data folder with an attribute table (with RUN)."),
    features: Path = typer.Option(None, help="Saved train features (.npy/.safetensors) instead of RUN + --data."),
    test_features: Path = typer.Option(None, help="Saved test features (with --features)."),
    valid_features: Path = typer.Option(None, help="Saved validation features (optional)."),
    train_split: str = typer.Option("train", help="Split to fit the probe on."),
    test_split: str = typer.Option("test", help="Split to report."),
    valid_split: str = typer.Option(None, help="Split to choose the epoch on (default: 10% held out of train)."),
    task: str = typer.Option("auto", help="auto, multiclass, binary or regression."),
    columns: str = typer.Option(None, help="Comma-separated attribute names to probe (default: all)."),
    epochs: int = typer.Option(15, help="Epochs (official: 15)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (official: 1e-3)."),
    batch_size: int = typer.Option(128, help="Batch size (official: 128 CelebA, 64 LFW)."),
    hflip: bool = typer.Option(False, help="Flip augmentation of the training images (official for CelebA)."),
    seed: int = typer.Option(0, help="Seed of the probe and the validation hold-out."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    out: Path = typer.Option(None, help="JSON output (default RUN/eval/probe.json)."),
):
    """Linear probes on frozen features: per-attribute AP/accuracy or Pearson r/MSE, JSON + table."""
    from ..evaluation.features import load_features
    from ..evaluation.runs import probe_features, probe_run

    kwargs = dict(task=task, columns=columns.split(",") if columns else None, epochs=epochs, lr=lr,
                  batch_size=batch_size, seed=seed)
    try:
        if run is not None:
            if data is None:
                raise ValueError("--data is required with a run folder")
            result = probe_run(run, data, train_split, test_split, valid_split, device=device, hflip=hflip, **kwargs)
        else:
            if features is None or test_features is None:
                raise ValueError("give a RUN folder with --data, or --features and --test-features")
            valid = load_features(valid_features) if valid_features else None
            result = probe_features(load_features(features), load_features(test_features), valid, device=device,
                                    **kwargs)
        if out is not None or run is None:
            if out is None:
                raise ValueError("--out is required with --features")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result.to_dict(), indent=2))
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(result.format_table())


@app.command()
def partition(
    latent_dim: int = typer.Option(None, help="d, the code size."),
    k: int = typer.Option(None, help="Number of chunks (1 = PDAE)."),
    timesteps: int = typer.Option(None, help="T."),
    stages: str = typer.Option(None, help="Stage ends, e.g. 50,100,300,500,1000 (omit for balanced)."),
    dims_per_stage: str = typer.Option(None, help="Dims per stage, e.g. 10,25,327,100,50."),
    config: Path = typer.Option(None, help="Read the partition from a YAML config."),
    run: Path = typer.Option(None, help="Read the partition from a run folder's config."),
    preset: str = typer.Option(None, help="Read the partition from a preset."),
    as_json: bool = typer.Option(False, "--json", help='Print {"chunk_end_dims": [...], "chunk_of_t": [...]}.'),
):
    """Print the time-step partition of z as a table (chunk, t-range, dims)."""
    try:
        if run is not None:
            config = Path(run) / "config.yaml"
        overrides = []
        for key, value in (("latent_dim", latent_dim), ("k", k)):
            if value is not None:
                overrides.append(f"partition.{key}={value}")
        if timesteps is not None:
            overrides.append(f"diffusion.timesteps={timesteps}")
        if (stages is None) != (dims_per_stage is None):
            raise ValueError("--stages and --dims-per-stage go together")
        if stages is not None:
            overrides.append(f"partition.stages={_int_list(stages, '--stages')}")
            overrides.append(f"partition.dims_per_stage={_int_list(dims_per_stage, '--dims-per-stage')}")
        elif latent_dim is not None or k is not None:
            # flags without stages describe a balanced partition
            overrides += ["partition.stages=null", "partition.dims_per_stage=null"]
        cfg = build_config(DiTiConfig, preset, config, overrides)
        part = cfg.partition.build(cfg.diffusion.timesteps)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(json.dumps(part.to_json()) if as_json else part.format_table())


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Demo folder."),
    data_seed: int = typer.Option(0, help="Seed of the shapes data."),
):
    """The end-to-end demo on the embedded shapes data: DiTi vs PDAE, probes, summary."""
    from .demo import run_demo

    try:
        summary = run_demo(out, data_seed=data_seed)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"summary: {summary}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

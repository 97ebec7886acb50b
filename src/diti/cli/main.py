"""The ``diti`` command line. Each command parses its arguments and calls the library; no logic lives here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
data_app = typer.Typer(help="Make, describe and check data sets.", no_args_is_help=True)
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
    version: int = typer.Option(1, "--version", help="Factor design: 1 (demo, 7 factors lost at t 400-700) or 2 "
                                "(benchmark, 8 factors lost across t 100-670 at 16 px)."),
):
    """Generate the embedded shapes data set (known factors, coarse to fine)."""
    from ..data import generate_shapes

    try:
        path = generate_shapes(out, resolution=resolution, n_train=n_train, n_test=n_test, seed=seed,
                               version=version)
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


RUN_HELP = "A `diti train` run folder, or a folder written by `diti export`."
DM_HELP = "The frozen DM's folder, when it is not where the run says (e.g. a downloaded diffusers folder)."


def _pipeline(run: Path, device: str = "cpu", ema: bool = True, dm: Path | None = None):
    """The API object for a run or exported folder (``diti.api.DiTiPipeline``)."""
    from ..api import DiTiPipeline

    return DiTiPipeline.from_pretrained(run, device=device, dm=dm, ema=ema)


@app.command()
def encode(
    run: Path = typer.Argument(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="Data folder to encode."),
    out: Path = typer.Option(..., help="Output file: .npy (+ .attributes.csv) or .safetensors."),
    split: str = typer.Option("test", help="Which split of the data to encode."),
    batch_size: int = typer.Option(256, help="Images per batch."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    raw: bool = typer.Option(False, help="Use the raw weights instead of the EMA weights."),
    dm: Path = typer.Option(None, help=DM_HELP),
):
    """Features z of a data set with the run's (EMA) encoder."""
    from ..evaluation.features import save_features

    try:
        pipe = _pipeline(run, device, ema=not raw, dm=dm)
        dataset = pipe.dataset(data, split)
        features = pipe.encode_dataset(dataset, batch_size=batch_size, progress=True)
        written = save_features(out, features, dataset.attributes)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"encoded {len(features)} images to {features.shape[1]} dims: " + ", ".join(map(str, written)))


PROBE_DEFAULTS = {"task": "auto", "epochs": None, "steps": None, "lr": 1e-3, "batch_size": 128, "hflip": False,
                  "valid_split": None, "test_split": "test"}


@app.command()
def probe(
    run: Path = typer.Argument(None, help="A `diti train` run folder (encode --data with its EMA encoder)."),
    data: Path = typer.Option(None, help="Data folder with an attribute table (with RUN)."),
    features: Path = typer.Option(None, help="Saved train features (.npy/.safetensors) instead of RUN + --data."),
    test_features: Path = typer.Option(None, help="Saved test features (with --features)."),
    valid_features: Path = typer.Option(None, help="Saved validation features (optional)."),
    preset: str = typer.Option(None, help="Official protocol: celeba (binary, flip, valid split) or lfw."),
    train_split: str = typer.Option("train", help="Split to fit the probe on."),
    test_split: str = typer.Option(None, help="Split to report [test]."),
    valid_split: str = typer.Option(None, help="Split to choose the epoch on [10% held out of train]."),
    task: str = typer.Option(None, help="auto, multiclass, binary or regression [auto]."),
    columns: str = typer.Option(None, help="Comma-separated attribute names to probe (default: all)."),
    epochs: int = typer.Option(None, help="Fixed epoch count (the official protocol: 15, as in --preset celeba/lfw)."),
    steps: int = typer.Option(None, help="Optimizer-step budget with early stopping on the validation split "
                              "[5000; the default unless --epochs or a preset is given]."),
    lr: float = typer.Option(None, help="Adam learning rate [1e-3, official]."),
    batch_size: int = typer.Option(None, help="Batch size [128; official: 128 CelebA, 64 LFW]."),
    hflip: bool = typer.Option(None, "--hflip/--no-hflip", help="Flip augmentation of the training images."),
    seed: int = typer.Option(0, help="Seed of the probe and the validation hold-out."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    out: Path = typer.Option(None, help="JSON output (default RUN/eval/probe.json)."),
):
    """Linear probes on frozen features: per-attribute AP/accuracy or Pearson r/MSE, JSON + table.

    Explicit options win over --preset, which wins over the built-in defaults (in brackets).
    """
    from ..config.presets import PROBE_PRESETS
    from ..config.presets import preset as get_preset
    from ..evaluation.features import load_features
    from ..evaluation.runs import probe_features, probe_run

    try:
        explicit = {"task": task, "epochs": epochs, "steps": steps, "lr": lr, "batch_size": batch_size,
                    "hflip": hflip, "valid_split": valid_split, "test_split": test_split}
        opts = {**PROBE_DEFAULTS, **get_preset(PROBE_PRESETS, preset),
                **{k: v for k, v in explicit.items() if v is not None}}
        if steps is not None and epochs is None:
            opts["epochs"] = None  # an explicit step budget replaces a preset's epoch count
        kwargs = dict(task=opts["task"], columns=columns.split(",") if columns else None, epochs=opts["epochs"],
                      steps=opts["steps"], lr=opts["lr"], batch_size=opts["batch_size"], seed=seed)
        if run is not None:
            if data is None:
                raise ValueError("--data is required with a run folder")
            result = probe_run(run, data, train_split, opts["test_split"], opts["valid_split"], device=device,
                               hflip=opts["hflip"], **kwargs)
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


@app.command(epilog=(
    "Cost, dominated by the GBT fits (measured on a 2-core AMD EPYC): 10,000 x 64 codes with 7 factors "
    "take 6.9 CPU-minutes with the reference protocol, 4 min 05 s wall with --jobs 2 on an idle machine "
    "(10 min 47 s beside two other jobs); the GBT cost grows about linearly with rows x dims x classes. "
    "--protocol fast fits on 2,000 rows."))
def disentangle(
    run: Path = typer.Argument(None, help="A `diti train` run folder (encoded with its EMA encoder)."),
    data: Path = typer.Option(None, help="Data with known categorical factors (with RUN), e.g. the shapes data."),
    features: Path = typer.Option(None, help="Saved train codes (`diti encode` .npy + attribute table) instead "
                                  "of RUN + --data."),
    test_features: Path = typer.Option(None, help="Saved test codes (with --features)."),
    partition: Path = typer.Option(None, help="With --features: the run folder or YAML config whose partition "
                                   "the codes follow [k = 1]."),
    reference: Path = typer.Option(None, help="A run (or config) whose chunks group the dims of the chunk-level "
                                   "metrics, e.g. the DiTi run a PDAE run is compared with."),
    out: Path = typer.Option(None, help="Output folder (default RUN/eval; required with --features)."),
    train_split: str = typer.Option("train", help="Split the GBT classifiers, MIG and FactorVAE use."),
    test_split: str = typer.Option("test", help="Split the GBT classifiers and probes are scored on."),
    protocol: str = typer.Option("reference", help="reference (disentanglement_lib's sample counts), fast, or "
                                 "peers (each chunk reduced to one dim by PCA first, as DisDiff, EncDiff and FDAE "
                                 "report)."),
    max_train: int = typer.Option(None, help="Override the protocol's GBT training rows (0 = all); the JSON "
                                  "then names the protocol 'custom'."),
    groups: int = typer.Option(5, help="Dim groups for the alignment when the partition has a single stage."),
    jobs: int = typer.Option(None, help="Processes for the per-factor GBT fits [one per factor, up to the CPUs]."),
    seed: int = typer.Option(0, help="Seed of the metrics."),
    device: str = typer.Option("cpu", help="Device of the encoder."),
):
    """DCI (per dim and per chunk/stage), MIG, FactorVAE score and partition-attribute alignment.

    Writes disentangle.json and alignment.png to RUN/eval (or --out).
    """
    from dataclasses import replace

    from ..evaluation.disentanglement import get_protocol
    from ..evaluation.runs import disentangle_run, disentangle_saved, format_disentangle

    try:
        proto = get_protocol(protocol)
        if max_train is not None:
            proto = replace(proto, name="custom", dci_max_train=max_train or None)
        kwargs = dict(protocol=proto, max_groups=groups, seed=seed, n_jobs=jobs, reference=reference)
        if run is not None:
            if data is None:
                raise ValueError("--data is required with a run folder")
            if features is not None or partition is not None:
                raise ValueError("give a RUN folder with --data, or --features (with --partition), not both")
            result = disentangle_run(run, data, train_split, test_split, device, **kwargs)
            if out is not None:
                from ..evaluation.runs import write_disentangle

                write_disentangle(result, out, run.name)
        else:
            if features is None or test_features is None:
                raise ValueError("give a RUN folder with --data, or --features and --test-features")
            if out is None:
                raise ValueError("--out is required with --features")
            result = disentangle_saved(features, test_features, out, partition=partition, **kwargs)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(format_disentangle(result))


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


@app.command()
def counterfactual(
    run: Path = typer.Argument(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="Data folder the images come from."),
    a: str = typer.Option(None, help="Image a: an index into --split or an image file (omit for random pairs)."),
    b: str = typer.Option(None, help="Image b, whose dims are swapped/interpolated into a."),
    split: str = typer.Option("test", help="Split for indices and random pairs."),
    chunks: str = typer.Option(None, help="Chunk indices to edit, e.g. 0,1 (default: one row per stage/group)."),
    stages: str = typer.Option(None, help="Stage indices to edit."),
    dims: str = typer.Option(None, help="Explicit dims to edit, e.g. 0,1,2."),
    alphas: str = typer.Option("0,0.25,0.5,0.75,1", help="Interpolation weights of b."),
    mode: str = typer.Option("interpolate", help="interpolate or swap."),
    x_t: str = typer.Option("keep", "--x-t", help="keep a's x_T, or slerp it towards b's."),
    pairs: int = typer.Option(4, help="Random pairs when --a/--b are not given."),
    steps: int = typer.Option(100, help="DDIM steps."),
    clip_x0: bool = typer.Option(False, "--clip-x0/--no-clip-x0",
                                 help="Clip the predicted x0 to [-1, 1] at every DDIM decoding step, as the official "
                                      "samplers do (never in the inversion)."),
    seed: int = typer.Option(0, help="Seed of the random pairs."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    dm: Path = typer.Option(None, help=DM_HELP),
    out: Path = typer.Option(None, help="PNG to write (default RUN/eval/counterfactual.png)."),
):
    """DDIM-invert images, swap or interpolate chosen chunks/stages/dims of z, decode: a labelled grid PNG."""
    from ..evaluation.counterfactual import DimGroup
    from ..evaluation.runs import eval_dir

    try:
        pipe = _pipeline(run, device, dm=dm)
        out = out or eval_dir(run) / "counterfactual.png"
        kw = dict(alphas=_floats(alphas, "--alphas"), mode=mode, x_T=x_t, num_steps=steps, progress=True,
                  clip_x0=clip_x0)
        groups = None
        if chunks or stages or dims:
            mask = pipe.select_dims(chunks=_int_list(chunks, "--chunks"), stages=_int_list(stages, "--stages"),
                                    dims=_int_list(dims, "--dims"))
            picked = np.flatnonzero(mask)
            label = f"chunks {chunks}" if chunks else f"stages {stages}" if stages else f"{len(picked)} dims"
            if len(picked) and picked[-1] - picked[0] + 1 == len(picked):
                groups = [DimGroup(label, (int(picked[0]), int(picked[-1]) + 1), None)]
            else:
                raise ValueError("the selected dims must be contiguous for the figure; pick one range")
        if a is None and b is None:
            path = pipe.standard_counterfactual_figure(pipe.dataset(data, split), out, num_pairs=pairs, seed=seed,
                                                       groups=groups, **kw)
        elif a is None or b is None:
            raise ValueError("give both --a and --b, or neither (random pairs)")
        else:
            x_a, x_b = (pipe.images([s], data, split) for s in (a, b))
            path = pipe.counterfactual_figure(x_a, x_b, out, groups=groups, **kw)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@app.command()
def reconstruct(
    run: Path = typer.Argument(..., help=RUN_HELP),
    data: Path = typer.Option(None, help="Data folder the indices of --images point into."),
    images: str = typer.Option("0,1,2,3", help="Images: indices into --split and/or image files, comma-separated."),
    split: str = typer.Option("test", help="Split of the indices."),
    steps: int = typer.Option(100, help="DDIM steps (inversion and decoding)."),
    clip_x0: bool = typer.Option(False, "--clip-x0/--no-clip-x0",
                                 help="Clip the predicted x0 to [-1, 1] at every DDIM decoding step, as the official "
                                      "samplers do (never in the inversion)."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    dm: Path = typer.Option(None, help=DM_HELP),
    out: Path = typer.Option(None, help="PNG to write (default RUN/eval/reconstruction.png)."),
):
    """DDIM inversion and decoding with each image's own code: real vs reconstructed, and the MSE per image."""
    from ..evaluation.runs import eval_dir

    try:
        pipe = _pipeline(run, device, dm=dm)
        x = pipe.images([s.strip() for s in images.split(",") if s.strip()], data, split)
        path, mse = pipe.reconstruction_figure(x, out or eval_dir(run) / "reconstruction.png", steps, progress=True,
                                               clip_x0=clip_x0)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"mean squared error on [-1, 1]: {np.mean(mse):.5f} ({', '.join(f'{m:.5f}' for m in mse)})\n"
               f"wrote {path}")


@app.command()
def manipulate(
    run: Path = typer.Argument(..., help=RUN_HELP),
    data: Path = typer.Option(..., help="Data folder with the attribute to edit."),
    attribute: str = typer.Option(..., help="Attribute (column) to edit."),
    target_class: int = typer.Option(None, help="For a multi-class attribute: the class to move towards."),
    d_prime: int = typer.Option(16, help="Dims in the ProbMask (paper: 16)."),
    strengths: str = typer.Option("-3,-1.5,0,1.5,3", help="Edit strengths (in std units of z)."),
    images: str = typer.Option("0,1,2,3", help="Indices of --split to edit."),
    split: str = typer.Option("test", help="Split of the edited images."),
    fit_split: str = typer.Option("train", help="Split the ProbMask classifier is fitted on."),
    steps: int = typer.Option(100, help="DDIM steps."),
    clip_x0: bool = typer.Option(False, "--clip-x0/--no-clip-x0",
                                 help="Clip the predicted x0 to [-1, 1] at every DDIM decoding step, as the official "
                                      "samplers do (never in the inversion)."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    dm: Path = typer.Option(None, help=DM_HELP),
    out: Path = typer.Option(None, help="PNG to write (default RUN/eval/manipulate-ATTRIBUTE.png)."),
):
    """ProbMask attribute edit with d' dims of z (as in the DiTi paper), decoded with DDIM: a grid PNG.

    The fitted direction is saved beside the PNG (JSON, with the checkpoint it belongs to)."""
    from ..evaluation.runs import eval_dir

    try:
        pipe = _pipeline(run, device, dm=dm)
        result = pipe.probmask(attribute, data, fit_split, target_class=target_class, d_prime=d_prime,
                               progress=True)
        x = pipe.images(images.split(","), data, split)
        out = out or eval_dir(run) / f"manipulate-{attribute}.png"
        path = pipe.manipulation_figure(x, result, out, strengths=_floats(strengths, "--strengths"), num_steps=steps,
                                        attribute=attribute, progress=True, clip_x0=clip_x0)
        pipe.save_probmask(result, Path(path).with_suffix(".json"), decoding={"ddim_steps": steps, "clip_x0": clip_x0})
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"ProbMask on {d_prime} dims {sorted(result.mask_dims.tolist())}: held-out accuracy "
               f"{result.accuracy:.3f}\nwrote {path}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="A `diti train` run folder."),
    out: Path = typer.Option(..., help="Folder to write (must not exist, or be empty)."),
    raw: bool = typer.Option(False, help="Export the raw weights instead of the EMA weights."),
    dm: Path = typer.Option(None, help=DM_HELP),
):
    """A self-contained model folder: frozen DM (diffusers), encoder and shift decoder (safetensors), resolved
    config and a model card (README.md) with the partition and the run's measured figures. `diti.load(DIR)`
    opens it anywhere."""
    try:
        pipe = _pipeline(run, "cpu", ema=not raw, dm=dm)
        path = pipe.save_pretrained(out)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"exported {pipe.describe()} to {path}")


@app.command()
def explore(
    run: Path = typer.Argument(..., help=RUN_HELP),
    data: Path = typer.Option(None, help="Data folder whose images can be picked (by index or from a gallery)."),
    split: str = typer.Option("test", help="Split of --data."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (127.0.0.1: this machine only)."),
    port: int = typer.Option(7860, help="Port to serve on."),
    steps: int = typer.Option(25, help="DDIM steps of every inversion and decoding."),
    clip_x0: bool = typer.Option(False, "--clip-x0/--no-clip-x0",
                                 help="Clip the predicted x0 to [-1, 1] at every DDIM decoding step, as the official "
                                      "samplers do (never in the inversion)."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    threads: int = typer.Option(None, help="torch CPU threads (default: torch's, one per core); 1 is much faster "
                                "when other jobs share the cores (benchmarks/RESULTS.md)."),
    dm: Path = typer.Option(None, help=DM_HELP),
):
    """The counterfactual explorer: a local web page to pick two images, swap or interpolate stages/chunks of
    their codes and see the result (needs gradio: the package's `app` extra, which `make setup` installs)."""
    try:
        from ..app.explorer import build_app, launch
    except ImportError as err:
        _fail(ValueError(f"the explorer needs gradio ({err}); install it with: pip install 'diti[app]'"))
    try:
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--threads must be >= 1, got {threads}")
            import torch

            torch.set_num_threads(threads)
        pipe = _pipeline(run, device, dm=dm)
        dataset = pipe.dataset(data, split) if data is not None else None
        demo = build_app(pipe, dataset, steps=steps, clip_x0=clip_x0)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"diti explore: {pipe.describe()} on http://{host}:{port} (Ctrl-C stops it)")
    try:
        launch(demo, host, port)
    except OSError as err:  # e.g. the port is taken
        _fail(ValueError(f"cannot serve on {host}:{port}: {err}"))


def load_run_or_fail(run: Path, device: str):
    from ..training.jobs import load_diti_run

    return load_diti_run(run, device=device)


@app.command()
def fidelity(
    run: Path = typer.Argument(..., help="A `diti train` run folder."),
    data: Path = typer.Option(..., help="Data with known factors (a diti-array folder such as the shapes data)."),
    pairs: int = typer.Option(256, help="Random (source, target) pairs."),
    steps: int = typer.Option(50, help="DDIM steps."),
    groups: int = typer.Option(4, help="Dim groups when the partition has a single stage."),
    classifier: Path = typer.Option(None, help="Factor classifier (.safetensors) to reuse; trained and saved if missing."),
    classifier_epochs: int = typer.Option(3, help="Epochs of a newly trained factor classifier."),
    seed: int = typer.Option(0, help="Seed of the pairs and the classifier."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    clip_x0: bool = typer.Option(False, "--clip-x0/--no-clip-x0",
                                 help="Clip the predicted x_0 to [-1, 1] at every decoding step."),
):
    """Counterfactual fidelity: swap each stage of z from a source into a target, decode, classify the factors."""
    from ..evaluation.fidelity import counterfactual_fidelity, plot_fidelity
    from ..evaluation.runs import eval_dir, factor_classifier

    try:
        model, cfg = load_run_or_fail(run, device)
        train_set, test_set = cfg.data.open("train", data), cfg.data.open("test", data)
        clf, info = factor_classifier(classifier or eval_dir(run) / "factor_classifier.safetensors", train_set,
                                      test_set, classifier_epochs, seed, device)
        result = counterfactual_fidelity(model, clf, test_set, num_pairs=pairs, num_steps=steps, seed=seed,
                                         max_groups=groups, clip_x0=clip_x0)
        out = eval_dir(run)
        data_out = {**result.to_dict(), "classifier": info}
        (out / "fidelity.json").write_text(json.dumps(data_out, indent=2))
        plot_fidelity(result, out / "fidelity.png", title=Path(run).name)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(result.format_table())


@app.command("attribute-loss")
def attribute_loss_cmd(
    dm: Path = typer.Option(..., help="Frozen DM folder (or a `diti train` run: its DM is used)."),
    data: Path = typer.Option(..., help="Data with known categorical factors."),
    split: str = typer.Option("train", help="Split the image pairs come from (a large one has more pairs)."),
    pairs: int = typer.Option(64, help="Pairs per factor that differ in exactly that factor."),
    noise: int = typer.Option(2, help="Noise draws per pair and time-step."),
    threshold: float = typer.Option(0.25, help="Err level that counts as 'attribute lost'."),
    seed: int = typer.Option(0, help="Seed of the pairs and the noise."),
    device: str = typer.Option("cpu", help="cpu, cuda, ..."),
    out: Path = typer.Option(..., help="Folder for attribute_loss.json and attribute_loss.png (e.g. RUN/eval)."),
):
    """The theory's Err(x0, y0, t) per factor against t for a frozen DM: which factors are lost first."""
    from ..config import DiffusionConfig
    from ..data import open_dataset
    from ..evaluation.attribute_loss import attribute_loss
    from ..evaluation.figures import plot_attribute_loss
    from ..models.dm import dm_resolution, load_dm
    from ..training.run import read_run_config

    try:
        diffusion = DiffusionConfig()
        if (dm / "meta.json").is_file() and (dm / "config.yaml").is_file() and not (dm / "dm").is_dir():
            run_cfg = read_run_config(dm, DiTiConfig)
            dm, diffusion = Path(run_cfg.dm), run_cfg.diffusion
        schedule = diffusion.build()
        unet = load_dm(dm, schedule).to(device)
        dataset = open_dataset(data, split, dm_resolution(unet))
        result = attribute_loss(unet, schedule, dataset, max_pairs=pairs, num_noise=noise, threshold=threshold,
                                seed=seed, device=device, progress=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "attribute_loss.json").write_text(json.dumps(result.to_dict(), indent=2))
        plot_attribute_loss(result.to_dict(), out / "attribute_loss.png")
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(result.format_table() if hasattr(result, "format_table") else json.dumps(result.to_dict()))


@app.command("convert-dm")
def convert_dm(
    checkpoint: Path = typer.Argument(..., help="PDAE/DiTi pre-trained-dpms/<name>/checkpoint.pt."),
    out: Path = typer.Option(..., help="diffusers UNet2DModel folder to write."),
    config: Path = typer.Option(None, help="Its config.yml (default: the one beside the checkpoint)."),
    drop_learned_sigma: bool = typer.Option(False, help="Keep only the eps channels of a learn_sigma model."),
):
    """Convert an official guided-diffusion-style DM checkpoint into a diffusers folder diti can freeze."""
    from ..models.convert import convert_guided_dm

    try:
        path = convert_guided_dm(checkpoint, config, out, drop_learned_sigma=drop_learned_sigma)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="One or more run folders (or folders of results JSON, e.g. "
                                      "`diti disentangle --features ... --out DIR`), shown side by side."),
    out: Path = typer.Option(None, help="HTML file to write (default RUN/report.html for one run)."),
    extra: list[Path] = typer.Option([], help="Extra folders of PNG/JSON/Markdown to include (an "
                                     "attribute_loss.json there joins the per-factor table)."),
    title: str = typer.Option(None, help="Page title."),
):
    """One self-contained HTML page (figures embedded, no script) that reads like a results section.

    Headline table: probe mean, DCI D/C/I per dim and D/C per chunk, MIG, FactorVAE, with their protocol.
    Then per-factor tables, each figure beside its table; each result's raw JSON in a collapsed block.
    A missing result names the command that makes it.
    """
    from ..evaluation.report import write_report

    try:
        if out is None:
            if len(runs) != 1:
                raise ValueError("--out is required with several runs")
            out = runs[0] / "report.html"
        path = write_report(runs, out, extra_dirs=extra, title=title)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(f"wrote {path}")


@data_app.command("check")
def data_check(
    path: Path = typer.Argument(..., help="Data set folder (any format diti reads)."),
    resolution: int = typer.Option(None, help="Training resolution: also list images smaller than it."),
    format: str = typer.Option(None, "--format", help="Data format (default: detected from the folder)."),
    attributes: Path = typer.Option(None, help="Attribute table replacing the data set's own."),
    workers: int = typer.Option(0, help="Worker processes decoding in parallel."),
    out: Path = typer.Option(None, help="Also write the findings as JSON here."),
):
    """Decode every image of every split once; list each unreadable or odd file (exit 1 if any is unreadable).

    Unreadable: cannot be decoded, or the crop box does not fit (training would stop on it; --set
    data.skip_unreadable=true skips such files with a warning). Odd but readable: converted to RGB
    (grayscale, alpha, 16-bit), upsampled (smaller than --resolution), extension not matching the bytes.
    """
    from ..data.check import check_dataset, write_report

    try:
        report = check_dataset(path, resolution, format, attributes, workers=workers)
        if out is not None:
            write_report(report, out)
    except USER_ERRORS as err:
        _fail(err)
    typer.echo(report.format_table())
    if report.unreadable:
        raise typer.Exit(1)


@data_app.command("formats")
def data_formats():
    """The folder layout each data format expects."""
    from ..data.formats import describe_formats

    for name, layout in describe_formats().items():
        typer.echo(f"[{name}]\n{layout}\n")


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
    try:
        conflicting = stages is not None or any(v is not None for v in (config, run, preset))
        if from_attribute_loss is not None or from_removed_loss is not None:
            _partition_from_rule(from_attribute_loss, from_removed_loss, data, out, latent_dim, k, timesteps, floor,
                                 as_json, conflicting)
            return
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


def _partition_from_rule(attribute_loss: Path | None, removed_loss: Path | None, data: Path | None, out: Path | None,
                         latent_dim, k, timesteps, floor: int, as_json: bool, conflicting: bool) -> None:
    from ..partition import partition_from_crossings, partition_from_removed_loss
    from ..training.partition_rule import crossings_of, removed_loss_curve

    flag = "--from-attribute-loss" if attribute_loss is not None else "--from-removed-loss"
    if attribute_loss is not None and removed_loss is not None:
        raise ValueError("give --from-attribute-loss or --from-removed-loss, not both")
    if conflicting:
        raise ValueError(f"{flag} replaces --stages/--config/--run/--preset; give it alone")
    if latent_dim is None or k is None:
        raise ValueError(f"{flag} needs --latent-dim and --k")
    T = timesteps or 1000
    if attribute_loss is not None:
        crossings = crossings_of(attribute_loss)
        part, groups = partition_from_crossings(crossings, latent_dim, k, T, floor)
        rule, source = "attribute_loss", attribute_loss
        labels = [", ".join(f"{n} ({crossings[n]:.0f})" for n in g) or "no factor lost" for g in groups]
        extra = {"chunk_factors": groups, "crossings": crossings}
    else:
        if removed_loss.is_dir():
            curve = removed_loss_curve(removed_loss, data)
        elif data is not None:
            raise ValueError("--data goes with a run folder; a JSON curve is read as it is")
        else:
            curve = json.loads(removed_loss.read_text()) if removed_loss.is_file() else None
            if not isinstance(curve, dict) or not isinstance(curve.get("removed_loss"), list):
                raise FileNotFoundError(f"{removed_loss} is neither a run folder nor a JSON with a removed_loss curve")
        part, weights = partition_from_removed_loss(curve["removed_loss"], latent_dim, k, floor)
        rule, source = "removed_loss", out if out is not None else removed_loss
        labels = [f"removed loss {w:.3g}" for w in weights]
        extra = {"chunk_weights": weights, "removed_loss": curve["removed_loss"]}
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**curve, "partition": {"stages": list(part.stages),
                                                              "dims_per_stage": list(part.dims_per_stage)}}))
    overrides = [f"partition.latent_dim={part.latent_dim}", f"partition.k={part.k}", f"partition.rule={rule}",
                 f"partition.rule_source={source}"] + ([f"partition.floor_dims={floor}"] if floor != 1 else [])
    if as_json:
        typer.echo(json.dumps({**part.to_json(), "stages": list(part.stages), "dims_per_stage":
                               list(part.dims_per_stage), "rule": rule, **extra}))
        return
    typer.echo(part.format_table())
    for i, label in enumerate(labels):
        lo, hi = part.chunk_t_ranges[i]
        typer.echo(f"chunk {i} (t {lo}-{hi}): {part.dims_per_stage[i]} dims; {label}")
    typer.echo("train with: " + " ".join(f"--set {o}" for o in overrides))


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Demo folder."),
    data_seed: int = typer.Option(0, help="Seed of the shapes data."),
):
    """The end-to-end demo on the embedded shapes data: DiTi vs PDAE, every evaluation, summary and report."""
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

"""The commands on a trained model (a run or an exported folder), through the Python API (``diti.api``):
``encode``, ``counterfactual``, ``reconstruct``, ``manipulate``, ``export``, ``explore``."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import ClipX0, Device, DmFolder, ModelFolder, floats, int_list


def _pipeline(run: Path, device: str = "cpu", ema: bool = True, dm: Path | None = None):
    """The API object for a run or exported folder (``diti.api.DiTiPipeline``)."""
    from ..api import DiTiPipeline

    return DiTiPipeline.from_pretrained(run, device=device, dm=dm, ema=ema)


def encode(
    run: ModelFolder,
    data: Path = typer.Option(..., help="Data folder to encode."),
    out: Path = typer.Option(..., help="Output file: .npy (+ .attributes.csv) or .safetensors."),
    split: str = typer.Option("test", help="Which split of the data to encode."),
    batch_size: int = typer.Option(256, help="Images per batch."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    raw: bool = typer.Option(False, help="Use the raw weights instead of the EMA weights."),
    dm: DmFolder = None,
):
    """Features z of a data set with the run's (EMA) encoder."""
    from ..evaluation.features import save_features

    pipe = _pipeline(run, device, ema=not raw, dm=dm)
    dataset = pipe.dataset(data, split)
    features = pipe.encode_dataset(dataset, batch_size=batch_size, progress=True)
    written = save_features(out, features, dataset.attributes)
    typer.echo(f"encoded {len(features)} images to {features.shape[1]} dims: " + ", ".join(map(str, written)))


def counterfactual(
    run: ModelFolder,
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
    clip_x0: ClipX0 = False,
    seed: int = typer.Option(0, help="Seed of the random pairs."),
    device: Device = "cpu",
    dm: DmFolder = None,
    out: Path = typer.Option(None, help="PNG to write (default RUN/eval/counterfactual.png)."),
):
    """DDIM-invert images, swap or interpolate chosen chunks/stages/dims of z, decode: a labelled grid PNG."""
    from ..folders import eval_dir
    from ..folders.layout import COUNTERFACTUAL_PNG

    pipe = _pipeline(run, device, dm=dm)
    out = out or eval_dir(run) / COUNTERFACTUAL_PNG
    kw = dict(alphas=floats(alphas, "--alphas"), mode=mode, x_T=x_t, num_steps=steps, progress=True,
              clip_x0=clip_x0)
    groups = None
    if chunks or stages or dims:
        label = f"chunks {chunks}" if chunks else f"stages {stages}" if stages else None
        groups = [pipe.selection_group(chunks=int_list(chunks, "--chunks"), stages=int_list(stages, "--stages"),
                                       dims=int_list(dims, "--dims"), label=label)]
    if a is None and b is None:
        path = pipe.standard_counterfactual_figure(pipe.dataset(data, split), out, num_pairs=pairs, seed=seed,
                                                   groups=groups, **kw)
    elif a is None or b is None:
        raise ValueError("give both --a and --b, or neither (random pairs)")
    else:
        x_a, x_b = (pipe.images([s], data, split) for s in (a, b))
        path = pipe.counterfactual_figure(x_a, x_b, out, groups=groups, **kw)
    typer.echo(f"wrote {path}")


def reconstruct(
    run: ModelFolder,
    data: Path = typer.Option(None, help="Data folder the indices of --images point into."),
    images: str = typer.Option("0,1,2,3", help="Images: indices into --split and/or image files, comma-separated."),
    split: str = typer.Option("test", help="Split of the indices."),
    steps: int = typer.Option(100, help="DDIM steps (inversion and decoding)."),
    clip_x0: ClipX0 = False,
    device: Device = "cpu",
    dm: DmFolder = None,
    out: Path = typer.Option(None, help="PNG to write (default RUN/eval/reconstruction.png)."),
):
    """DDIM inversion and decoding with each image's own code: real vs reconstructed, and the MSE per image."""
    import numpy as np

    from ..folders import eval_dir
    from ..folders.layout import RECONSTRUCTION_PNG

    pipe = _pipeline(run, device, dm=dm)
    x = pipe.images([s.strip() for s in images.split(",") if s.strip()], data, split)
    path, mse = pipe.reconstruction_figure(x, out or eval_dir(run) / RECONSTRUCTION_PNG, steps, progress=True,
                                           clip_x0=clip_x0)
    typer.echo(f"mean squared error on [-1, 1]: {np.mean(mse):.5f} ({', '.join(f'{m:.5f}' for m in mse)})\n"
               f"wrote {path}")


def manipulate(
    run: ModelFolder,
    data: Path = typer.Option(..., help="Data folder with the attribute to edit."),
    attribute: str = typer.Option(..., help="Attribute (column) to edit."),
    target_class: int = typer.Option(None, help="For a multi-class attribute: the class to move towards."),
    d_prime: int = typer.Option(16, help="Dims in the ProbMask (paper: 16)."),
    strengths: str = typer.Option("-3,-1.5,0,1.5,3", help="Edit strengths (in std units of z)."),
    images: str = typer.Option("0,1,2,3", help="Indices of --split to edit."),
    split: str = typer.Option("test", help="Split of the edited images."),
    fit_split: str = typer.Option("train", help="Split the ProbMask classifier is fitted on."),
    steps: int = typer.Option(100, help="DDIM steps."),
    clip_x0: ClipX0 = False,
    device: Device = "cpu",
    dm: DmFolder = None,
    out: Path = typer.Option(None, help="PNG to write (default RUN/eval/manipulate-ATTRIBUTE.png)."),
):
    """ProbMask attribute edit with d' dims of z (as in the DiTi paper), decoded with DDIM: a grid PNG.

    The fitted direction is saved beside the PNG (JSON, with the checkpoint it belongs to)."""
    from ..folders import eval_dir
    from ..folders.layout import manipulate_file

    pipe = _pipeline(run, device, dm=dm)
    result = pipe.probmask(attribute, data, fit_split, target_class=target_class, d_prime=d_prime, progress=True)
    x = pipe.images(images.split(","), data, split)
    out = out or eval_dir(run) / manipulate_file(attribute, ".png")
    path = pipe.manipulation_figure(x, result, out, strengths=floats(strengths, "--strengths"), num_steps=steps,
                                    attribute=attribute, progress=True, clip_x0=clip_x0)
    pipe.save_probmask(result, Path(path).with_suffix(".json"), decoding={"ddim_steps": steps, "clip_x0": clip_x0})
    typer.echo(f"ProbMask on {d_prime} dims {sorted(result.mask_dims.tolist())}: held-out accuracy "
               f"{result.accuracy:.3f}\nwrote {path}")


def export(
    run: Path = typer.Argument(..., help="A `diti train` run folder."),
    out: Path = typer.Option(..., help="Folder to write (must not exist, or be empty)."),
    raw: bool = typer.Option(False, help="Export the raw weights instead of the EMA weights."),
    dm: DmFolder = None,
):
    """A self-contained model folder: frozen DM (diffusers), encoder and shift decoder (safetensors), resolved
    config and a model card (README.md) with the partition and the run's measured figures. `diti.load(DIR)`
    opens it anywhere."""
    pipe = _pipeline(run, "cpu", ema=not raw, dm=dm)
    path = pipe.save_pretrained(out)
    typer.echo(f"exported {pipe.describe()} to {path}")


def explore(
    run: ModelFolder,
    data: Path = typer.Option(None, help="Data folder whose images can be picked (by index or from a gallery)."),
    split: str = typer.Option("test", help="Split of --data."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (127.0.0.1: this machine only)."),
    port: int = typer.Option(7860, help="Port to serve on."),
    steps: int = typer.Option(25, help="DDIM steps of every inversion and decoding."),
    clip_x0: ClipX0 = False,
    device: Device = "cpu",
    threads: int = typer.Option(None, help="torch CPU threads (default: torch's, one per core); 1 is much faster "
                                "when other jobs share the cores (benchmarks/RESULTS.md)."),
    dm: DmFolder = None,
):
    """The counterfactual explorer: a local web page to pick two images, swap or interpolate stages/chunks of
    their codes and see the result (needs gradio: the package's `app` extra, which `make setup` installs)."""
    try:
        from ..app.explorer import build_app, check_port, launch, private_files
    except ImportError as err:
        raise ValueError(f"the explorer needs gradio ({err}); install it with: pip install 'diti[app]'") from None
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
    check_port(host, port)  # before the model loads and the banner says where it serves
    pipe = _pipeline(run, device, dm=dm)
    dataset = pipe.dataset(data, split) if data is not None else None
    with private_files() as files:
        demo = build_app(pipe, dataset, steps=steps, clip_x0=clip_x0)
        typer.echo(f"diti explore: {pipe.describe()} on http://{host}:{port} (Ctrl-C stops it; uploads and "
                   f"outputs are kept in {files} until then)")
        try:
            launch(demo, host, port)
        except OSError as err:  # e.g. the port is taken
            raise ValueError(f"cannot serve on {host}:{port}: {err}") from None
    typer.echo("diti explore: stopped; its uploads and outputs are removed")

"""``diti data ...``: make, describe and check data sets."""

from __future__ import annotations

from pathlib import Path

import typer


def shapes(
    out: Path = typer.Option(..., help="Output folder."),
    resolution: int = typer.Option(32, help="Image size in pixels."),
    n_train: int = typer.Option(10000, help="Training images."),
    n_test: int = typer.Option(2000, help="Test images."),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)."),
    version: int = typer.Option(1, "--version", help="Factor design: 1 (the presets shapes-demo and shapes-bench: 7 factors, "
                                "all lost at t 400-700) or 2 "
                                "(the demo's and the benchmark's, at 16 px: 8 factors lost one after another "
                                "across the time axis; the t at which the shipped DM loses each is in its card, "
                                "src/diti/assets/dm-shapes2-16/README.md)."),
):
    """Generate the embedded shapes data set (known factors, coarse to fine)."""
    from ..data import generate_shapes

    path = generate_shapes(out, resolution=resolution, n_train=n_train, n_test=n_test, seed=seed, version=version)
    typer.echo(f"wrote {path}")


def check(
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

    report = check_dataset(path, resolution, format, attributes, workers=workers)
    if out is not None:
        write_report(report, out)
    typer.echo(report.format_table())
    if report.unreadable:
        raise typer.Exit(1)


def formats():
    """The folder layout each data format expects."""
    from ..data.formats import describe_formats

    for name, layout in describe_formats().items():
        typer.echo(f"[{name}]\n{layout}\n")

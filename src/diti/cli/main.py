"""The ``diti`` command line: the command groups and the order ``diti --help`` lists them in.

Each command (cli/data.py, cli/training.py, cli/model.py, cli/evaluation.py, cli/partition.py) parses its
arguments, calls the library and prints; errors go through the one handler of ``cli/common.py``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from . import data, evaluation, model, partition, training
from .common import DitiGroup

app = typer.Typer(
    help="DiTi and PDAE: disentangled representations from the time-steps of a frozen diffusion model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=DitiGroup,
)
data_app = typer.Typer(help="Make, describe and check data sets.", no_args_is_help=True, cls=DitiGroup)
app.add_typer(data_app, name="data")
data_app.command("shapes")(data.shapes)
data_app.command("check")(data.check)
data_app.command("formats")(data.formats)

app.command()(training.pretrain)
app.command()(training.train)
app.command()(model.encode)
app.command()(evaluation.probe)
app.command(epilog=evaluation.DISENTANGLE_EPILOG)(evaluation.disentangle)
app.command()(model.counterfactual)
app.command()(model.reconstruct)
app.command()(model.manipulate)
app.command()(model.export)
app.command()(model.explore)
app.command()(evaluation.fidelity)
app.command("attribute-loss")(evaluation.attribute_loss)
app.command("convert-dm")(training.convert_dm)
app.command()(evaluation.report)
app.command()(partition.partition)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Demo folder."),
    data_seed: int = typer.Option(0, help="Seed of the shapes data."),
):
    """The end-to-end demo on the embedded shapes data: DiTi vs PDAE, every evaluation, summary and report."""
    from ..demo import run_demo

    typer.echo(f"summary: {run_demo(out, data_seed=data_seed)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

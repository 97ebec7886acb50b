"""The evaluation commands: ``probe``, ``disentangle``, ``fidelity``, ``attribute-loss`` and ``report``."""

from __future__ import annotations

from pathlib import Path

import typer

DISENTANGLE_EPILOG = (
    "Cost, dominated by the GBT fits (measured on a 2-core AMD EPYC): 10,000 x 64 codes with 7 factors "
    "take 6.9 CPU-minutes with the reference protocol, 4 min 05 s wall with --jobs 2 on an idle machine "
    "(10 min 47 s beside two other jobs); the GBT cost grows about linearly with rows x dims x classes. "
    "--protocol fast fits on 2,000 rows.")


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
    from ..config.presets import probe_settings
    from ..evaluation.runs import probe_run, probe_saved

    opts = probe_settings(preset, task=task, epochs=epochs, steps=steps, lr=lr, batch_size=batch_size, hflip=hflip,
                          valid_split=valid_split, test_split=test_split)
    kwargs = dict(task=opts["task"], columns=columns.split(",") if columns else None, epochs=opts["epochs"],
                  steps=opts["steps"], lr=opts["lr"], batch_size=opts["batch_size"], seed=seed, device=device)
    if run is not None:
        if data is None:
            raise ValueError("--data is required with a run folder")
        result = probe_run(run, data, train_split, opts["test_split"], opts["valid_split"], hflip=opts["hflip"],
                           out=out, **kwargs)
    else:
        if features is None or test_features is None:
            raise ValueError("give a RUN folder with --data, or --features and --test-features")
        if out is None:
            raise ValueError("--out is required with --features")
        result = probe_saved(features, test_features, out, valid_features, **kwargs)
    typer.echo(result.format_table())


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
    from ..evaluation.disentanglement import get_protocol
    from ..evaluation.runs import disentangle_run, disentangle_saved, format_disentangle

    kwargs = dict(protocol=get_protocol(protocol, max_train), max_groups=groups, seed=seed, n_jobs=jobs,
                  reference=reference)
    if run is not None:
        if data is None:
            raise ValueError("--data is required with a run folder")
        if features is not None or partition is not None:
            raise ValueError("give a RUN folder with --data, or --features (with --partition), not both")
        result = disentangle_run(run, data, train_split, test_split, device, out=out, **kwargs)
    else:
        if features is None or test_features is None:
            raise ValueError("give a RUN folder with --data, or --features and --test-features")
        if out is None:
            raise ValueError("--out is required with --features")
        result = disentangle_saved(features, test_features, out, partition=partition, **kwargs)
    typer.echo(format_disentangle(result))


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
    from ..evaluation.runs import fidelity_run

    result = fidelity_run(run, data, num_pairs=pairs, num_steps=steps, max_groups=groups, classifier=classifier,
                          classifier_epochs=classifier_epochs, seed=seed, device=device, clip_x0=clip_x0)
    typer.echo(result.format_table())


def attribute_loss(
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
    from ..evaluation.runs import attribute_loss_run

    result = attribute_loss_run(dm, data, out, split=split, max_pairs=pairs, num_noise=noise, threshold=threshold,
                                seed=seed, device=device)
    typer.echo(result.format_table())


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

    if out is None:
        if len(runs) != 1:
            raise ValueError("--out is required with several runs")
        out = runs[0] / "report.html"
    typer.echo(f"wrote {write_report(runs, out, extra_dirs=extra, title=title)}")

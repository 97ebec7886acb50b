"""The demo behind ``diti demo``: the whole pipeline on the embedded shapes data, DiTi vs PDAE with the same budget.

The full demo runs the converged benchmark's setting (benchmarks/curves.py: shapes version 2 at 16 px, whose
factors the shipped DM dm-shapes2-16 loses across the whole time axis; d = 32, k = 8, stop_grad) at a
shorter budget, 1,200 steps of batch 64 (77k images) per model, so that it fits 25 minutes on 2 CPU cores.

Stages: data -> frozen DM (the one shipped in diti/assets, else `diti pretrain`) -> train DiTi -> train PDAE
-> encode + linear probe of every factor -> DCI / MIG / FactorVAE and the partition-attribute alignment ->
counterfactual grids -> counterfactual fidelity -> the DM's attribute-loss curves -> summary.md/.json and
report.html. Every stage prints its elapsed time; the summary reports what was measured, whatever it is.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import typer

from .config import DiTiConfig, PretrainConfig, build_config
from .config.presets import GIVEN_PARTITION
from .data import generate_shapes
from .evaluation.attribute_loss import attribute_loss
from .evaluation.counterfactual import standard_counterfactual_figure
from .evaluation.fidelity import counterfactual_fidelity, plot_fidelity
from .evaluation.figures import plot_attribute_loss
from .evaluation.report import write_report
from .evaluation.runs import (
    disentangle_features,
    factor_classifier,
    probe_features,
    run_features,
    write_disentangle,
)
from .folders import eval_dir, load_diti_run
from .folders.layout import CONFIG, COUNTERFACTUAL_PNG, METRICS
from .models.dm import load_dm, shipped_dm
from .training.jobs import pretrain, train_diti
from .training.partition_rule import RULE_SOURCE, RULE_SOURCE_CURVE, RULE_SOURCE_RUN

# DiTi on the preset's partition (shapes2-bench: the removed-loss rule, from a 500-step PDAE run it trains first);
# PDAE (k = 1) has no partition to set
METHODS = {"DiTi": [], "PDAE": ["partition.k=1", *GIVEN_PARTITION]}


class StageTimer:
    """Times named stages and prints each one's elapsed seconds."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        typer.secho(f"== {name}", bold=True)
        start = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - start
        typer.echo(f"   {name}: {self.times[name]:.1f} s")


# Sizes of each stage: the full demo (16 px shapes version 2 on dm-shapes2-16, the benchmark's models at 1,200
# steps; 25 minutes on 2 CPU cores) and the quick one the tests run. protocol: docs/evaluation.md.
SETTINGS = {
    "full": dict(preset="shapes2-bench", steps=1200, resolution=16, version=2, dm="dm-shapes2-16", n_train=10000,
                 n_test=2000, protocol="fast", pairs=4, cf_steps=50, fidelity_pairs=48, fidelity_steps=50,
                 classifier_epochs=2, al_pairs=16, progress=True),
    "quick": dict(preset="shapes-quick", steps=None, resolution=16, version=2, dm=None, n_train=256, n_test=128,
                  protocol="fast", pairs=2, cf_steps=5, fidelity_pairs=8, fidelity_steps=5, classifier_epochs=1,
                  al_pairs=4, progress=False),
}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


PROGRESS_EVERY = 30.0  # seconds between the progress lines of the two-process training


def _in_processes(jobs: list[tuple], processes: int, report=None, every: float = PROGRESS_EVERY) -> list:
    """Run ``(function, *args)`` jobs, in ``processes`` spawned processes of ``cores // processes`` torch threads
    each when ``processes`` > 1 (DiTi's and PDAE's training and evaluation are independent), else here.
    ``report``: called every ``every`` seconds while the processes run (their progress bars are off)."""
    if processes <= 1:
        return [fn(*args) for fn, *args in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    threads = max(1, _cores() // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in jobs]
        while report is not None and wait(futures, timeout=every)[1]:
            report()
        return [f.result() for f in futures]


def _last_step(run: Path) -> int:
    """The last logged step of the run in ``run`` (RUN/metrics.jsonl), 0 before its first log."""
    try:
        lines = (run / METRICS).read_text().splitlines()
    except FileNotFoundError:
        return 0
    return json.loads(lines[-1])["step"] if lines else 0


def training_progress(runs: dict[str, Path], configs: dict[str, DiTiConfig]) -> str:
    """One line of where each run's training stands, read from the run folders (the two-process demo's
    processes print nothing): its steps, or those of its partition rule's PDAE run while that one trains."""
    parts = []
    for method, run in runs.items():
        pcfg, steps = configs[method].partition, configs[method].train.steps
        source = run / RULE_SOURCE
        if pcfg.trains_source and not (source / RULE_SOURCE_CURVE).is_file():
            parts.append(f"{method} partition rule's PDAE run {_last_step(source / RULE_SOURCE_RUN)}/"
                         f"{pcfg.rule_source_steps}")
        else:
            parts.append(f"{method} {_last_step(run)}/{steps}")
    return "   steps: " + ", ".join(parts)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train(cfg: DiTiConfig, run: Path) -> Path:
    return train_diti(cfg, run, resume=(run / CONFIG).is_file())


def _disentangle(method: str, run: Path, data: Path, reference: Path | None, protocol: str, progress: bool,
                 n_jobs: int | None) -> dict:
    """Encode, DCI / MIG / FactorVAE and alignment of one run; writes RUN/eval/disentangle.json."""
    model, cfg = load_diti_run(run)
    train = run_features(model, cfg, run, data, "train", progress=False)
    test = run_features(model, cfg, run, data, "test", progress=False)
    # one row per chunk for DiTi (k <= 8 here), four dim slices for PDAE; PDAE's chunk-level metrics on the DiTi
    # run's chunks. The fast protocol keeps the demo in its budget (named in the JSON).
    ref = load_diti_run(reference)[0].partition if reference is not None and model.partition.k == 1 else None
    dis = disentangle_features(train, test, model.partition, protocol=protocol, reference_partition=ref,
                               max_groups=max(model.partition.k, 4), progress=progress, n_jobs=n_jobs)
    write_disentangle(dis, eval_dir(run), method)
    return {k: dis[k] for k in ("protocol", "dci", "mig", "factor_vae", "chunk_level", "alignment")}


def _fidelity(method: str, run: Path, classifier: Path, pairs: int, steps: int, info: dict, progress: bool) -> dict:
    """Counterfactual fidelity of one run with the saved factor classifier; writes RUN/eval/fidelity.json."""
    model, cfg = load_diti_run(run)
    train_set, test_set = cfg.data.open("train"), cfg.data.open("test")
    clf, _ = factor_classifier(classifier, train_set, test_set, 0)
    fid = counterfactual_fidelity(model, clf, test_set, num_pairs=pairs, num_steps=steps, progress=progress)
    fid.classifier = info
    fid.write(eval_dir(run))
    plot_fidelity(fid, eval_dir(run) / fid.FIGURE, title=method)
    return fid.to_dict()


def run_demo(out: str | Path, data_seed: int = 0, steps: int | None = None, quick: bool = False,
             processes: int | None = None) -> Path:
    """Run the demo into ``out``; returns the path of summary.md. ``quick`` shrinks everything (tests).

    ``processes``: DiTi's and PDAE's training, disentanglement and fidelity run side by side in this many
    processes (default: 2 where the machine has 2 cores or more and not ``quick``, else 1); the models and
    numbers are those of the sequential run (every draw is a function of the seed and the step).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = SETTINGS["quick" if quick else "full"]
    processes = processes if processes is not None else (1 if quick else min(2, _cores()))
    parallel = processes > 1
    timer = StageTimer()
    # ``steps`` (tests) shortens both the DM pretraining (only when no DM is shipped) and the training
    extra = [] if steps is None else [f"train.steps={steps}"]
    train_steps = steps if steps is not None else s["steps"]
    train_extra = [] if train_steps is None else [f"train.steps={train_steps}"]

    with timer("data"):
        data = generate_shapes(out / "data", resolution=s["resolution"], n_train=s["n_train"], n_test=s["n_test"],
                               seed=data_seed, progress=s["progress"], version=s["version"])

    with timer("dm"):
        dm = shipped_dm(s["dm"]) if s["dm"] else None
        if dm is None:
            cfg = build_config(PretrainConfig, s["preset"], overrides=[f"data.path={json.dumps(str(data))}", *extra])
            dm = pretrain(cfg, out / "dm-run", resume=(out / "dm-run" / CONFIG).is_file())
        typer.echo(f"   frozen DM: {dm}")

    runs: dict[str, Path] = {method: out / method.lower() for method in METHODS}
    configs = {method: build_config(DiTiConfig, s["preset"], overrides=[
        f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}",
        f"train.progress={str(s['progress'] and not parallel).lower()}", *overrides, *train_extra])
        for method, overrides in METHODS.items()}
    if parallel:  # one process per model (two progress bars would garble each other: a line every 30 s instead)
        with timer(f"train {' + '.join(METHODS)} ({processes} processes)"):
            _in_processes([(_train, configs[m], runs[m]) for m in METHODS], processes,
                          report=lambda: typer.echo(training_progress(runs, configs)))
    else:
        for method in METHODS:
            with timer(f"train {method}"):
                _train(configs[method], runs[method])

    models = {m: load_diti_run(run) for m, run in runs.items()}
    cfg = models["DiTi"][1]
    results: dict = {"data": str(data), "dm": str(dm), "methods": {}, "settings": {
        "preset": s["preset"], "latent_dim": cfg.partition.latent_dim, "k": cfg.partition.k,
        "partition": partition_words(cfg.partition),
        "mode": cfg.partition.mode, "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
        "lr": cfg.train.lr, "ema_decay": cfg.train.ema_decay}}
    with timer("encode + probe"):
        for method, run in runs.items():
            model, cfg = models[method]
            train = run_features(model, cfg, run, data, "train", progress=s["progress"])
            test = run_features(model, cfg, run, data, "test", progress=s["progress"])
            probe = probe_features(train, test, task="multiclass")
            probe.write(eval_dir(run))
            results["methods"][method] = {"run": str(run), "probe": probe.to_dict(),
                                          "partition": model.partition.describe(),
                                          "chunk_of_t": list(model.partition.chunk_of_t)}
        attrs = test[1]
        results["chance"] = {n: float(np.bincount(attrs.values[:, i]).max() / len(attrs.values))
                             for i, n in enumerate(attrs.names)}

    with timer("disentanglement"):
        # side by side, each process fits its factors' GBTs one after another; alone, one process per factor
        done = _in_processes([(_disentangle, m, runs[m], data, runs["DiTi"], s["protocol"],
                               s["progress"] and not parallel, 1 if parallel else None) for m in runs], processes)
        for method, dis in zip(runs, done, strict=True):
            results["methods"][method]["disentangle"] = dis

    with timer("counterfactuals"):
        for method, run in runs.items():
            model, cfg = models[method]
            standard_counterfactual_figure(model, cfg.data.open("test"), eval_dir(run) / COUNTERFACTUAL_PNG,
                                           num_pairs=s["pairs"], num_steps=s["cf_steps"], title=f"{method}")

    with timer("fidelity"):
        cfg = models["DiTi"][1]
        train_set, test_set = cfg.data.open("train"), cfg.data.open("test")
        classifier = out / "factor_classifier.safetensors"
        _, info = factor_classifier(classifier, train_set, test_set, s["classifier_epochs"])
        results["factor_classifier"] = info
        done = _in_processes([(_fidelity, m, runs[m], classifier, s["fidelity_pairs"], s["fidelity_steps"], info,
                               s["progress"] and not parallel) for m in runs], processes)
        for method, fid in zip(runs, done, strict=True):
            results["methods"][method]["fidelity"] = fid

    with timer("attribute loss"):
        dm_eval = out / "dm-eval"
        dm_eval.mkdir(exist_ok=True)
        schedule = cfg.diffusion.build()
        al = attribute_loss(load_dm(dm, schedule), schedule, train_set, max_pairs=s["al_pairs"],
                            progress=s["progress"])
        al.write(dm_eval)
        plot_attribute_loss(al.to_dict(), dm_eval / al.FIGURE)
        results["attribute_loss"] = {"crossing_t": al.crossing_t, "order": al.order, "threshold": al.threshold}

    results["elapsed_s"] = dict(timer.times)
    results["elapsed_s"]["total"] = sum(timer.times.values())
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(format_summary(results))
    report = write_report(list(runs.values()), out / "report.html", extra_dirs=[dm_eval],
                          title="diti demo: DiTi vs PDAE on the shapes data")
    typer.echo(format_summary(results))
    typer.echo(f"report: {report}")
    return out / "summary.md"


def partition_words(p) -> str:
    """A run's partition in the summary's words: its rule, and the dims per stage where it is not balanced."""
    rule = {"given": "", "removed_loss": "removed-loss rule, ", "attribute_loss": "attribute-loss rule, ",
            "official": "official stages, ", "balanced": ""}[p.rule]
    return rule + ("balanced" if p.stages is None else f"stages {p.stages} with dims {p.dims_per_stage}")


def format_summary(results: dict) -> str:
    methods = list(results["methods"])
    names = results["methods"][methods[0]]["probe"]["names"]

    def acc(m, n):
        return results["methods"][m]["probe"]["per_attribute"][n]["accuracy"]

    settings = results["settings"]
    lines = ["# diti demo: DiTi vs PDAE on the shapes data", "",
             f"Data: `{results['data']}`; frozen DM: `{results['dm']}`.", "",
             f"Settings (preset `{settings['preset']}`): d = {settings['latent_dim']}, DiTi k = {settings['k']} "
             f"({settings['partition']}, {settings['mode']}), PDAE k = 1; {settings['steps']} steps of batch "
             f"{settings['batch_size']}, Adam lr {settings['lr']:g} (the official recipe uses 1e-4 for ~300k steps; "
             f"a short CPU budget needs a larger step), EMA {settings['ema_decay']}.", "",
             "## Linear-probe test accuracy per factor (factors ordered coarse to fine)", "",
             "| factor | chance | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for n in names:
        lines.append(f"| {n} | {results['chance'][n]:.3f} | " + " | ".join(f"{acc(m, n):.3f}" for m in methods) + " |")
    lines.append("| mean | | " + " | ".join(f"**{results['methods'][m]['probe']['mean']['accuracy']:.3f}**"
                                           for m in methods) + " |")
    if all("disentangle" in results["methods"][m] for m in methods):
        proto = results["methods"][methods[0]]["disentangle"]["protocol"]
        lines += ["", "## Disentanglement", "",
                  f"Protocol `{proto['name']}` (docs/evaluation.md): GBT classifiers fitted on "
                  f"{proto['dci_train_rows']} training codes and scored on {proto['dci_test_rows']} test codes; MIG "
                  f"on {proto['mig_rows']} training codes; FactorVAE with {proto['factor_vae_train_votes']} / "
                  f"{proto['factor_vae_eval_votes']} votes on the training codes. Chunk level: the importance "
                  "summed over each chunk of DiTi's partition (PDAE's dims grouped the same way).", "",
                  "| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        rows = [("DCI disentanglement", "dci", "disentanglement"), ("DCI completeness", "dci", "completeness"),
                ("DCI informativeness (GBT test acc)", "dci", "informativeness_test"),
                ("DCI disentanglement over chunks", "chunk_level", "disentanglement"),
                ("DCI completeness over chunks", "chunk_level", "completeness"), ("MIG", "mig", "mig"),
                ("FactorVAE score", "factor_vae", "eval_accuracy")]
        for label, group, key in rows:
            vals = [results["methods"][m]["disentangle"][group][key] for m in methods]
            lines.append(f"| {label} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in vals) + " |")
    for m in methods:
        dis = results["methods"][m].get("disentangle")
        if not dis or len(results["methods"][m]["partition"]) == 1:  # PDAE: one chunk
            continue
        al = dis["alignment"]
        share, probe = np.array(al["group_importance_share"]), np.array(al["group_probe_accuracy"])
        lines += ["", f"## {m}: which chunk of z carries each factor", "",
                  "The chunk holding the largest share of the factor's DCI importance, and the chunk whose dims "
                  "alone give the best probe accuracy (chance in the first table).", "",
                  "| factor | top chunk by importance (share) | top chunk by probe (accuracy) |", "|---|---|---|"]
        for j, n in enumerate(names):
            i, k = int(share[:, j].argmax()), int(probe[:, j].argmax())
            lines.append(f"| {n} | {al['group_labels'][i]} ({share[i, j]:.2f}) | "
                         f"{al['group_labels'][k]} ({probe[k, j]:.3f}) |")
    if all("fidelity" in results["methods"][m] for m in methods):
        lines += ["", "## Counterfactual fidelity: how often a swapped dim group carries the factor over", "",
                  "Mean over factors of `takes_source` for each dim group (a factor classifier trained on real "
                  "images judges the decoded swaps; see fidelity.png in the report).", ""]
        for m in methods:
            fid = results["methods"][m]["fidelity"]
            cells = [f"{label.split(':')[0]}: {np.nanmean(np.array(row, dtype=float)):.2f}"
                     for label, row in zip(fid["group_labels"], fid["takes_source"], strict=True)]
            lines.append(f"- {m}: " + "; ".join(cells))
    if "attribute_loss" in results:
        al = results["attribute_loss"]
        diti = results["methods"].get("DiTi", {})
        chunk_of_t = diti.get("chunk_of_t")
        top = {}
        if diti.get("disentangle"):
            share = np.array(diti["disentangle"]["alignment"]["chunk_importance_share"])
            top = {n: int(share[:, j].argmax()) for j, n in enumerate(names)}
        lines += ["", f"## The frozen DM's attribute loss: first t where Err >= {al['threshold']}", "",
                  "The paper's claim, read off this run: a factor lost at t should live in the chunk whose t-range "
                  "holds that t.", "",
                  "| factor | t | chunk of that t | DiTi's chunk with the most importance |", "|---|---|---|---|"]
        for n in al["order"]:
            t = al["crossing_t"].get(n)
            own = "–" if t is None or chunk_of_t is None else chunk_of_t[t]
            lines.append(f"| {n} | {t} | {own} | {top.get(n, '–')} |")
    lines += ["", "## Elapsed time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["elapsed_s"].items()]
    return "\n".join(lines) + "\n"

"""``diti demo``: the whole pipeline on the embedded shapes data, DiTi vs PDAE with the same budget.

Stages: data -> frozen DM (the one shipped in diti/assets, else `diti pretrain`) -> train DiTi -> train PDAE
-> encode train/test -> linear probe of every factor -> per-chunk probes for DiTi -> summary.md/.json.
Every stage prints its elapsed time; the summary reports what was measured, whatever it is.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np
import typer

from ..config import DiTiConfig, PretrainConfig, build_config, to_dict
from ..data import generate_shapes
from ..evaluation.features import encode_dataset, save_features
from ..evaluation.probe import linear_probe
from ..training.jobs import load_diti_run, pretrain, train_diti

DEMO_PRESET = "shapes-demo"
METHODS = {"DiTi": [], "PDAE": ["partition.k=1"]}


def shipped_dm() -> Path | None:
    """The DM shipped with diti for the demo (trained by `diti pretrain --preset shapes-demo`), if present."""
    path = Path(str(resources.files("diti") / "assets" / "dm-shapes32"))
    return path if (path / "model_index.json").is_file() else None


class StageTimer:
    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        typer.secho(f"== {name}", bold=True)
        start = time.perf_counter()
        yield
        self.times[name] = time.perf_counter() - start
        typer.echo(f"   {name}: {self.times[name]:.1f} s")


def run_demo(out: str | Path, data_seed: int = 0, steps: int | None = None, quick: bool = False) -> Path:
    """Run the demo into ``out``; returns the path of summary.md. ``quick`` shrinks everything (tests)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    preset = "shapes-quick" if quick else DEMO_PRESET
    extra = [] if steps is None else [f"train.steps={steps}"]

    with timer("data"):
        n_train, n_test = (256, 128) if quick else (10000, 2000)
        data = generate_shapes(out / "data", resolution=16 if quick else 32, n_train=n_train, n_test=n_test,
                               seed=data_seed, progress=not quick)

    with timer("dm"):
        dm = None if quick else shipped_dm()
        if dm is None:
            cfg = build_config(PretrainConfig, preset, overrides=[f"data.path={json.dumps(str(data))}", *extra])
            dm = pretrain(cfg, out / "dm-run", resume=(out / "dm-run" / "config.yaml").is_file())
        typer.echo(f"   frozen DM: {dm}")

    runs, features, configs = {}, {}, {}
    for method, overrides in METHODS.items():
        with timer(f"train {method}"):
            cfg = build_config(DiTiConfig, preset, overrides=[
                f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}", *overrides, *extra])
            run = out / method.lower()
            runs[method] = train_diti(cfg, run, resume=(run / "config.yaml").is_file())
            configs[method] = cfg

    with timer("encode"):
        for method, run in runs.items():
            model, cfg = load_diti_run(run)
            features[method] = {}
            for split in ("train", "test"):
                ds = cfg.data.open(split)
                z = encode_dataset(model.encoder, ds, progress=not quick)
                save_features(run / f"features_{split}.npy", z, ds.attributes)
                features[method][split] = (z, ds.attributes)

    results: dict = {"data": str(data), "dm": str(dm), "methods": {}}
    with timer("probe"):
        for method in runs:
            (z_tr, a_tr), (z_te, a_te) = features[method]["train"], features[method]["test"]
            probe = linear_probe((z_tr, a_tr.values), (z_te, a_te.values), "multiclass", names=a_tr.names)
            part = configs[method].partition.build(configs[method].diffusion.timesteps)
            entry = {"config": to_dict(configs[method]), "probe": probe.to_dict(),
                     "partition": part.describe()}
            if part.k > 1:
                entry["chunk_probe"] = chunk_probes(z_tr, a_tr, z_te, a_te, part)
            results["methods"][method] = entry
        results["chance"] = {
            name: float(np.bincount(a_te.values[:, i]).max() / len(a_te.values)) for i, name in enumerate(a_te.names)
        }

    results["elapsed_s"] = dict(timer.times)
    results["elapsed_s"]["total"] = sum(timer.times.values())
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    (out / "summary.md").write_text(format_summary(results))
    typer.echo(format_summary(results))
    return out / "summary.md"


def chunk_probes(z_tr, a_tr, z_te, a_te, part) -> dict:
    """Probe accuracy of every factor from each chunk's dims alone: which t-range carries which factor."""
    acc = np.zeros((part.k, len(a_tr.names)))
    for i, (lo, hi) in enumerate(part.chunk_dim_ranges):
        if hi > lo:
            res = linear_probe((z_tr[:, lo:hi], a_tr.values), (z_te[:, lo:hi], a_te.values), "multiclass",
                               names=a_tr.names)
            acc[i] = [res.per_attribute[n]["accuracy"] for n in a_tr.names]
    best = acc.argmax(0)
    return {
        "accuracy": acc.tolist(),
        "best_chunk": {n: int(best[j]) for j, n in enumerate(a_tr.names)},
        "best_t_range": {n: list(part.chunk_t_ranges[best[j]]) for j, n in enumerate(a_tr.names)},
    }


def format_summary(results: dict) -> str:
    methods = list(results["methods"])
    names = results["methods"][methods[0]]["probe"]["names"]
    lines = ["# diti demo: DiTi vs PDAE on the shapes data", "",
             f"Data: `{results['data']}`; frozen DM: `{results['dm']}`.", "",
             "## Linear-probe test accuracy per factor (factors ordered coarse to fine)", "",
             "| factor | chance | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for n in names:
        row = [f"{results['methods'][m]['probe']['per_attribute'][n]['accuracy']:.3f}" for m in methods]
        lines.append(f"| {n} | {results['chance'][n]:.3f} | " + " | ".join(row) + " |")
    means = [f"**{results['methods'][m]['probe']['mean']['accuracy']:.3f}**" for m in methods]
    lines.append("| mean | | " + " | ".join(means) + " |")
    for m in methods:
        chunk = results["methods"][m].get("chunk_probe")
        if not chunk:
            continue
        lines += ["", f"## {m}: which chunk of z carries each factor", "",
                  "Probe accuracy from each chunk's dims alone; the best chunk and the time-steps it serves.", "",
                  "| factor | best chunk | t-range | accuracy from that chunk |", "|---|---|---|---|"]
        acc = np.array(chunk["accuracy"])
        for j, n in enumerate(names):
            c = chunk["best_chunk"][n]
            lo, hi = chunk["best_t_range"][n]
            lines.append(f"| {n} | {c} | {lo}-{hi} | {acc[c, j]:.3f} |")
    lines += ["", "## Elapsed time per stage (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["elapsed_s"].items()]
    return "\n".join(lines) + "\n"

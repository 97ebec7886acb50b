"""DiTi vs PDAE vs baselines on the embedded shapes data: probes, DCI, MIG, alignment, fidelity, over seeds.

Every learned variant trains an encoder (+ shift decoder) on one frozen DM with the same budget (steps x
batch); the baselines need no training: pixel-PCA (the first d principal components of the train pixels)
and a randomly initialised encoder of the same architecture. Each (variant, seed) is evaluated with the same
protocol and the table reports mean +- std over seeds. Departures from the official recipe are part of the
variant's name and listed with its overrides in the output.

    python benchmarks/quality.py                               # full: 3 seeds, every variant (hours on CPU)
    python benchmarks/quality.py --variants pdae,diti-k8-sg --seeds 0
    python benchmarks/quality.py --quick                       # minutes; format check (used by the tests)

Writes OUT/quality.json (every number) and OUT/quality.md (the tables), OUT defaulting to
runs/bench-quality; runs already finished in OUT are reused (a killed benchmark resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import numpy as np
import torch

from diti import __version__
from diti.config import DiTiConfig, PretrainConfig, build_config
from diti.data import generate_shapes
from diti.evaluation.features import encode_dataset
from diti.evaluation.fidelity import counterfactual_fidelity
from diti.evaluation.runs import disentangle_features, factor_classifier, probe_features, run_features
from diti.folders import load_diti_run
from diti.models.diti import DiTiModel
from diti.models.dm import load_dm, shipped_dm
from diti.partition import Partition
from diti.training.jobs import pretrain, train_diti

_IMBALANCED_SG = ["partition.k=16", "partition.stages=[100,300,500,1000]", "partition.dims_per_stage=[8,24,16,16]",
                  "partition.mode=stop_grad"]
# name -> (description, config overrides on top of the base preset). "sg" = stop_grad.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "pdae": ("PDAE (k=1)", ["partition.k=1", "partition.mode=base"]),
    "diti-k8-base": ("DiTi balanced k=8, base", ["partition.k=8", "partition.mode=base"]),
    "diti-k8-sg": ("DiTi balanced k=8, stop_grad", ["partition.k=8", "partition.mode=stop_grad"]),
    "diti-k4-sg": ("DiTi balanced k=4, stop_grad", ["partition.k=4", "partition.mode=stop_grad"]),
    "diti-imb-sg": ("DiTi imbalanced k=16 (stages 100/300/500/1000, dims 8/24/16/16), stop_grad", _IMBALANCED_SG),
    # (chunk- or stage-balanced sampling equals uniform sampling for a balanced partition, so it is only
    # paired with the imbalanced one)
    "diti-imb-sg-stagebal": ("DiTi imbalanced k=16 as diti-imb-sg + stage-balanced t sampling (departure)",
                             [*_IMBALANCED_SG, "objective.timestep_sampling=stage_balanced"]),
    "diti-k8-sg-unitw": ("DiTi k=8 stop_grad + uniform loss weight (departure)",
                         ["partition.k=8", "partition.mode=stop_grad", "objective.weighting=uniform"]),
}
BASELINES = {"pixel-pca": "first d principal components of the pixels", "random-encoder": "untrained encoder"}

SETTINGS = {
    "full": dict(preset="shapes-bench", resolution=32, n_train=10000, n_test=2000, protocol="reference",
                 fidelity_pairs=128, fidelity_steps=25, classifier_epochs=2, seeds="0,1,2", probe_steps=None),
    # quick: a format check; its probes get a short budget (probe_steps) and say so in their budget
    "quick": dict(preset="shapes-quick", resolution=16, n_train=256, n_test=128, protocol="fast",
                  fidelity_pairs=8, fidelity_steps=5, classifier_epochs=1, seeds="0", probe_steps=200),
}


def evaluate(train, test, partition: Partition, model, clf, test_set, s, seed) -> dict:
    """Probe, DCI/MIG/FactorVAE + alignment and (for learned models) fidelity of one code."""
    probe = probe_features(train, test, task="multiclass", seed=seed, steps=s["probe_steps"])
    dis = disentangle_features(train, test, partition, protocol=s["protocol"], max_groups=max(partition.k, 4),
                               seed=seed, progress=False, n_jobs=1, steps=s["probe_steps"])
    share = np.array(dis["alignment"]["group_importance_share"])
    row = {
        "probe": {n: probe.per_attribute[n]["accuracy"] for n in probe.names},
        "probe_mean": probe.mean["accuracy"],
        "dci_d": dis["dci"]["disentanglement"], "dci_c": dis["dci"]["completeness"],
        "dci_i": dis["dci"]["informativeness_test"], "mig": dis["mig"]["mig"],
        "factor_vae": dis["factor_vae"]["eval_accuracy"],
        "alignment_groups": dis["alignment"]["group_labels"],
        "top_group": {n: int(share[:, j].argmax()) for j, n in enumerate(dis["factors"])},
        "importance_share": dis["alignment"]["group_importance_share"],
    }
    if model is not None:
        fid = counterfactual_fidelity(model, clf, test_set, num_pairs=s["fidelity_pairs"],
                                      num_steps=s["fidelity_steps"], seed=seed, progress=False)
        row["fidelity_takes_source"] = fid.to_dict()["takes_source"]
        row["fidelity_groups"] = fid.group_labels
    return row


def pixel_pca(train_set, test_set, d: int, seed: int):
    from sklearn.decomposition import PCA

    x_tr = train_set.images(np.arange(len(train_set))).reshape(len(train_set), -1).astype(np.float32) / 255
    x_te = test_set.images(np.arange(len(test_set))).reshape(len(test_set), -1).astype(np.float32) / 255
    pca = PCA(n_components=d, random_state=seed).fit(x_tr)
    return pca.transform(x_tr).astype(np.float32), pca.transform(x_te).astype(np.float32)


def run_one(variant: str, seed: int, s: dict, data: str, dm: str, out: str, steps: int | None,
            threads: int | None) -> dict:
    """Train (learned variants) and evaluate one (variant, seed); a top-level function so a process pool can
    run several at once (``--jobs``), each with ``threads`` intra-op threads."""
    if threads:
        torch.set_num_threads(threads)
    data, dm, out = Path(data), Path(dm), Path(out)
    base = build_config(DiTiConfig, s["preset"], overrides=[f"dm={json.dumps(str(dm))}",
                                                             f"data.path={json.dumps(str(data))}"])
    train_set, test_set = base.data.open("train"), base.data.open("test")
    clf, _ = factor_classifier(out / "factor_classifier.safetensors", train_set, test_set)  # trained by main()
    if variant in VARIANTS:
        overrides = [*VARIANTS[variant][1], f"train.seed={seed}", "train.progress=false"]
        if steps:
            overrides.append(f"train.steps={steps}")
        cfg = build_config(DiTiConfig, s["preset"], overrides=[
            f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}", *overrides])
        run = out / variant / f"seed{seed}"
        t0 = time.time()
        train_diti(cfg, run, resume=(run / "config.yaml").is_file())
        minutes = (time.time() - t0) / 60
        model, cfg = load_diti_run(run)
        train = run_features(model, cfg, run, data, "train", progress=False)
        test = run_features(model, cfg, run, data, "test", progress=False)
        row = evaluate(train, test, model.partition, model, clf, test_set, s, seed)
        row.update(train_minutes=minutes, steps=cfg.train.steps)
        return row
    part = Partition(base.partition.latent_dim, 1, 1000)
    if variant == "pixel-pca":
        z_tr, z_te = pixel_pca(train_set, test_set, base.partition.latent_dim, seed)
    else:  # an untrained encoder of the same architecture
        torch.manual_seed(seed)
        model = DiTiModel.from_config(base, load_dm(dm)).eval()
        z_tr, z_te = (encode_dataset(model.encoder, ds, progress=False) for ds in (train_set, test_set))
    return evaluate((z_tr, train_set.attributes), (z_te, test_set.attributes), part, None, clf, test_set, s, seed)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join([*VARIANTS, *BASELINES]))
    p.add_argument("--seeds", default=None, help="comma list (default 0,1,2; quick: 0)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every learned variant")
    p.add_argument("--dm", default=None, help="frozen DM (default: the shipped demo DM)")
    p.add_argument("--jobs", type=int, default=1, help="(variant, seed) jobs in parallel, one thread each")
    p.add_argument("--out", default="runs/bench-quality")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    s = SETTINGS["quick" if args.quick else "full"]
    seeds = [int(x) for x in (args.seeds or s["seeds"]).split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS and v not in BASELINES]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {[*VARIANTS, *BASELINES]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    data = generate_shapes(out / "data", resolution=s["resolution"], n_train=s["n_train"], n_test=s["n_test"],
                           seed=0, progress=False)
    dm = Path(args.dm) if args.dm else (None if args.quick else shipped_dm())
    if dm is None:
        steps = ["train.steps=20"] if args.quick else []
        cfg = build_config(PretrainConfig, s["preset"], overrides=[f"data.path={json.dumps(str(data))}",
                                                                    "train.progress=false", *steps])
        dm = pretrain(cfg, out / "dm-run", resume=(out / "dm-run" / "config.yaml").is_file())
    base = build_config(DiTiConfig, s["preset"], overrides=[f"dm={json.dumps(str(dm))}",
                                                             f"data.path={json.dumps(str(data))}"])
    train_set, test_set = base.data.open("train"), base.data.open("test")
    _, clf_info = factor_classifier(out / "factor_classifier.safetensors", train_set, test_set,
                                    s["classifier_epochs"])

    results: dict = {"rows": {}, "variants": {}, "settings": s, "seeds": seeds}
    jobs = [(v, seed) for seed in seeds for v in variants]  # seed-major: a cut-short run has whole seeds
    for v in variants:
        results["variants"][v] = VARIANTS[v] if v in VARIANTS else (BASELINES[v], [])
    steps = args.steps or (4 if args.quick else None)
    common = (s, str(data), str(dm), str(out), steps, 1 if args.jobs > 1 else None)

    def record(variant, seed, row):
        results["rows"][f"{variant}/seed{seed}"] = row
        (out / "quality.json").write_text(json.dumps(results, indent=2))
        print(f"== {variant}/seed{seed}: probe mean {row['probe_mean']:.3f}, DCI-D {row['dci_d']:.3f}", flush=True)

    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool, \
                _workers_end_with_us():
            futures = {pool.submit(run_one, v, seed, *common): (v, seed) for v, seed in jobs}
            for future, (v, seed) in futures.items():
                record(v, seed, future.result())
    else:
        for v, seed in jobs:
            record(v, seed, run_one(v, seed, *common))
    results["rows"] = {f"{v}/seed{seed}": results["rows"][f"{v}/seed{seed}"] for v, seed in jobs}  # job order
    results["classifier"] = clf_info
    results["machine"] = {"cpu": _cpu(), "threads": torch.get_num_threads(), "jobs": args.jobs,
                          "torch": torch.__version__, "diti": __version__, "python": platform.python_version()}
    results["date"] = date.today().isoformat()
    results["command"] = " ".join(["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])])
    results["minutes"] = (time.time() - start) / 60
    (out / "quality.json").write_text(json.dumps(results, indent=2))
    (out / "quality.md").write_text(format_tables(results))
    print(format_tables(results))
    return results


@contextmanager
def _workers_end_with_us():
    """While open, SIGTERM of this process first terminates its pool workers (which would otherwise run their
    jobs to the end, orphaned), then exits with 128 + SIGTERM; jobs already recorded stay in quality.json."""
    import multiprocessing

    def stop(signum, frame):
        children = multiprocessing.active_children()
        for child in children:
            child.terminate()
        for child in children:
            child.join(5)
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _ms(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f}" if len(values) == 1 else f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def format_tables(results: dict) -> str:
    rows, seeds = results["rows"], results["seeds"]
    variants = list(results["variants"])
    factors = list(next(iter(rows.values()))["probe"])
    lines = [f"Mean ± std over seeds {seeds}.", "", "### Summary", "",
             "| variant | probe mean | DCI-D | DCI-C | DCI-I | MIG | FactorVAE |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        rs = [rows[f"{v}/seed{s}"] for s in seeds if f"{v}/seed{s}" in rows]
        if rs:
            cells = [_ms([r[k] for r in rs]) for k in ("probe_mean", "dci_d", "dci_c", "dci_i", "mig", "factor_vae")]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "### Probe accuracy per factor (coarse to fine)", "",
              "| variant | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
    for v in variants:
        rs = [rows[f"{v}/seed{s}"] for s in seeds if f"{v}/seed{s}" in rows]
        if rs:
            lines.append(f"| {v} | " + " | ".join(_ms([r["probe"][f] for r in rs]) for f in factors) + " |")
    lines += ["", "### Alignment: dim group holding the largest share of each factor's importance (per seed)", "",
              "| variant | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
    for v in variants:
        rs = [rows[f"{v}/seed{s}"] for s in seeds if f"{v}/seed{s}" in rows]
        if rs:
            cells = ["/".join(str(r["top_group"][f]) for r in rs) for f in factors]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "### Counterfactual fidelity: mean over factors of takes_source, per dim group", ""]
    for v in variants:
        rs = [rows[f"{v}/seed{s}"] for s in seeds if f"{v}/seed{s}" in rows and "fidelity_takes_source" in
              rows[f"{v}/seed{s}"]]
        if rs:
            per_group = np.array([[np.nanmean(np.array(g, dtype=float)) for g in r["fidelity_takes_source"]]
                                  for r in rs])
            labels = rs[0]["fidelity_groups"]
            lines.append(f"- {v}: " + "; ".join(f"{labels[i].split(':')[0]} {_ms(per_group[:, i])}"
                                                 for i in range(len(labels))))
    lines += ["", "### Variants", ""]
    lines += [f"- `{v}`: {desc}" + (f" — `{' '.join(ov)}`" if ov else "") for v, (desc, ov) in
              results["variants"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

"""Learning curves: DiTi vs PDAE against images seen, on the benchmark that converges on a CPU core.

One training run per (variant, seed) on the 16-px shapes data, version 2 (factors lost across the whole
time axis), with the frozen DM shipped as ``dm-shapes2-16``. The run stops at doubling image counts
(``--points``, optimizer steps of batch 64); at each point the EMA weights are evaluated with one protocol:
the linear probe per factor (default step budget), MIG and FactorVAE (reference protocol) at every point,
DCI with its chunk- and stage-level versions and the partition-attribute alignment at the last
``--dci-points`` points (the GBT classifiers dominate the cost; the last doubling always has them). Pixel-PCA
and a random encoder are the references.

    python benchmarks/curves.py                                 # full: 3 seeds, every variant (hours)
    python benchmarks/curves.py --variants pdae,diti-k8-sg --seeds 0 --jobs 2
    python benchmarks/curves.py --plot-only                     # figures + tables from the committed JSON
    python benchmarks/curves.py --quick --out /tmp/c            # a minute; format check (used by the tests)
    python benchmarks/curves.py --precision bf16 --variants pdae,diti-k8-sg --jobs 2   # the fast mode's curves
    python benchmarks/curves.py --data-version 1 --resolution 32 --dm src/diti/assets/dm-shapes32 --tag v1 \
        --variants pdae,diti-k8-sg,diti-rl-sg --jobs 2       # version 1: every factor lost at t ~ 540-800
    python benchmarks/curves.py --precision bf16 --set decoder.frozen_fp32=true --tag fast \
        --variants pdae,diti-k8-sg --jobs 2 --fidelity       # + counterfactual fidelity at the last point

``--precision bf16`` trains every learned variant under bf16 autocast (``train.mixed_precision=bf16``; the
evaluation stays float32) and keeps its points apart (default RESULTS benchmarks/results/curves-bf16, run
folders runs/bench-curves-bf16), so that they can be set beside the float32 curves.

Each finished point is one JSON, ``RESULTS/<variant>/seed<k>/step<NNNNNN>.json`` (RESULTS defaults to
benchmarks/results/curves in full mode, OUT/results in quick mode): a killed or moved sweep resumes without
redoing finished points (a run folder that is gone is retrained from step 0, bit-identically). Figures
(``RESULTS/figures/*.png``) and ``RESULTS/curves.md`` are rebuilt from all JSON files at the end.

``--fidelity`` adds, for every learned variant and seed, the counterfactual fidelity of the last point
(``diti fidelity``: 128 random pairs, 50 DDIM steps, four dim groups, one factor classifier trained once on the
sweep's data) in ``RESULTS/<variant>/seed<k>/fidelity.json``; a run folder that is gone is first retrained to
the last point (bit-identical to the run the points came from). curves.md then reports, per dim group, the hit
rate (swapping the group carries the factors the DM loses in its t-range) and the leakage (it changes the
others), evaluation/fidelity.py:hit_and_leakage; PDAE's dim groups take the t-ranges DiTi's balanced partition
gives the same dims. ``--peers`` adds the peers' protocol at the last point of every variant and reference
(``RESULTS/<variant>/seed<k>/peers.json``; each chunk reduced to one dim by PCA, disentanglement_lib's counts),
the numbers DisDiff, EncDiff and FDAE report, as a table in curves.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sys
import time
from bisect import bisect_right
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from diti import __version__
from diti.config import DiTiConfig, PretrainConfig, build_config
from diti.config.presets import GIVEN_PARTITION
from diti.data import generate_shapes
from diti.evaluation.features import encode_dataset
from diti.evaluation.fidelity import hit_and_leakage
from diti.evaluation.runs import (
    disentangle_features,
    factor_classifier,
    fidelity_run,
    probe_features,
    run_features,
)
from diti.folders import latest_checkpoint, load_diti_run, read_run_config
from diti.folders.results import FidelityResult
from diti.models.diti import DiTiModel
from diti.models.dm import load_dm, shipped_dm
from diti.partition import Partition, chunk_first_timesteps, stages_from_crossings
from diti.training.jobs import pretrain, train_diti

ROOT = Path(__file__).resolve().parent
# name -> (description, config overrides on top of the preset). "sg" = stop_grad. "diti-imb-sg" is built from
# the DM's attribute-loss crossings at run time (imbalanced_overrides).
PRECISIONS = {"fp32": "no", "bf16": "bf16"}  # --precision -> train.mixed_precision
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "pdae": ("PDAE (k=1)", ["partition.k=1", "partition.mode=base"]),
    "diti-k8-sg": ("DiTi balanced k=8, stop_grad", ["partition.k={k}", "partition.mode=stop_grad"]),
    "diti-k8-base": ("DiTi balanced k=8, base", ["partition.k={k}", "partition.mode=base"]),
    "diti-imb-sg": ("DiTi k=8, stages at the DM's attribute-loss crossings, stop_grad", []),
    # Objective options (documented departures from the paper; issue: give every chunk a signal)
    "pdae-unitw": ("PDAE, uniform loss weight over t", ["partition.k=1", "partition.mode=base",
                                                        "objective.weighting=uniform"]),
    "diti-k8-sg-unitw": ("DiTi balanced k=8, stop_grad, uniform loss weight over t",
                         ["partition.k={k}", "partition.mode=stop_grad", "objective.weighting=uniform"]),
    "diti-imb-sg-stagebal": ("DiTi k=8, stages at the crossings, stop_grad, equal t mass per stage",
                             ["objective.timestep_sampling=stage_balanced"]),
    "diti-k8-sg-cnorm": ("DiTi balanced k=8, stop_grad, each chunk's loss normalised by its running mean",
                         ["partition.k={k}", "partition.mode=stop_grad", "objective.loss_normalization=chunk"]),
    "diti-imb-sg-cnorm": ("DiTi k=8, stages at the crossings, stop_grad, each chunk's loss normalised by its "
                          "running mean", ["objective.loss_normalization=chunk"]),
    # Partition rules (diti's own, docs/method.md): dims at the crossing chunks (labels) or where a short PDAE
    # run removes loss (no labels; the PDAE run of 500 steps is trained per seed, beside the sweep's runs)
    "diti-al-sg": ("DiTi k=8, stop_grad, attribute-loss rule (dims at the DM's crossing chunks)", []),
    "diti-rl-sg": ("DiTi k=8, stop_grad, removed-loss rule from a 500-step PDAE run (no labels)", []),
    # Faster-optimisation options (departures in how t is drawn; the expected loss stays the official one).
    # "-is": importance sampling of t by the loss' second moment; "-isr": by the loss the decoder removes;
    # "-m8": 8 stratified draws per image with 8 images per step (the same 64 (t, eps) draws, the same cost
    # per step as batch 64, but one eighth of the images).
    "pdae-is": ("PDAE + loss-aware t sampling", ["partition.k=1", "partition.mode=base",
                                                 "objective.timestep_sampling=loss_aware"]),
    "diti-k8-sg-is": ("DiTi k=8 stop_grad + loss-aware t sampling",
                      ["partition.k={k}", "partition.mode=stop_grad", "objective.timestep_sampling=loss_aware"]),
    "diti-k8-sg-isr": ("DiTi k=8 stop_grad + t sampling by the removed loss",
                       ["partition.k={k}", "partition.mode=stop_grad", "objective.timestep_sampling=loss_removed"]),
    "diti-k8-sg-m8": ("DiTi k=8 stop_grad, 8 draws per image x 8 images per step",
                      ["partition.k={k}", "partition.mode=stop_grad", "objective.draws_per_image=8",
                       "train.batch_size=8"]),
    "diti-k8-sg-is-m8": ("DiTi k=8 stop_grad, loss-aware t sampling + 8 draws per image x 8 images",
                         ["partition.k={k}", "partition.mode=stop_grad", "objective.timestep_sampling=loss_aware",
                          "objective.draws_per_image=8", "train.batch_size=8"]),
}
# the variants built from the DM's attribute-loss crossings: "diti-imb-sg*" (the stages at the crossings, plus
# their own overrides above) and "diti-al-sg" (the attribute-loss rule)
# a factor counts as held when its probe reaches this (the whole-claim issue's goal; the supervised bound's too)
HELD = 0.9
NEEDS_CROSSINGS = tuple(v for v in VARIANTS if v.startswith("diti-imb-sg")) + ("diti-al-sg",)
BASELINES = {"pixel-pca": "first d principal components of the train pixels",
             "random-encoder": "untrained encoder of the same architecture",
             "supervised": "the same encoder trained with the labels (one linear head per factor, cross-entropy): "
                           "an upper bound of what the architecture can hold about each factor"}
# k: the chunks of the DiTi variants ("{k}" above; 8, or 4 for the quick preset's d = 16), which also group
# PDAE's dims for its chunk-level metrics (the balanced DiTi run beside it).
SETTINGS = {
    "full": dict(preset="shapes2-bench", version=2, resolution=16, n_train=10000, n_test=2000, protocol="reference",
                 points=[250, 500, 1000, 2000, 4000], dci_points=2, seeds="0,1,2", k=8, probe_steps=None,
                 supervised_steps=4000, rl_steps=500, fidelity_pairs=128, fidelity_steps=50, classifier_epochs=3),
    "quick": dict(preset="shapes-quick", version=2, resolution=16, n_train=256, n_test=64, protocol="fast",
                  points=[2, 4], dci_points=1, seeds="0", k=4, probe_steps=200, supervised_steps=20, rl_steps=4,
                  fidelity_pairs=6, fidelity_steps=4, classifier_epochs=1),
}
# Metrics drawn as curves: key in a point's "metrics" -> axis label.
METRICS = {
    "probe_mean": "linear-probe accuracy, mean over factors",
    "dci_d": "DCI disentanglement (per dim)",
    "dci_c": "DCI completeness (per dim)",
    "dci_i": "DCI informativeness (test accuracy)",
    "chunk_d": "DCI disentanglement over chunks",
    "chunk_c": "DCI completeness over chunks",
    "mig": "MIG",
    "factor_vae": "FactorVAE score",
}



def imbalanced_overrides(attribute_loss: Path, latent_dim: int, k: int) -> list[str]:
    """partition.* overrides placing the stages at the crossings in an attribute_loss.json (the official
    imbalanced structure, ``diti.partition.stages_from_crossings``)."""
    data = json.loads(Path(attribute_loss).read_text())
    part, _ = stages_from_crossings(data.get("crossing_t_interp") or data["crossing_t"], latent_dim, k)
    return [f"partition.k={part.k}", f"partition.stages={list(part.stages)}",
            f"partition.dims_per_stage={list(part.dims_per_stage)}", "partition.mode=stop_grad"]


def variant_overrides(variant: str, s: dict, attribute_loss: Path | None, latent_dim: int,
                      removed_loss: Path | None = None) -> list[str]:
    if variant in NEEDS_CROSSINGS:
        if attribute_loss is None:
            raise ValueError(f"{variant} needs the DM's attribute_loss.json (--attribute-loss)")
        if variant == "diti-al-sg":
            return [f"partition.k={s['k']}", "partition.mode=stop_grad", "partition.rule=attribute_loss",
                    f"partition.rule_source={json.dumps(str(attribute_loss))}"]
        return imbalanced_overrides(attribute_loss, latent_dim, s["k"]) + VARIANTS[variant][1]
    if variant == "diti-rl-sg":
        if removed_loss is None:
            raise ValueError("diti-rl-sg needs a removed-loss curve (removed_loss_source)")
        return [f"partition.k={s['k']}", "partition.mode=stop_grad", "partition.rule=removed_loss",
                f"partition.rule_source={json.dumps(str(removed_loss))}"]
    return [o.format(k=s["k"]) for o in VARIANTS[variant][1]]


def removed_loss_source(seed: int, s: dict, data: Path, dm: Path, out: Path, extra: tuple[str, ...]) -> Path:
    """The removed-loss curve of a short PDAE run of this seed (``s["rl_steps"]`` steps, the sweep's training
    options), trained once beside the sweep's runs and measured once: ``out/rl-source/seed<k>/removed_loss.json``
    (``diti.training.jobs.removed_loss_source``, what ``partition.rule_source=auto`` trains inside a run)."""
    from diti.training.jobs import removed_loss_source as train_source

    cfg = build_config(DiTiConfig, s["preset"], overrides=[
        f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}", *extra, f"train.seed={seed}",
        "train.progress=false"])
    return train_source(cfg, out / "rl-source" / f"seed{seed}", s["rl_steps"])


def evaluate(train, test, partition: Partition, s: dict, seed: int, with_dci: bool, reference) -> dict:
    """The point's metrics: probe per factor, MIG, FactorVAE and (with_dci) DCI + chunk level + alignment."""
    # probe_steps None: the probe's default budget (quick mode: a short one, for the format check)
    probe = probe_features(train, test, task="multiclass", seed=seed, steps=s["probe_steps"])
    dis = disentangle_features(train, test, partition, protocol=s["protocol"], reference_partition=reference,
                               max_groups=max(partition.k, s["k"]), seed=seed, progress=False, n_jobs=1,
                               with_dci=with_dci, steps=s["probe_steps"])
    metrics = {"probe_mean": probe.mean["accuracy"], "mig": dis["mig"]["mig"],
               "factor_vae": dis["factor_vae"]["eval_accuracy"]}
    if with_dci:
        cl = dis["chunk_level"]
        metrics.update(dci_d=dis["dci"]["disentanglement"], dci_c=dis["dci"]["completeness"],
                       dci_i=dis["dci"]["informativeness_test"], chunk_d=cl["disentanglement"],
                       chunk_c=cl["completeness"])
    return {
        "metrics": metrics,
        "probe": {n: probe.per_attribute[n]["accuracy"] for n in probe.names},
        "probe_budget": probe.budget,
        "protocol": dis["protocol"],
        "dci": dis["dci"],
        "mig_per_factor": dis["mig"]["per_factor"],
        "chunk_level": dis["chunk_level"],
        "alignment": dis["alignment"],
    }


def evaluate_peers(train, test, partition: Partition, seed: int, reference) -> dict:
    """The peers' protocol (``diti disentangle --protocol peers``: each chunk, PDAE's on the reference chunks,
    reduced to one dim by PCA, then disentanglement_lib's counts): DCI-D, FactorVAE, MIG."""
    dis = disentangle_features(train, test, partition, protocol="peers", reference_partition=reference, seed=seed,
                               progress=False, n_jobs=1)
    return {"metrics": {"dci_d": dis["dci"]["disentanglement"], "factor_vae": dis["factor_vae"]["eval_accuracy"],
                        "mig": dis["mig"]["mig"]}, "protocol": dis["protocol"]}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)  # a point file is either complete or absent


def point_path(results: Path, variant: str, seed: int, step: int) -> Path:
    return results / variant / f"seed{seed}" / f"step{step:06d}.json"


def _write_extra(path: Path, row: dict, written: list[str], started: float, threads: int | None, **ident) -> None:
    """Stamp a last-point result (fidelity, peers' protocol) with who, when and how long, write it, note it."""
    row.update(**ident, eval_seconds=time.perf_counter() - started, machine=_machine(threads),
               date=date.today().isoformat())
    _write_json(path, row)
    written.append(str(path))


def fidelity_path(results: Path, variant: str, seed: int) -> Path:
    return results / variant / f"seed{seed}" / "fidelity.json"


def peers_path(results: Path, variant: str, seed: int) -> Path:
    return results / variant / f"seed{seed}" / "peers.json"


def run_curve(variant: str, seed: int, s: dict, data: str, dm: str, out: str, results: str,
              attribute_loss: str | None, threads: int | None, extra: tuple[str, ...] = (),
              classifier: str | None = None, peers: bool = False) -> list[str]:
    """Train one (variant, seed) through every point, evaluating each point once, and at the last point its
    counterfactual fidelity (``classifier``: the factor classifier's file) and the peers' protocol (``peers``);
    returns the files written.
    A top-level function so that a process pool can run several (``--jobs``), each with ``threads`` threads."""
    if threads:
        torch.set_num_threads(threads)
    data, dm, out, results = Path(data), Path(dm), Path(out), Path(results)
    base = build_config(DiTiConfig, s["preset"], overrides=[f"dm={json.dumps(str(dm))}",
                                                             f"data.path={json.dumps(str(data))}"])
    d = base.partition.latent_dim
    overrides = ([] if variant == "diti-rl-sg" else
                 [*variant_overrides(variant, s, Path(attribute_loss) if attribute_loss else None, d), *extra])
    reference = Partition(d, s["k"], base.diffusion.timesteps)
    fid_path, peer_path = fidelity_path(results, variant, seed), peers_path(results, variant, seed)
    wanted = (classifier is not None and not fid_path.is_file()) or (peers and not peer_path.is_file())
    if not wanted and all(point_path(results, variant, seed, step).is_file() for step in s["points"]):
        return []  # finished: nothing to train, not even the removed-loss rule's short PDAE run
    if variant == "diti-rl-sg":
        rl = removed_loss_source(seed, s, data, dm, out, tuple(o for o in extra if o.startswith("train.")))
        overrides = [*variant_overrides(variant, s, None, d, rl), *extra]
    run = out / variant / f"seed{seed}"
    segments_file = run / "segments.json"
    written = []
    dci_from = s["points"][-s["dci_points"]] if s["dci_points"] else None

    def train_to(step: int) -> float:
        cfg = build_config(DiTiConfig, s["preset"], overrides=[
            f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}", *GIVEN_PARTITION, *overrides,
            f"train.seed={seed}", "train.progress=false", f"train.steps={step}"])
        t0 = time.perf_counter()
        train_diti(cfg, run, resume=(run / "config.yaml").is_file())
        return time.perf_counter() - t0

    for step in s["points"]:
        path = point_path(results, variant, seed, step)
        if path.is_file():
            continue
        seconds = train_to(step)
        segments = json.loads(segments_file.read_text()) if segments_file.is_file() else []
        segments.append({"to_step": step, "seconds": seconds})
        segments_file.write_text(json.dumps(segments))
        model, cfg = load_diti_run(run)
        train = run_features(model, cfg, run, data, "train", progress=False)
        test = run_features(model, cfg, run, data, "test", progress=False)
        t1 = time.perf_counter()
        row = evaluate(train, test, model.partition, s, seed, dci_from is not None and step >= dci_from,
                       reference if model.partition.k == 1 else None)
        losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        row.update(variant=variant, seed=seed, step=step, images=step * cfg.train.batch_size,
                   precision=cfg.train.mixed_precision, data={"version": s["version"], "resolution": s["resolution"]},
                   losses=[[r["step"], r["loss"]] for r in losses if r["step"] <= step],
                   train_seconds=sum(x["seconds"] for x in segments), segments=segments,
                   eval_seconds=time.perf_counter() - t1, partition=model.partition.describe(),
                   overrides=overrides, machine=_machine(threads), date=date.today().isoformat())
        _write_json(path, row)
        written.append(str(path))
        print(f"== {variant}/seed{seed} step {step}: probe mean {row['metrics']['probe_mean']:.3f}"
              + (f", DCI-D {row['metrics']['dci_d']:.3f}, chunk-D {row['metrics']['chunk_d']:.3f}"
                 if "dci_d" in row["metrics"] else ""), flush=True)
    last = s["points"][-1]
    if not wanted:
        return written
    latest = latest_checkpoint(run / "checkpoints")
    if latest is None or int(latest.name.removeprefix("step-")) < last:
        train_to(last)  # the run folder is gone (or short): the same weights again, bit-identically
    ident = dict(variant=variant, seed=seed, step=last,
                 images=last * read_run_config(run, DiTiConfig).train.batch_size)
    if peers and not peer_path.is_file():
        model, cfg = load_diti_run(run)
        train = run_features(model, cfg, run, data, "train", progress=False)
        test = run_features(model, cfg, run, data, "test", progress=False)
        t1 = time.perf_counter()
        row = evaluate_peers(train, test, model.partition, seed, reference if model.partition.k == 1 else None)
        _write_extra(peer_path, row, written, t1, threads, **ident)
        print(f"== {variant}/seed{seed}: peers' protocol at step {last}: DCI-D {row['metrics']['dci_d']:.3f}",
              flush=True)
    if classifier is not None and not fid_path.is_file():
        t1 = time.perf_counter()
        fid = fidelity_run(run, data, num_pairs=s["fidelity_pairs"], num_steps=s["fidelity_steps"],
                           classifier=classifier)
        row = fid.to_dict()
        if fid.group_t_ranges[0] is None:  # PDAE's dim groups: the t-ranges DiTi's partition gives the same dims
            row["reference_t_ranges"] = [_t_range_of_dims(reference, lo, hi) for lo, hi in fid.group_dim_ranges]
        _write_extra(fid_path, row, written, t1, threads, **ident)
        print(f"== {variant}/seed{seed}: fidelity at step {last}", flush=True)
    return written


def _t_range_of_dims(partition: Partition, lo: int, hi: int) -> list[int]:
    """The t-range of the chunks of ``partition`` that hold dims [lo, hi)."""
    rows = [r for r in partition.describe() if r["dims"] and r["dim_start"] < hi and r["dim_end"] > lo]
    return [min(r["t_first"] for r in rows), max(r["t_last"] for r in rows)]


def run_baseline(name: str, seed: int, s: dict, data: str, dm: str, results: str, threads: int | None,
                 peers: bool = False) -> list[str]:
    """Pixel-PCA, a random encoder or the supervised bound: one point (images 0), evaluated with DCI (and with
    ``peers``, the peers' protocol in peers.json)."""
    if threads:
        torch.set_num_threads(threads)
    path = Path(results) / name / f"seed{seed}" / "step000000.json"
    peer_path = peers_path(Path(results), name, seed)
    if path.is_file() and (not peers or peer_path.is_file()):
        return []
    base = build_config(DiTiConfig, s["preset"], overrides=[f"dm={json.dumps(str(dm))}",
                                                             f"data.path={json.dumps(str(data))}"])
    train_set, test_set = base.data.open("train"), base.data.open("test")
    d = base.partition.latent_dim
    if name == "pixel-pca":
        from sklearn.decomposition import PCA

        x_tr = train_set.images(np.arange(len(train_set))).reshape(len(train_set), -1).astype(np.float32) / 255
        x_te = test_set.images(np.arange(len(test_set))).reshape(len(test_set), -1).astype(np.float32) / 255
        pca = PCA(n_components=d, random_state=seed).fit(x_tr)
        z_tr, z_te = pca.transform(x_tr).astype(np.float32), pca.transform(x_te).astype(np.float32)
    elif name == "supervised":
        torch.manual_seed(seed)
        model = DiTiModel.from_config(base, load_dm(dm))
        supervised_train(model.encoder, train_set, s["supervised_steps"], base.train.batch_size, seed)
        z_tr, z_te = (encode_dataset(model.encoder.eval(), ds, progress=False) for ds in (train_set, test_set))
    else:
        torch.manual_seed(seed)
        model = DiTiModel.from_config(base, load_dm(dm)).eval()
        z_tr, z_te = (encode_dataset(model.encoder, ds, progress=False) for ds in (train_set, test_set))
    reference = Partition(d, s["k"], base.diffusion.timesteps)
    written = []
    if peers and not peer_path.is_file():
        t1 = time.perf_counter()
        row = evaluate_peers((z_tr, train_set.attributes), (z_te, test_set.attributes), Partition(d, 1, 1000), seed,
                             reference)
        _write_extra(peer_path, row, written, t1, threads, variant=name, seed=seed, step=0, images=0)
    if path.is_file():
        return written
    t1 = time.perf_counter()
    row = evaluate((z_tr, train_set.attributes), (z_te, test_set.attributes), Partition(d, 1, 1000), s, seed,
                   True, reference)
    row.update(variant=name, seed=seed, step=0, images=0, train_seconds=0.0, eval_seconds=time.perf_counter() - t1,
               machine=_machine(threads), date=date.today().isoformat())
    _write_json(path, row)
    print(f"== {name}/seed{seed}: probe mean {row['metrics']['probe_mean']:.3f}, DCI-D {row['metrics']['dci_d']:.3f}",
          flush=True)
    return [*written, str(path)]


def supervised_train(encoder: torch.nn.Module, dataset, steps: int, batch: int, seed: int,
                     lr: float = 1e-3) -> list[float]:
    """Train ``encoder`` with the labels: a linear head per categorical factor on its code z, the sum of the
    heads' cross-entropies, Adam, ``steps`` steps of ``batch`` images drawn with the sampler of training runs
    (the heads are dropped afterwards: the probe then reads z as it reads a DiTi code). Returns the losses."""
    from diti.training.randomness import global_batch_indices

    attrs = dataset.attributes
    cols = [i for i in range(len(attrs.names)) if attrs.is_categorical(i)]
    labels = torch.as_tensor(np.asarray(attrs.values)[:, cols], dtype=torch.long)
    heads = torch.nn.ModuleList(torch.nn.Linear(encoder.latent_dim, int(labels[:, j].max()) + 1)
                                for j in range(len(cols)))
    opt = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=lr)
    encoder.train()
    losses = []
    for step in range(steps):
        idx = global_batch_indices(len(dataset), batch, step, seed)
        z = encoder(dataset.__getitems__(idx.tolist()))
        y = labels[idx]
        loss = sum(torch.nn.functional.cross_entropy(h(z), y[:, j]) for j, h in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def _machine(threads: int | None) -> dict:
    return {"cpu": _cpu(), "threads": threads or torch.get_num_threads(), "torch": torch.__version__,
            "diti": __version__, "python": platform.python_version()}


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


# ----------------------------------------------------------------------------------------------------------------
# Reading the points back: tables and figures
# ----------------------------------------------------------------------------------------------------------------
def load_points(results: Path) -> dict[str, dict[int, list[dict]]]:
    """variant -> step -> the point of every seed that has it (sorted by seed)."""
    table: dict[str, dict[int, list[dict]]] = {}
    for path in sorted(Path(results).glob("*/seed*/step*.json")):
        row = json.loads(path.read_text())
        table.setdefault(row["variant"], {}).setdefault(row["step"], []).append(row)
    for steps in table.values():
        for rows in steps.values():
            rows.sort(key=lambda r: r["seed"])
    return table


def split_screens(table: dict[str, dict[int, list[dict]]]) -> tuple[dict, dict]:
    """(curves, screens): each variant's points up to the last step that at least half of its seeds reached, and
    the points after it, which fewer seeds reached (a one-seed screen beyond a 3-seed curve). The tables' last
    point and the figures' mean curves use the first only. Half, not all: a sweep whose third seed is still on
    its way keeps its two-seed last point, and a variant of one long seed and one stopped early keeps the long
    one's."""
    curves, screens = {}, {}
    for v, steps in table.items():
        need = -(-len({r["seed"] for rows in steps.values() for r in rows}) // 2)
        last = max(step for step, rows in steps.items() if len(rows) >= need)
        curves[v] = {step: rows for step, rows in steps.items() if step <= last}
        beyond = {step: rows for step, rows in steps.items() if step > last}
        if beyond:
            screens[v] = beyond
    return curves, screens


def load_extra(results: Path, name: str) -> dict[str, list[dict]]:
    """variant -> the ``name`` file (fidelity.json, peers.json) of every seed that has one (sorted by seed)."""
    out: dict[str, list[dict]] = {}
    for path in sorted(Path(results).glob(f"*/seed*/{name}")):
        row = json.loads(path.read_text())
        out.setdefault(row["variant"], []).append(row)
    return out


# the --fidelity and --peers evaluations run at the last point of the call that asked for them: a later call to more
# points leaves them where they were, so their tables name the images they were measured at
MEASURED_AT = ("Each row at the images its runs were evaluated at (`--fidelity` / `--peers` run at the last point of "
               "the call that asks for them; a later call to more points does not move them).")


def _images(rows: list[dict]) -> str:
    """The distinct numbers of images a variant's seeds were evaluated at (one, unless a seed lags); '–' for the
    references, which have no training curve (their points are at 0 images)."""
    return " / ".join(f"{i:,}" if i else "–" for i in sorted({r["images"] for r in rows}))


def fidelity_lines(fidelity: dict[str, list[dict]], crossings: dict[str, float]) -> list[str]:
    """Markdown: hit rate and leakage per dim group (evaluation/fidelity.py:hit_and_leakage), mean ± std over
    the seeds, beside the reconstruction ceiling. Groups are matched by index (the same t-range); when their
    dims differ by seed, the label lists each distinct one."""
    lines = ["", "### Counterfactual fidelity", "",
             "Swapping one dim group from a source into a target (decoded from the target's x_T): **hit** = how "
             "often the factors the DM loses in the group's t-range take the source's value, **leakage** = how "
             "often the other factors leave the target's (reconstruction errors included: compare with 1 - the "
             "reconstruction accuracy). PDAE's groups take the t-ranges DiTi's balanced partition gives the same "
             f"dims. {MEASURED_AT}", "",
             "| variant | seeds | images | group | t-range | its factors | hit | leakage | "
             "1 - reconstruction accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in sorted(fidelity, key=lambda v: (v != "pdae", v)):
        rows = fidelity[v]
        per_seed = [hit_and_leakage(FidelityResult.from_dict(r), crossings, r.get("reference_t_ranges"))
                    for r in rows]
        recon = _ms([1 - float(np.nanmean([x for x in r["reconstruction_accuracy"] if x is not None]))
                     for r in rows])
        if len({len(seed) for seed in per_seed}) > 1:
            raise ValueError(f"{v}: the seeds' fidelity results have different numbers of dim groups")
        for g, first in enumerate(per_seed[0]):
            hits = [seed[g]["hit"] for seed in per_seed]
            leaks = [seed[g]["leakage"] for seed in per_seed]
            # a rule read per seed (removed loss) gives each seed its own dims: name them all, in seed order
            group = "; ".join(dict.fromkeys(seed[g]["group"] for seed in per_seed))
            lines.append(f"| {v} | {len(rows)} | {_images(rows)} | {group} | {first['t_range'][0]}-{first['t_range'][1]} | "
                         f"{', '.join(first['factors']) or '-'} | {_ms(hits)} | {_ms(leaks)} | {recon} |")
    return lines


def placement(row: dict, crossings: dict[str, float], factors: list[str], wanted: list[str] | None = None,
              held: float = HELD, timesteps: int = 1000) -> tuple[list[str], list[str]]:
    """The whole-claim goal on one point: of the ``wanted`` factors (default all; ``factors`` is the order of the
    alignment's columns), the ones it holds (probe >= ``held``) and, of those, the ones whose largest DCI
    importance share lies in the chunk whose t-range holds the DM's crossing, or a neighbour of it. The chunks'
    t-ranges are the point's partition's when it has one entry per chunk of the alignment, else (PDAE: the
    reference partition's dim groups) the balanced grid. Returns (held, placed)."""
    share = np.asarray(row["alignment"]["chunk_importance_share"])
    n = share.shape[0]
    part = row.get("partition") or []
    firsts = [int(c["t_first"]) for c in part] if len(part) == n else chunk_first_timesteps(n, timesteps)
    kept = [f for f in (factors if wanted is None else wanted) if row["probe"][f] >= held]
    # the chunk holding the crossing: the last one that starts at or before it
    placed = [f for f in kept
              if abs(int(np.argmax(share[:, factors.index(f)])) - (bisect_right(firsts, crossings[f]) - 1)) <= 1]
    return kept, placed


def rank_correlation(row: dict, crossings: dict[str, float], factors: list[str],
                     held: float | None = None) -> float | None:
    """Spearman's rank correlation, over the factors (``factors``: the alignment's columns), between the DM's
    crossing t and the chunk holding the factor's largest DCI importance share; with ``held``, over the factors
    whose probe reaches it only. None when fewer than 3 factors count or all sit in one chunk."""
    share = np.asarray(row["alignment"]["chunk_importance_share"])
    cols = [j for j, f in enumerate(factors) if held is None or row["probe"][f] >= held]
    chunks = np.argmax(share, 0)[cols]
    if len(cols) < 3 or np.ptp(chunks) == 0:
        return None
    return float(spearmanr([crossings[factors[j]] for j in cols], chunks).statistic)


def _per_seed(values, fmt: str = ".2f") -> str:
    """One value per seed, '/'-separated; None (undefined) as '–'."""
    return " / ".join("–" if x is None else f"{x:{fmt}}" for x in values)


def _ms(values, fmt: str = ".3f") -> str:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    if len(values) == 0:
        return "–"
    return (f"{values.mean():{fmt}}" if len(values) == 1
            else f"{values.mean():{fmt}} ± {values.std(ddof=1):{fmt}}")


def _order(table: dict) -> list[str]:
    known = [*VARIANTS, *BASELINES]
    return [v for v in known if v in table] + sorted(v for v in table if v not in known)


def reach(steps: dict[int, list[dict]], seed: int, target: float) -> tuple[float, float] | None:
    """(images, train seconds) at which one seed's probe mean first reaches ``target``: linear interpolation
    in log(images) (and in seconds) between the two points around the crossing; None if it never does."""
    rows = sorted((r for rs in steps.values() for r in rs if r["seed"] == seed), key=lambda r: r["step"])
    prev = None
    for r in rows:
        value = r["metrics"]["probe_mean"]
        if value >= target:
            if prev is None:
                return float(r["images"]), float(r["train_seconds"])
            a = (target - prev["metrics"]["probe_mean"]) / (value - prev["metrics"]["probe_mean"])
            images = float(np.exp(np.log(prev["images"]) + a * (np.log(r["images"]) - np.log(prev["images"]))))
            seconds = prev["train_seconds"] + a * (r["train_seconds"] - prev["train_seconds"])
            return images, float(seconds)
        prev = r
    return None


def format_tables(table: dict, crossings: dict[str, float] | None = None,
                  fidelity: dict[str, list[dict]] | None = None, peers: dict[str, list[dict]] | None = None,
                  screens: dict | None = None) -> str:
    """Markdown: the plateau table (the last point at least half the seeds reached), the last doubling,
    per-factor probes and the chunk holding each factor; ``screens`` (split_screens: the points past it) in a
    table of their own."""
    if not table:
        return "No finished points yet.\n"
    lines = ["Mean ± std over the seeds that reached the point (seed count in brackets).", "",
             "### At the last point", "",
             "| variant | images | seeds | " + " | ".join(METRICS) + " | train min |",
             "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    last = {}
    for v in _order(table):
        step = max(table[v])
        rows = table[v][step]
        last[v] = (step, rows)
        cells = [_ms([r["metrics"].get(m) for r in rows]) for m in METRICS]
        minutes = _ms([r["train_seconds"] / 60 for r in rows], ".1f")
        lines.append(f"| {v} | {rows[0]['images']:,} | {len(rows)} | " + " | ".join(cells) + f" | {minutes} |")
    if screens:
        lines += ["", "### Beyond the last point: points fewer seeds reached", "",
                  "Points past a variant's last point (the last step at least half of its seeds reached), e.g. a "
                  "one-seed screen beyond a 3-seed curve; per seed, not in any mean above or below.", "",
                  "| variant | images | seed | " + " | ".join(METRICS) + " | train min |",
                  "|---|---|---|" + "---|" * (len(METRICS) + 1)]
        for v in _order(screens):
            for step in sorted(screens[v]):
                for r in screens[v][step]:
                    cells = [_ms([r["metrics"].get(m)]) for m in METRICS]
                    lines.append(f"| {v} | {r['images']:,} | {r['seed']} | " + " | ".join(cells)
                                 + f" | {r['train_seconds'] / 60:.1f} |")
    lines += ["", "### The last doubling: change of the probe mean (and DCI-D) from the previous point", "",
              "| variant | from | to | Δ probe mean | Δ DCI-D |", "|---|---|---|---|---|"]
    for v in _order(table):
        steps = sorted(table[v])
        if len(steps) < 2:
            continue
        a, b = steps[-2], steps[-1]
        seeds = {r["seed"] for r in table[v][a]} & {r["seed"] for r in table[v][b]}
        pa = {r["seed"]: r["metrics"] for r in table[v][a]}
        pb = {r["seed"]: r["metrics"] for r in table[v][b]}
        dp = [pb[k]["probe_mean"] - pa[k]["probe_mean"] for k in seeds]
        dd = [pb[k]["dci_d"] - pa[k]["dci_d"] for k in seeds if "dci_d" in pa[k] and "dci_d" in pb[k]]
        lines.append(f"| {v} | {table[v][a][0]['images']:,} | {table[v][b][0]['images']:,} | {_ms(dp)} | {_ms(dd)} |")
    if "pdae" in last:
        plateau = float(np.mean([r["metrics"]["probe_mean"] for r in last["pdae"][1]]))
        target = 0.95 * plateau
        lines += ["", f"### Reaching 95 % of PDAE's last probe mean ({plateau:.3f} -> {target:.3f})", "",
                  "First crossing per seed, interpolated linearly in log(images) between points. Steps: the "
                  "same crossing in training steps, each of 64 (t, noise) draws in every variant (the -m8 ones: "
                  "8 images x 8 draws), i.e. the compute; train minutes depend on what ran beside.", "",
                  "| variant | seeds reaching | images | steps | train minutes |", "|---|---|---|---|---|"]
        for v in _order(table):
            if v in BASELINES:
                continue
            hits = [reach(table[v], seed, target) for seed in sorted({r["seed"] for rows in table[v].values()
                                                                      for r in rows})]
            reached = [h for h in hits if h is not None]
            first = table[v][min(table[v])][0]
            per_step = first["images"] / first["step"]  # images per step: fewer with several draws per image
            lines.append(f"| {v} | {len(reached)} of {len(hits)} | {_ms([h[0] for h in reached], ',.0f')} | "
                         f"{_ms([h[0] / per_step for h in reached], ',.0f')} | "
                         f"{_ms([h[1] / 60 for h in reached], '.1f')} |")
    factors = list(next(iter(last.values()))[1][0]["probe"])
    lines += ["", "### Probe accuracy per factor at the last point", "",
              "| variant | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
    for v, (_, rows) in last.items():
        lines.append(f"| {v} | " + " | ".join(_ms([r["probe"][f] for r in rows]) for f in factors) + " |")
    lines += ["", "### Chunk holding the largest share of each factor's DCI importance (per seed)", "",
              "| variant | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
    for v, (_, rows) in last.items():
        if rows[0].get("alignment") is None:
            continue
        cells = []
        for j, _f in enumerate(factors):
            tops = [int(np.argmax(np.asarray(r["alignment"]["chunk_importance_share"])[:, j])) for r in rows]
            cells.append("/".join(map(str, tops)))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    if crossings and all(f in crossings for f in factors):
        lines += ["", "### Does a factor's chunk follow the time-step at which the DM loses it?", "",
                  "Spearman rank correlation, over the factors, between the frozen DM's attribute-loss crossing t "
                  "(interpolated) and the chunk holding the factor's largest importance share (the table above), "
                  "per seed. For PDAE the chunks are the same dim groups with no time meaning.", "",
                  f"The last two columns: the same over the factors the point holds (probe >= {HELD}) only, since a "
                  "factor at chance has its largest share in a chunk picked by noise ('–': fewer than 3 held, "
                  "or all in one chunk).", "",
                  "| variant | per seed | mean | held factors only, per seed | mean |", "|---|---|---|---|---|"]
        for v, (_, rows) in last.items():
            if rows[0].get("alignment") is None:
                continue
            rho = [rank_correlation(r, crossings, factors) for r in rows]
            rho_held = [rank_correlation(r, crossings, factors, held=HELD) for r in rows]
            lines.append(f"| {v} | {_per_seed(rho)} | {_ms(rho, '.2f')} | {_per_seed(rho_held)} | "
                         f"{_ms(rho_held, '.2f')} |")
        # the goal of the whole-claim issue: every factor the architecture can hold (supervised bound >= HELD,
        # when that baseline ran; else every factor) is held (probe >= HELD) and sits at its crossing's chunk
        bound = last.get("supervised")
        wanted = [f for f in factors if bound is None or np.mean([r["probe"][f] for r in bound[1]]) >= HELD]
        lines += ["", f"### Held and in place: the factors probed >= {HELD} whose largest importance is in the chunk of "
                  "the DM's crossing or a neighbour", "",
                  f"Per seed, 'p of h': h factors held of the {len(wanted)} "
                  + (f"(those the supervised bound reads >= {HELD})" if bound else "(all)")
                  + ", p of them in place; goal: all held and in place on every seed.", "",
                  "| variant | per seed | goal met |", "|---|---|---|"]
        for v, (_, rows) in last.items():
            if rows[0].get("alignment") is None or v in BASELINES:
                continue
            per = [placement(r, crossings, factors, wanted) for r in rows]
            met = all(len(p) == len(wanted) for _, p in per)
            lines.append(f"| {v} | " + " / ".join(f"{len(p)} of {len(h)}" for h, p in per)
                         + f" | {'yes' if met else 'no'} |")
    if peers:
        lines += ["", "### The peers' protocol", "",
                  "Each chunk reduced to one dim by PCA (PDAE and the references: the chunks of DiTi's balanced "
                  "partition), then disentanglement_lib's sample counts (`diti disentangle --protocol peers`, "
                  f"docs/evaluation.md): the numbers DisDiff, EncDiff and FDAE report. {MEASURED_AT}", "",
                  "| variant | seeds | images | DCI-D | FactorVAE | MIG |", "|---|---|---|---|---|---|"]
        for v in sorted(peers, key=lambda v: (v in BASELINES, v != "pdae", v)):
            rows = peers[v]
            lines.append(f"| {v} | {len(rows)} | {_images(rows)} | " + " | ".join(_ms([r["metrics"][m] for r in rows])
                                                                for m in ("dci_d", "factor_vae", "mig")) + " |")
    if fidelity and crossings:
        lines += fidelity_lines(fidelity, crossings)
    lines += ["", "### Variants", ""]
    for v in _order(table):
        desc = VARIANTS.get(v, (BASELINES.get(v, v), []))[0]
        rows = last[v][1]
        ov = rows[0].get("overrides")
        lines.append(f"- `{v}`: {desc}" + (f" — `{' '.join(portable(ov))}`" if ov else ""))
    return "\n".join(lines) + "\n"


def portable(overrides: list[str]) -> list[str]:
    """Overrides as the variant list shows them: a quoted absolute path into a checkout (its ``src/diti/`` or
    ``runs/`` folder, where the sweep's worktree lay) cut to the part from that folder on, so that the table
    names the same file on every machine."""
    return [re.sub(r'"/[^"]*?/((?:src/diti|runs)/[^"]*)"', r'"\1"', o) for o in overrides]


def plot_curves(table: dict, folder: Path, screens: dict | None = None) -> list[Path]:
    """One figure per metric: metric vs images seen (log x), mean over seeds with a ±1 std band per variant;
    the baselines as horizontal lines; ``screens`` (split_screens) as hollow markers, one per seed. And one
    figure of the probe accuracy per factor."""
    screens = screens or {}
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    folder.mkdir(parents=True, exist_ok=True)
    learned = [v for v in _order(table) if v not in BASELINES]
    colours = {v: f"C{i}" for i, v in enumerate(learned)}
    written = []

    def series(v, get):
        steps = sorted(table[v])
        xs, mean, std = [], [], []
        for st in steps:
            vals = [get(r) for r in table[v][st]]
            vals = [x for x in vals if x is not None]
            if vals:
                xs.append(table[v][st][0]["images"])
                mean.append(np.mean(vals))
                std.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        return np.array(xs), np.array(mean), np.array(std)

    def panel(ax, get, title):
        ticks = set()
        for v in learned:
            x, m, sd = series(v, get)
            ticks.update(int(i) for i in x)
            if len(x):
                n = len(table[v][max(table[v])])
                ax.plot(x, m, marker="o", ms=3, color=colours[v], label=f"{v} ({n} seeds)")
                ax.fill_between(x, m - sd, m + sd, color=colours[v], alpha=0.2)
            for rows in screens.get(v, {}).values():
                for r in rows:
                    if get(r) is not None:
                        ticks.add(int(r["images"]))
                        ax.scatter([r["images"]], [get(r)], s=18, facecolors="none", edgecolors=colours[v])
        for b, style in zip(BASELINES, ("--", ":", "-."), strict=True):
            if b in table:
                vals = [get(r) for rows in table[b].values() for r in rows]
                vals = [x for x in vals if x is not None]
                if vals:
                    ax.axhline(np.mean(vals), color="gray", linestyle=style, label=b)
        ax.set_xscale("log")
        if ticks:  # one labelled tick per point (16k, 32k, ...): the log axis' own minor labels overlap
            ax.set_xticks(sorted(ticks), [f"{i / 1000:g}k" for i in sorted(ticks)], fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training images seen")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)

    for key, label in METRICS.items():
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot(1, 1, 1)
        panel(ax, lambda r, key=key: r["metrics"].get(key), label)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"{key}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    any_row = next(r for steps in table.values() for rows in steps.values() for r in rows)
    factors = list(any_row["probe"])
    cols = 4
    rows_n = -(-len(factors) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows_n))
    for i, f in enumerate(factors):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        panel(ax, lambda r, f=f: r["probe"].get(f), f"probe accuracy: {f}")
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    path = folder / "probe_per_factor.png"
    fig.savefig(path, dpi=100)
    written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=None, help=f"comma list of {[*VARIANTS, *BASELINES]} (default: all)")
    p.add_argument("--seeds", default=None, help="comma list (default 0,1,2; quick: 0)")
    p.add_argument("--points", default=None, help="comma list of optimizer steps (default 250,...,4000)")
    p.add_argument("--dci-points", type=int, default=None, help="DCI at the last N points (default 2; quick 1)")
    p.add_argument("--dm", default=None, help="frozen DM (default: the shipped dm-shapes2-16; needed with "
                   "--data-version 1 or --resolution 32, e.g. the shipped dm-shapes32 for version 1 at 32 px)")
    p.add_argument("--data-version", type=int, choices=[1, 2], default=None,
                   help="shapes data version (default 2; 1: every factor lost at t ~ 540-800); give --tag")
    p.add_argument("--resolution", type=int, choices=[16, 32], default=None, help="image size (default 16)")
    p.add_argument("--attribute-loss", default=None, help="the DM's attribute_loss.json (default: beside the "
                   "shipped DM) for the diti-imb-sg variant")
    p.add_argument("--jobs", type=int, default=1, help="(variant, seed) jobs in parallel, one thread each")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="training precision of the learned variants (bf16: autocast; evaluation stays float32)")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra config override for every learned variant (repeatable); give --tag with it")
    p.add_argument("--tag", default=None, help="names the folders of this sweep: runs/bench-curves-TAG and "
                   "benchmarks/results/curves-TAG (default: the precision, none for fp32)")
    p.add_argument("--out", default=None, help="run folders (data, checkpoints; default runs/bench-curves, "
                   "runs/bench-curves-bf16 with --precision bf16)")
    p.add_argument("--results", default=None, help="point JSON, figures, tables (default "
                   "benchmarks/results/curves or curves-bf16; quick: OUT/results)")
    p.add_argument("--fidelity", action="store_true", help="also the counterfactual fidelity of every learned "
                   "run's last point (RESULTS/<variant>/seed<k>/fidelity.json)")
    p.add_argument("--peers", action="store_true", help="also the peers' protocol (PCA of each chunk to one dim, "
                   "disentanglement_lib's counts) at every run's last point (RESULTS/<variant>/seed<k>/peers.json)")
    p.add_argument("--plot-only", action="store_true", help="only rebuild figures and tables from RESULTS")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    s = dict(SETTINGS["quick" if args.quick else "full"])
    if args.points:
        s["points"] = sorted(int(x) for x in args.points.split(","))
    if args.dci_points is not None:
        s["dci_points"] = args.dci_points
    if args.data_version is not None:
        s["version"] = args.data_version
    if args.resolution is not None:
        s["resolution"] = args.resolution
    if args.extra and not args.tag:
        p.error("--set changes the experiment: give --tag to keep its points apart")
    if (s["version"], s["resolution"]) != (2, 16) and not (args.tag and (args.dm or args.quick)):
        p.error("--data-version / --resolution change the benchmark: give --tag to keep its points apart and "
                "--dm, a DM trained on that data (the shipped one is for version 2 at 16 px)")
    tag = args.tag or ("" if args.precision == "fp32" else args.precision)
    suffix = f"-{tag}" if tag else ""
    # explicit in both cases: the presets' default (auto) depends on the machine, the points must not
    extra = (f"train.mixed_precision={PRECISIONS[args.precision]}",) + tuple(args.extra)
    out = Path(args.out or f"runs/bench-curves{suffix}")
    results = Path(args.results) if args.results else (out / "results" if args.quick
                                                         else ROOT / "results" / f"curves{suffix}")
    if args.plot_only:
        dm = Path(args.dm) if args.dm else shipped_dm("dm-shapes2-16")
        return _finish(results, args.attribute_loss or (dm / "attribute_loss.json" if dm else None))
    seeds = [int(x) for x in (args.seeds or s["seeds"]).split(",")]
    variants = (args.variants or ",".join([*VARIANTS, *BASELINES])).split(",")
    unknown = [v for v in variants if v not in VARIANTS and v not in BASELINES]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {[*VARIANTS, *BASELINES]}")
    out.mkdir(parents=True, exist_ok=True)

    data = generate_shapes(out / "data", resolution=s["resolution"], n_train=s["n_train"], n_test=s["n_test"],
                           seed=0, progress=False, version=s["version"])
    attribute_loss = args.attribute_loss
    if args.dm:
        dm = Path(args.dm)
        beside = dm / "attribute_loss.json"  # the DM's own crossings, when measured (the shipped DMs have them)
        attribute_loss = attribute_loss or (str(beside) if beside.is_file() else None)
    elif args.quick:
        cfg = build_config(PretrainConfig, s["preset"], overrides=[f"data.path={json.dumps(str(data))}",
                                                                    "train.progress=false", "train.steps=20"])
        dm = pretrain(cfg, out / "dm-run", resume=(out / "dm-run" / "config.yaml").is_file())
    else:
        dm = shipped_dm("dm-shapes2-16")
        if dm is None:
            p.error("the shipped DM dm-shapes2-16 is missing; pass --dm")
        attribute_loss = attribute_loss or (str(dm / "attribute_loss.json") if (dm / "attribute_loss.json").is_file()
                                            else None)
    if any(v in variants for v in NEEDS_CROSSINGS) and attribute_loss is None:
        if args.quick:
            variants = [v for v in variants if v not in NEEDS_CROSSINGS]  # the quick DM has no measured crossings
        else:
            p.error(f"{', '.join(v for v in variants if v in NEEDS_CROSSINGS)} need --attribute-loss")

    threads = 1 if args.jobs > 1 else None
    classifier = None
    if args.fidelity:  # one judge for every run, trained before the jobs start (they only read it)
        base = build_config(DiTiConfig, s["preset"], overrides=[f"data.path={json.dumps(str(data))}"])
        classifier = str(out / "factor_classifier.safetensors")
        factor_classifier(classifier, base.data.open("train"), base.data.open("test"), s["classifier_epochs"])
    # Baselines first (they are the reference lines), then seed-major over the learned variants: what finishes
    # first is already a comparison of every variant on one seed.
    jobs = [("baseline", v, seed) for seed in seeds for v in variants if v in BASELINES]
    jobs += [("curve", v, seed) for seed in seeds for v in variants if v in VARIANTS]

    def submit(kind, v, seed):
        if kind == "baseline":
            return run_baseline, (v, seed, s, str(data), str(dm), str(results), threads, args.peers)
        return run_curve, (v, seed, s, str(data), str(dm), str(out), str(results), attribute_loss, threads, extra,
                           classifier, args.peers)

    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))

        def stop(signum, frame):  # SIGTERM / SIGINT: end the workers too, never leave them training
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        futures = [pool.submit(fn, *a) for fn, a in (submit(*j) for j in jobs)]
        for f in futures:
            f.result()
        pool.shutdown()
    else:
        for j in jobs:
            fn, a = submit(*j)
            fn(*a)
    return _finish(results, attribute_loss)


def _finish(results: Path, attribute_loss: str | Path | None = None) -> dict:
    """Figures and curves.md from every point JSON; ``attribute_loss`` (default: the shipped DM's, in full mode)
    gives the crossings for the chunk-vs-time-step correlation."""
    table = load_points(results)
    curves, screens = split_screens(table)
    crossings = None
    if attribute_loss is not None and Path(attribute_loss).is_file():
        crossings = json.loads(Path(attribute_loss).read_text()).get("crossing_t_interp")
    text = format_tables(curves, crossings, load_extra(results, "fidelity.json"), load_extra(results, "peers.json"),
                         screens)
    results.mkdir(parents=True, exist_ok=True)
    (results / "curves.md").write_text(text)
    figures = plot_curves(curves, results / "figures", screens) if table else []
    print(text)
    return {"table": table, "figures": [str(f) for f in figures], "markdown": str(results / "curves.md")}


if __name__ == "__main__":
    main()

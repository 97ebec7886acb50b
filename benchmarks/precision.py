"""bf16 against float32 training on the converged benchmark: the first steps' loss curves and one fixed batch.

For each variant (``pdae``, ``diti-k8-sg`` of benchmarks/curves.py) and seed, two runs of the same config,
one in float32 and one under bf16 autocast (``train.mixed_precision=bf16``), ``--steps`` optimizer steps each
(default 500) with the loss logged every ``--log-every`` steps (default 10). Then the loss of one fixed batch
(``--batch`` test images, fixed t and noise) with the float32 run's final EMA weights, computed in float32 and
under bf16 autocast: the precision's own error on the same weights. Writes ``OUT/precision.json`` (the logged
losses of every run, the fixed-batch losses and their differences) and ``OUT/loss_first_steps.png`` (the
curves overlaid); resumable per run (a finished run folder is reused).

    python benchmarks/precision.py --out benchmarks/results/precision            # ~25 min on one core
    python benchmarks/precision.py --quick --out /tmp/p                            # seconds (the test suite)
"""

from __future__ import annotations

import argparse
import json
import runpy
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from diti.config import DiTiConfig, PretrainConfig, build_config
from diti.config.presets import GIVEN_PARTITION
from diti.data import generate_shapes
from diti.folders import load_diti_run
from diti.models.dm import shipped_dm
from diti.training.jobs import pretrain, train_diti

BENCH = Path(__file__).resolve().parent
PRECISIONS = {"fp32": "no", "bf16": "bf16"}


def run_config(s: dict, variant: str, seed: int, precision: str, data: Path, dm: Path) -> DiTiConfig:
    curves = runpy.run_path(str(BENCH / "curves.py"))
    overrides = [o.format(k=s["k"]) for o in curves["VARIANTS"][variant][1]]
    return build_config(DiTiConfig, s["preset"], overrides=[
        f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}", *GIVEN_PARTITION, *overrides,
        f"train.seed={seed}", f"train.steps={s['steps']}", f"train.log_every={s['log_every']}",
        f"train.checkpoint_every={s['steps']}", f"train.mixed_precision={PRECISIONS[precision]}", "train.progress=false"])


def fixed_batch_losses(run: Path, data: Path, batch: int) -> dict:
    """The loss of one fixed test batch (fixed t and noise) with the run's EMA weights, fp32 and bf16 autocast."""
    model, cfg = load_diti_run(run)
    test = cfg.data.open(split="test")
    gen = torch.Generator().manual_seed(1234)
    x0 = test.__getitems__(list(range(min(batch, len(test)))))
    t = torch.randint(0, 1000, (len(x0),), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    out = {}
    for name, ctx in (("fp32", nullcontext), ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16))):
        with torch.no_grad(), ctx():
            out[name] = float(model(x0, t, noise).mean)
    out["abs_diff"] = out["bf16"] - out["fp32"]
    out["rel_diff"] = out["abs_diff"] / out["fp32"]
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    variants = sorted({r["variant"] for r in result["runs"]})
    fig = Figure(figsize=(5.5 * len(variants), 3.8))
    for i, v in enumerate(variants):
        ax = fig.add_subplot(1, len(variants), i + 1)
        for r in (r for r in result["runs"] if r["variant"] == v):
            steps, losses = zip(*r["losses"], strict=True)
            ax.plot(steps, losses, lw=1, ls="-" if r["precision"] == "fp32" else "--",
                    color=f"C{r['seed']}", label=f"seed {r['seed']} {r['precision']}")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step (batch 64)")
        ax.set_ylabel(f"training loss (mean of {result['log_every']} steps)")
        ax.set_title(f"{v}: float32 (solid) vs bf16 autocast (dashed)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="pdae,diti-k8-sg")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--batch", type=int, default=64, help="images in the fixed batch")
    p.add_argument("--runs", default="runs/bench-precision", help="run folders (data, checkpoints)")
    p.add_argument("--out", required=True, help="folder for precision.json and the figure")
    p.add_argument("--quick", action="store_true", help="16 px quick preset, 4 steps (format check)")
    args = p.parse_args(argv)
    if args.quick:
        s = dict(preset="shapes-quick", k=4, steps=4, log_every=1, n_train=64, n_test=16, batch=8)
    else:
        s = dict(preset="shapes2-bench", k=8, steps=args.steps, log_every=args.log_every, n_train=10000,
                 n_test=2000, batch=args.batch)
    runs, out = Path(args.runs), Path(args.out)
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    data = generate_shapes(runs / "data", resolution=16, n_train=s["n_train"], n_test=s["n_test"], seed=0,
                           progress=False, version=2)
    if args.quick:
        cfg = build_config(PretrainConfig, "shapes-quick", overrides=[f"data.path={json.dumps(str(data))}",
                                                                       "train.progress=false", "train.steps=4"])
        dm = pretrain(cfg, runs / "dm-run", resume=(runs / "dm-run" / "config.yaml").is_file())
    else:
        dm = shipped_dm("dm-shapes2-16")
    result = {"steps": s["steps"], "log_every": s["log_every"], "preset": s["preset"], "runs": [], "fixed_batch": []}
    for variant in args.variants.split(","):
        for seed in (int(x) for x in args.seeds.split(",")):
            for precision in PRECISIONS:
                run = runs / variant / f"seed{seed}" / precision
                train_diti(run_config(s, variant, seed, precision, data, dm), run,
                           resume=(run / "config.yaml").is_file())
                rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
                result["runs"].append({"variant": variant, "seed": seed, "precision": precision,
                                       "losses": [[r["step"], r["loss"]] for r in rows]})
                print(f"{variant} seed {seed} {precision}: loss at step {rows[-1]['step']} {rows[-1]['loss']:.5f}",
                      flush=True)
            fp32 = runs / variant / f"seed{seed}" / "fp32"
            fixed = {"variant": variant, "seed": seed, "weights": f"float32 run's EMA at step {s['steps']}",
                     **fixed_batch_losses(fp32, data, s["batch"])}
            result["fixed_batch"].append(fixed)
            print(f"{variant} seed {seed}: fixed batch loss fp32 {fixed['fp32']:.6f}, bf16 {fixed['bf16']:.6f} "
                  f"(relative difference {fixed['rel_diff']:+.2e})", flush=True)
    for variant in {r["variant"] for r in result["runs"]}:  # the curves' gap, per variant over seeds
        pairs = {}
        for r in result["runs"]:
            if r["variant"] == variant:
                pairs.setdefault(r["seed"], {})[r["precision"]] = dict(map(tuple, r["losses"]))
        gaps = [np.mean([(b[k] - a[k]) / a[k] for k in a if k in b]) for a, b in
                ((v["fp32"], v["bf16"]) for v in pairs.values())]
        result.setdefault("mean_rel_gap_bf16_vs_fp32", {})[variant] = float(np.mean(gaps))
    (out / "precision.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "loss_first_steps.png")
    return result


if __name__ == "__main__":
    main()

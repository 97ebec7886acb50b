"""Two sets of converged-benchmark curves side by side: does a training option leave the results unchanged?

Reads the points that ``benchmarks/curves.py`` wrote for a reference (``--a``, e.g. the float32 curves in
``benchmarks/results/curves``) and a candidate (``--b``, e.g. ``benchmarks/results/curves-fast``), and for
every variant, point and metric prints the mean ± std over seeds of both, their difference and whether it is
**within the seeds' spread**: |mean_b - mean_a| <= 2 sqrt(s_a^2 / n_a + s_b^2 / n_b), twice the standard error
of the difference of two means (s: the seeds' sample standard deviation, n: the seeds at that point). Only
the seeds both sides have count. Then the probe of every factor at the last common point, and one figure
per metric with both sets of curves (``--out``).

    python benchmarks/compare_curves.py --a benchmarks/results/curves --b benchmarks/results/curves-fast \\
        --variants pdae,diti-k8-sg --out benchmarks/results/curves-fast/equivalence
"""

from __future__ import annotations

import argparse
import json
import runpy
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
CURVES = runpy.run_path(str(BENCH / "curves.py"))  # its point loader and mean ± std formatting
_ms = CURVES["_ms"]
COMPARED = {"probe_mean": "probe mean", "dci_d": "DCI-D", "chunk_d": "chunk-level D", "mig": "MIG"}


def within(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """(mean b - mean a, the tolerance 2 x the standard error of that difference, whether it holds)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    se = np.sqrt((a.var(ddof=1) / len(a) if len(a) > 1 else 0.0) + (b.var(ddof=1) / len(b) if len(b) > 1 else 0.0))
    diff = float(b.mean() - a.mean())
    return diff, float(2 * se), bool(abs(diff) <= 2 * se)


def compare(table_a: dict, table_b: dict, variants: list[str]) -> list[dict]:
    """One row per (variant, step, metric) present on both sides for the same seeds."""
    rows = []
    for v in variants:
        for step in sorted(set(table_a.get(v, {})) & set(table_b.get(v, {}))):
            pa = {r["seed"]: r for r in table_a[v][step]}
            pb = {r["seed"]: r for r in table_b[v][step]}
            seeds = sorted(set(pa) & set(pb))
            for metric in COMPARED:
                if not seeds or any(metric not in pa[s]["metrics"] or metric not in pb[s]["metrics"] for s in seeds):
                    continue
                a = [pa[s]["metrics"][metric] for s in seeds]
                b = [pb[s]["metrics"][metric] for s in seeds]
                diff, tol, ok = within(a, b)
                rows.append({"variant": v, "step": step, "images": pa[seeds[0]]["images"], "metric": metric,
                             "seeds": seeds, "a": a, "b": b, "diff": diff, "tolerance": tol,
                             "within": ok if len(seeds) > 1 else None})
    return rows


def format_rows(rows: list[dict], names: tuple[str, str]) -> str:
    lines = [f"| variant | images | seeds | metric | {names[0]} | {names[1]} | difference | tolerance | within |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "-" if r["within"] is None else ("yes" if r["within"] else "**no**")
        lines.append(f"| {r['variant']} | {r['images']:,} | {len(r['seeds'])} | {COMPARED[r['metric']]} | "
                     f"{_ms(r['a'])} | {_ms(r['b'])} | {r['diff']:+.3f} | {r['tolerance']:.3f} | {verdict} |")
    return "\n".join(lines) + "\n"


def factor_rows(table_a: dict, table_b: dict, variants: list[str], names: tuple[str, str]) -> str:
    """The probe of every factor at the last point both sides reached with the same seeds."""
    lines = []
    for v in variants:
        common = [s for s in sorted(set(table_a.get(v, {})) & set(table_b.get(v, {})))
                  if {r["seed"] for r in table_a[v][s]} & {r["seed"] for r in table_b[v][s]}]
        if not common:
            continue
        step = common[-1]
        seeds = sorted({r["seed"] for r in table_a[v][step]} & {r["seed"] for r in table_b[v][step]})
        pa = {r["seed"]: r["probe"] for r in table_a[v][step]}
        pb = {r["seed"]: r["probe"] for r in table_b[v][step]}
        if not lines:
            lines = [f"| variant | images | factor | {names[0]} | {names[1]} | difference | within |",
                     "|---|---|---|---|---|---|---|"]
        for factor in pa[seeds[0]]:
            a = [pa[s][factor] for s in seeds]
            b = [pb[s][factor] for s in seeds]
            diff, _, ok = within(a, b)
            verdict = "-" if len(seeds) < 2 else ("yes" if ok else "**no**")
            lines.append(f"| {v} | {table_a[v][step][0]['images']:,} | {factor} | {_ms(a)} | {_ms(b)} | "
                         f"{diff:+.3f} | {verdict} |")
    return "\n".join(lines) + "\n" if lines else ""


def plot(table_a: dict, table_b: dict, variants: list[str], names: tuple[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COMPARED), figsize=(4 * len(COMPARED), 3.4))
    for ax, (metric, title) in zip(axes, COMPARED.items(), strict=True):
        for i, v in enumerate(variants):
            for table, name, style in ((table_a, names[0], "-"), (table_b, names[1], "--")):
                steps = sorted(s for s in table.get(v, {}) if all(metric in r["metrics"] for r in table[v][s]))
                if not steps:
                    continue
                x = [table[v][s][0]["images"] for s in steps]
                m = [np.mean([r["metrics"][metric] for r in table[v][s]]) for s in steps]
                sd = [np.std([r["metrics"][metric] for r in table[v][s]]) for s in steps]
                ax.errorbar(x, m, yerr=sd, ls=style, marker="o", ms=3, capsize=2, color=f"C{i}",
                            label=f"{v} ({name})")
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("training images")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="reference results folder (benchmarks/curves.py --results)")
    p.add_argument("--b", required=True, help="candidate results folder")
    p.add_argument("--names", default="fp32,fast", help="the two sets' names in the tables")
    p.add_argument("--variants", default="pdae,diti-k8-sg")
    p.add_argument("--out", help="folder for equivalence.md, equivalence.json and the figure")
    args = p.parse_args(argv)
    load_points = CURVES["load_points"]
    table_a, table_b = load_points(Path(args.a)), load_points(Path(args.b))
    variants = args.variants.split(",")
    names = tuple(args.names.split(","))
    if len(names) != 2:
        p.error("--names takes two comma-separated names")
    rows = compare(table_a, table_b, variants)
    if not rows:
        raise SystemExit(f"no point that both {args.a} and {args.b} have for {variants}")
    text = (f"{names[1]} ({args.b}) against {names[0]} ({args.a}); within: |difference| <= tolerance = 2 x the "
            "standard error of the difference of the two means over seeds.\n\n" + format_rows(rows, names)
            + "\nProbe accuracy per factor at the last common point:\n\n" + factor_rows(table_a, table_b, variants, names))
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "equivalence.md").write_text(text)
        (out / "equivalence.json").write_text(json.dumps(rows, indent=1))
        plot(table_a, table_b, variants, names, out / "equivalence.png")
    return rows


if __name__ == "__main__":
    main()

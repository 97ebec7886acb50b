"""Latency of the explorer's counterfactual edit: with both inversions cached, and first (inversions included).

What a user of `diti explore` waits for after moving the slider (cached: one DDIM decoding) and after picking
a new pair (first: two DDIM inversions, then the decoding), measured through the explorer's own callback
(`diti.app.explorer.Explorer.counterfactual`, without the HTTP round trip). The model is the shipped 32 px DM
(`src/diti/assets/dm-shapes32`) with a run of preset `shapes-demo` (d = 64, k = 8) trained for 2 steps of
batch 16 in a temporary folder: latency depends on the networks' sizes, not on how long they were trained. Each repeat of
the first edit uses a new pair of test images (nothing cached); each repeat of the cached edit a new alpha.
The edit swaps chunks 4-7 (t 500-999) of b into a, keeping a's x_T.

    python benchmarks/explore.py                       # 32 px, 25 DDIM steps, 2 threads, 10 repeats
    python benchmarks/explore.py --threads 1 --steps 50
    python benchmarks/explore.py --quick               # 16 px random DM, seconds; used by the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

GOAL_S = 2.0  # the goal for an edit with cached inversions on CPU


def build_model(root: Path, quick: bool):
    """(pipeline, test data set): a shapes-demo run on the shipped DM (quick: shapes-quick on a random 16 px DM)."""
    import diti
    from diti.config import DiTiConfig, UNetConfig, build_config
    from diti.config.presets import GIVEN_PARTITION
    from diti.data import generate_shapes
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import build_unet, save_dm, shipped_dm
    from diti.training.jobs import train_diti

    resolution = 16 if quick else 32
    data = generate_shapes(root / "data", resolution=resolution, n_train=64, n_test=48, seed=0, progress=False)
    if quick:
        torch.manual_seed(0)
        unet = build_unet(UNetConfig(block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8,
                                     attention_head_dim=8), resolution)
        dm, preset = save_dm(unet, root / "dm", NoiseSchedule()), "shapes-quick"
    else:
        dm, preset = shipped_dm(), "shapes-demo"
        if dm is None:
            raise SystemExit("the shipped DM (src/diti/assets/dm-shapes32) is missing")
    cfg = build_config(DiTiConfig, preset, overrides=[f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}",
                                                       "train.steps=2", "train.batch_size=16", "train.progress=false",
                                                       *GIVEN_PARTITION])
    run = train_diti(cfg, root / "run")
    model = diti.load(run)
    return model, model.dataset(data, "test")


def measure(model, dataset, steps: int, repeats: int) -> dict:
    from diti.app.explorer import Explorer

    explorer = Explorer(model, dataset, steps=steps)
    k = model.partition.k
    chunks = list(range(k // 2, k))  # the second half of the time-steps
    images = dataset.images(list(range(2 * (repeats + 1))))
    explorer.counterfactual(images[0], images[1], [], chunks, 1.0)  # warm-up (allocations, caches)
    first, cached = [], []
    for r in range(repeats):
        a, b = images[2 * r + 2], images[2 * r + 3]  # a new pair: both inversions are computed
        start = time.perf_counter()
        out, message = explorer.counterfactual(a, b, [], chunks, 1.0)
        first.append(time.perf_counter() - start)
        if out is None or "both computed" not in message:
            raise RuntimeError(f"the first edit did not run as intended: {message}")
    for r in range(repeats):
        start = time.perf_counter()
        out, message = explorer.counterfactual(a, b, [], chunks, r / max(repeats - 1, 1))
        cached.append(time.perf_counter() - start)
        if out is None or "both cached" not in message:
            raise RuntimeError(f"the cached edit did not run as intended: {message}")
    return {"first_edit": _stats(first), "cached_edit": _stats(cached), "chunks": chunks}


def _stats(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2], "min_s": min(times),
            "max_s": max(times), "times_s": times}


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_1_5_15": load}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps of each inversion and decoding")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="16 px random DM, 5 steps, 2 repeats (format check)")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 5, 2
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, dataset = build_model(Path(tmp), args.quick)
        row = measure(model, dataset, args.steps, args.repeats)
    result = {"model": model.describe(), "resolution": model.resolution, "steps": args.steps,
              "repeats": args.repeats, "quick": args.quick, "machine": machine(), **row}
    first, cached = row["first_edit"], row["cached_edit"]
    print(f"explorer edit latency: {result['model']}, {args.steps} DDIM steps, {torch.get_num_threads()} CPU "
          f"thread(s), median of {args.repeats} repeats (IQR)")
    print(f"  edit with cached inversions: {cached['median_s']:.3f} s ({cached['q1_s']:.3f}-{cached['q3_s']:.3f})")
    print(f"  first edit (two inversions): {first['median_s']:.3f} s ({first['q1_s']:.3f}-{first['q3_s']:.3f})")
    verdict = "met" if cached["median_s"] < GOAL_S else "NOT met"
    print(f"  goal (cached edit < {GOAL_S:g} s on CPU): {verdict}; load average at the end "
          f"{result['machine']['load_average_1_5_15']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

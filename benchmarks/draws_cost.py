"""Cost of several (t, eps) draws per image (``objective.draws_per_image``) against one, per image and per draw.

One DiTi training step (forward + backward + Adam) on B images with m draws each: the encoder runs once per
image, the frozen DM and the shift decoder m times. The benchmark's models (preset ``shapes2-bench``: 16 px,
the 1.1M-parameter UNet of dm-shapes2-16, d = 32, k = 8) with random weights; m = 1, 2, 4, 8 interleaved,
median step time over the repeats.

    python benchmarks/draws_cost.py --out benchmarks/results/draws_cost_cpu.json
    python benchmarks/draws_cost.py --quick          # seconds; used by the test suite
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from diti.config import DiTiConfig, UNetConfig, build_config
from diti.models.diti import DiTiModel
from diti.models.dm import build_unet

BENCH_UNET = UNetConfig(block_out_channels=[32, 64, 64], attention_levels=[1], norm_num_groups=16,
                        attention_head_dim=32)
QUICK_UNET = UNetConfig(block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8, attention_head_dim=8)


def build(quick: bool) -> DiTiModel:
    torch.manual_seed(0)
    unet = build_unet(QUICK_UNET if quick else BENCH_UNET, 16)
    cfg = build_config(DiTiConfig, "shapes-quick" if quick else "shapes2-bench", overrides=["data.resolution=16"])
    return DiTiModel.from_config(cfg, unet).train()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="images per step (B)")
    p.add_argument("--draws", default="1,2,4,8", help="comma list of m")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="JSON to write")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.repeats, args.draws = 4, 2, "1,2"
    torch.set_num_threads(args.threads)
    model = build(args.quick)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-4)
    draws = [int(m) for m in args.draws.split(",")]
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(args.images, 3, 16, 16, generator=gen) * 2 - 1

    def step(m: int) -> float:
        t = torch.randint(0, 1000, (args.images * m,), generator=gen)
        noise = torch.randn(args.images * m, 3, 16, 16, generator=gen)
        start = time.perf_counter()
        model(x0, t, noise).mean.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for m in draws:  # warm-up
        step(m)
    times = {m: [] for m in draws}
    for _ in range(args.repeats):
        for m in draws:  # interleaved: machine noise hits every m alike
            times[m].append(step(m))
    rows = []
    base = statistics.median(times[draws[0]])
    for m in draws:
        med = statistics.median(times[m])
        rows.append({"draws": m, "images": args.images, "median_s": med, "s_per_image": med / args.images,
                     "s_per_draw": med / (args.images * m), "vs_first": med / base})
    result = {"rows": rows, "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__,
              "python": platform.python_version(), "quick": args.quick}
    print(f"{'m':>3}  {'s/step':>8}  {'ms/image':>9}  {'ms/draw':>8}  vs m={draws[0]}")
    for r in rows:
        print(f"{r['draws']:>3}  {r['median_s']:>8.3f}  {1e3 * r['s_per_image']:>9.2f}  {1e3 * r['s_per_draw']:>8.2f}"
              f"  {r['vs_first']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

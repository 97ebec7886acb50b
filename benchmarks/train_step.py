"""Time per training step of a plain DDPM step and of a DiTi step built on the same UNet, side by side.

(a) DDPM: UNet2DModel forward + backward + Adam on the eps loss (what `diti pretrain` does);
(b) DiTi: encoder + frozen DM (forward only, no grad) + shift decoder, backward + Adam on E and G.
Both at the same resolution and batch, repeats interleaved (a, b, a, b, ...) so that machine noise hits
both alike; reports median and inter-quartile range of the step time, images/s, the ratio DiTi / DDPM and
peak memory. Sizes: the shapes-demo models at 32 px, and the CelebA64 preset (official encoder, d=512,
k=64) on a UNet of the official CelebA64 DM's shape at 64 px.

    python benchmarks/train_step.py                       # CPU, both sizes
    python benchmarks/train_step.py --device cuda --precision bf16 --batch 128
    python benchmarks/train_step.py --profile             # where does the time go (torch.profiler)
    python benchmarks/train_step.py --quick               # seconds; used by the test suite
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from diti.config import DiTiConfig, UNetConfig, build_config
from diti.diffusion.schedule import NoiseSchedule
from diti.models.ddpm import DDPMObjective
from diti.models.diti import DiTiModel
from diti.models.dm import build_unet
from diti.models.encoder import Encoder

# name -> (resolution, UNet, DiTi preset). The 64 px UNet has the official CelebA64 DM's shape (channels
# 128-256-256-256, 2 ResNet blocks per level, attention at 16x16, scale-shift norm): ~35M parameters.
SIZES = {
    "32px-shapes-demo": (32, UNetConfig(block_out_channels=[32, 64, 64], attention_levels=[1], norm_num_groups=16,
                                        attention_head_dim=32), "shapes-demo"),
    "64px-celeba64": (64, UNetConfig(block_out_channels=[128, 256, 256, 256], layers_per_block=2,
                                     attention_levels=[2], norm_num_groups=32, attention_head_dim=64),
                      "celeba64-diti64"),
    "16px-quick": (16, UNetConfig(block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8,
                                  attention_head_dim=8), "shapes-quick"),
}


def build(size: str, device: torch.device, which: tuple[str, ...] = ("ddpm", "diti")):
    """(resolution, DDPM objective or None, DiTi model or None) on the same randomly initialised UNet."""
    resolution, unet_cfg, preset = SIZES[size]
    torch.manual_seed(0)
    unet = build_unet(unet_cfg, resolution)
    ddpm = DDPMObjective(unet, NoiseSchedule()).to(device).train() if "ddpm" in which else None
    diti = None
    if "diti" in which:
        cfg: DiTiConfig = build_config(DiTiConfig, preset)
        frozen = build_unet(unet_cfg, resolution)
        frozen.load_state_dict(unet.state_dict())
        enc = cfg.encoder
        encoder = Encoder(resolution, cfg.partition.latent_dim, 3, enc.channels, enc.attn_resolutions,
                          enc.norm_groups, enc.attn_heads)
        diti = DiTiModel(frozen, encoder, cfg.partition.build(1000), NoiseSchedule(), cfg.partition.mode)
        diti = diti.to(device).train()
    return resolution, ddpm, diti


def make_step(module, params, batch, resolution, device, autocast):
    opt = torch.optim.Adam(params, lr=1e-4)
    x0 = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    gen = torch.Generator(device="cpu").manual_seed(0)

    def step():
        t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        with autocast():
            out = module(x0, t, noise)
        out.mean.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(args, size):
    device = torch.device(args.device)
    resolution, ddpm, diti = build(size, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    steps = {
        "ddpm": make_step(ddpm, list(ddpm.parameters()), args.batch, resolution, device, autocast),
        "diti": make_step(diti, diti.trainable_parameters(), args.batch, resolution, device, autocast),
    }
    times = {k: [] for k in steps}
    memory = {}
    for name, step in steps.items():  # warm-up, and peak memory of each variant alone
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step()
        sync(device)
        if device.type == "cuda":
            memory[name] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(args.repeats):
        for name, step in steps.items():  # interleaved
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    row = {"size": size, "resolution": resolution, "batch": args.batch, "device": args.device,
           "precision": args.precision, "repeats": args.repeats,
           "params_unet_M": sum(p.numel() for p in ddpm.parameters()) / 1e6,
           "params_trainable_diti_M": sum(p.numel() for p in diti.trainable_parameters()) / 1e6}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        row[name] = {"median_s": statistics.median(ts), "q1_s": q[0], "q3_s": q[2],
                     "img_per_s": args.batch / statistics.median(ts)}
        if name in memory:
            row[name]["peak_mem_MiB"] = memory[name]
    row["ratio_diti_over_ddpm"] = row["diti"]["median_s"] / row["ddpm"]["median_s"]
    if args.profile:
        row["profile"] = {name: profile(step, device) for name, step in steps.items()}
    return row


def profile(step, device) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


def _peak_rss_mib() -> float:
    """This process's peak resident set size in MiB. Linux: VmHWM of /proc/self/status, which starts afresh at
    exec (ru_maxrss does not: it keeps the peak of the process that forked us, here the benchmark itself)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_peak_memory(args, size) -> dict:
    """Peak RSS of each variant on CPU, each in a fresh process (RSS only grows, so one process per variant)."""
    import subprocess

    out = {}
    for name in ("ddpm", "diti"):
        # only this variant's model is built in the process, so its peak RSS is its own
        code = (
            "import runpy, torch; "
            f"b = runpy.run_path({__file__!r}); "
            f"r, d, m = b['build']({size!r}, torch.device('cpu'), ({name!r},)); "
            f"mod = d if {name!r} == 'ddpm' else m; "
            f"params = list(d.parameters()) if {name!r} == 'ddpm' else m.trainable_parameters(); "
            f"s = b['make_step'](mod, params, {args.batch}, r, torch.device('cpu'), b['nullcontext']); s(); s(); "
            "print(b['_peak_rss_mib']())"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[name] = float(res.stdout.strip().splitlines()[-1])
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="32px-shapes-demo,64px-celeba64", help=f"comma list of {list(SIZES)}")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per variant")
    p.add_argument("--quick", action="store_true", help="16 px, batch 4, 2 repeats (format check)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats, args.warmup = "16px-quick", 4, 2, 1
    rows = []
    for size in args.sizes.split(","):
        if size not in SIZES:
            p.error(f"unknown size {size!r}; choose from {list(SIZES)}")
        row = measure(args, size)
        if args.device == "cpu" and not args.quick:
            for name, mib in cpu_peak_memory(args, size).items():
                row[name]["peak_rss_MiB"] = mib
        rows.append(row)
        print_row(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=2)
    return rows


def print_row(row: dict) -> None:
    print(f"\n{row['size']} ({row['resolution']} px, batch {row['batch']}, {row['device']}, {row['precision']}, "
          f"{row['repeats']} interleaved repeats)")
    print(f"{'step':<6} {'median s':>9} {'IQR s':>17} {'img/s':>8} {'peak MiB':>9}")
    for name in ("ddpm", "diti"):
        r = row[name]
        mem = r.get("peak_mem_MiB", r.get("peak_rss_MiB"))
        print(f"{name:<6} {r['median_s']:>9.4f} {r['q1_s']:>8.4f}-{r['q3_s']:<8.4f} {r['img_per_s']:>8.1f} "
              f"{'' if mem is None else f'{mem:9.0f}'}")
    print(f"DiTi / DDPM step time: {row['ratio_diti_over_ddpm']:.3f}")
    for name, table in row.get("profile", {}).items():
        print(f"\nprofile of the {name} step (3 steps):\n{table}")


if __name__ == "__main__":
    main()

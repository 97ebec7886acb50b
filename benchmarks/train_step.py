"""Time per training step of a plain DDPM step and of a DiTi step built on the same UNet, side by side.

(a) DDPM: UNet2DModel forward + backward + Adam on the eps loss (what `diti pretrain` does);
(b) DiTi: encoder + frozen DM (forward only, no grad) + shift decoder, backward + Adam on E and G.
Both at the same resolution and batch, repeats interleaved (a, b, a, b, ...) so that machine noise hits
both alike; reports median and inter-quartile range of the step time, images/s, the ratio DiTi / DDPM,
peak memory, and the FLOPs of one step of each (forward + backward, counted by torch.utils.flop_counter;
the optimizer's element-wise work is not counted) with their ratio: the FLOP ratio is what the time ratio
would be if every FLOP cost the same, so the time ratio can be read against it. Sizes: the shapes-demo
models at 32 px, and the CelebA64 preset (official encoder, d=512, k=64) on a UNet of the official CelebA64
DM's shape at 64 px.

``--official PATH`` (PATH: a local clone of the official DiTi repository, yue-zhongqi/diti; its modules are
imported from there, nothing is copied) adds one side-by-side row on the same architecture, batch and
threads, four steps interleaved: the official DDPM step (its UNet and GaussianDiffusion's
regular_train_one_batch), the official DiTi step (its ShiftUNet with the DM's weights loaded, its
CELEBA64Encoder and GaussianDiffusion's pdae_timestep_loss with the partition's masks), and diti's DDPM and
DiTi steps on the same DM weights converted to a diffusers UNet2DModel (diti.models.convert). The DM is a
guided-diffusion UNet of the 64px-celeba64 shape (base 128, multipliers 1-2-2-2, 2 residual blocks per
level, attention at 16x16 with 64-channel heads, residual up/down-sampling), randomly initialised; the row
also reports the largest difference between the two eps_theta on one batch (same weights: ~1e-6).

    python benchmarks/train_step.py                       # CPU, both sizes
    python benchmarks/train_step.py --device cuda --precision bf16 --batch 128
    python benchmarks/train_step.py --profile             # where does the time go (torch.profiler)
    python benchmarks/train_step.py --official /tmp/diti-official --sizes "" --batch 4 --repeats 5
    python benchmarks/train_step.py --quick               # seconds; used by the test suite
    python benchmarks/train_step.py --modes all --sizes 16px-shapes2-bench,32px-shapes-demo,64px-celeba64 \
        --batches 64,32,4 --repeats 6 --memory --out benchmarks/results/train_modes_cpu.json

``--modes`` times the DDPM and DiTi steps of each size in several execution modes (MODES: fp32, bf16
autocast, channels_last, fused Adam, the frozen DM stored in bf16, the math attention kernel, torch.compile in
fp32 and bf16), each mode on a fresh copy of the same weights, repeats interleaved over every (mode, model),
and reports per mode: median and IQR of the step time, speed-up over fp32, the first step's time (for the
compiled modes: ``compile_s``, the first step minus the median, and ``pays_off_after_steps``, after how many
steps the compiled step has saved its compile time over the same mode eager), the loss of the first step on
one fixed batch against fp32, and (``--memory``, eager modes) the peak RSS of a fresh process running it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from diti.config import DiTiConfig, UNetConfig, build_config
from diti.config.presets import PRETRAIN_PRESETS
from diti.diffusion.schedule import NoiseSchedule
from diti.models.ddpm import DDPMObjective
from diti.models.diti import DiTiModel
from diti.models.dm import build_unet
from diti.models.encoder import Encoder

# name -> (resolution, UNet, DiTi preset). The 64 px UNet has the official CelebA64 DM's shape (channels
# 128-256-256-256, 2 ResNet blocks per level, attention at 16x16, scale-shift norm): ~35M parameters.
SIZES = {
    "16px-shapes2-bench": (16, UNetConfig(block_out_channels=[32, 64, 64], attention_levels=[1], norm_num_groups=16,
                                          attention_head_dim=32), "shapes2-bench"),
    "32px-shapes-demo": (32, UNetConfig(block_out_channels=[32, 64, 64], attention_levels=[1], norm_num_groups=16,
                                        attention_head_dim=32), "shapes-demo"),
    "64px-celeba64": (64, UNetConfig(block_out_channels=[128, 256, 256, 256], layers_per_block=2,
                                     attention_levels=[2], norm_num_groups=32, attention_head_dim=64),
                      "celeba64-diti64"),
    "16px-quick": (16, UNetConfig(block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8,
                                  attention_head_dim=8), "shapes-quick"),
    # the disentanglement benchmarks' 64-px DM (preset shapes3d64, 27.7M parameters) and DiTi (shapes3d64-diti,
    # k = 6, d = 192): the step times the README's cost estimate for Shapes3D, MPI3D and Cars3D needs
    "64px-bench64": (64, UNetConfig(**PRETRAIN_PRESETS["shapes3d64"]["unet"]), "shapes3d64-diti"),
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


def step_flops(step) -> int:
    """FLOPs of one call of ``step`` (forward + backward; torch.utils.flop_counter)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


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
    for name, step in steps.items():
        row[name]["flops"] = step_flops(step)
    row["flop_ratio_diti_over_ddpm"] = row["diti"]["flops"] / row["ddpm"]["flops"]
    if args.profile:
        row["profile"] = {name: profile(step, device) for name, step in steps.items()}
    return row


# The official side-by-side: a guided-diffusion UNet of the 64px-celeba64 shape (PDAE's argument names)
OFFICIAL_DM = {
    "input_channel": 3, "base_channel": 128, "channel_multiplier": [1, 2, 2, 2], "num_residual_blocks_of_a_block": 2,
    "attention_resolutions": [4], "num_heads": 4, "head_channel": 64, "use_new_attention_order": False, "dropout": 0.0,
}
OFFICIAL_STEPS = ("official_ddpm", "official_diti", "diti_ddpm", "diti_diti")


def official_modules(path: str) -> dict:
    """The official UNet, ShiftUNet, CELEBA64Encoder and GaussianDiffusion, imported from the clone at ``path``."""
    root = Path(path).expanduser().resolve()
    if not (root / "model" / "unet" / "shift_unet.py").is_file():
        raise SystemExit(f"--official {path}: not a clone of the official DiTi repository (no model/unet/shift_unet.py)")
    sys.path.insert(0, str(root))  # its package `model` sits at the clone's root, as its own scripts expect
    from model.diffusion.gaussian_diffusion import GaussianDiffusion
    from model.representation.encoder.celeba64 import CELEBA64Encoder
    from model.unet.shift_unet import ShiftUNet
    from model.unet.unet import UNet

    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"UNet": UNet, "ShiftUNet": ShiftUNet, "Encoder": CELEBA64Encoder, "GaussianDiffusion": GaussianDiffusion,
            "root": str(root), "commit": commit}


def _official_step(loss_fn, params, autocast):
    opt = torch.optim.Adam(params, lr=1e-4)

    def step():
        with autocast():
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure_official(args, path: str) -> dict:
    """The four steps of the official side-by-side (module docstring), interleaved."""
    from diti.models.convert import guided_to_unet2d

    device = torch.device(args.device)
    off = official_modules(path)
    cfg: DiTiConfig = build_config(DiTiConfig, "celeba64-diti64")
    partition = cfg.partition.build(1000)
    torch.manual_seed(0)
    unet = off["UNet"](**OFFICIAL_DM)
    with torch.no_grad():  # every weight non-zero (the zero-initialised convs too), so every path computes
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = unet.state_dict()
    converted = guided_to_unet2d(state, {"denoise_fn_config": {**OFFICIAL_DM, "image_size": 64}})

    # the official pair
    gd = off["GaussianDiffusion"]({"timesteps": 1000, "betas_type": "linear", "linear_beta_start": 1e-4,
                                   "linear_beta_end": 0.02}, device)
    off_unet = unet.to(device).train()
    decoder = off["ShiftUNet"](**OFFICIAL_DM, latent_dim=cfg.partition.latent_dim)
    decoder.load_state_dict(state, strict=False)  # the frozen half, as the official trainer loads the DM
    decoder = decoder.to(device)
    decoder.set_train_mode()
    encoder = off["Encoder"](latent_dim=cfg.partition.latent_dim).to(device).train()
    cum, prev, cur = (m.to(device) for m in partition.masks())
    # diti's pair on the same DM weights
    diti_ddpm = DDPMObjective(copy.deepcopy(converted), NoiseSchedule()).to(device).train()
    enc = cfg.encoder
    diti = DiTiModel(copy.deepcopy(converted), Encoder(64, cfg.partition.latent_dim, 3, enc.channels,
                                                       enc.attn_resolutions, enc.norm_groups, enc.attn_heads),
                     partition, NoiseSchedule(), cfg.partition.mode).to(device).train()

    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64, device=device)
        t = torch.tensor([10, 900], device=device)
        eps_off, _ = decoder(x, t, torch.zeros(2, cfg.partition.latent_dim, device=device))
        eps_diff = (eps_off - diti.dm(x, t).sample).abs().max().item()

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
    x0 = torch.rand(args.batch, 3, 64, 64, device=device) * 2 - 1
    mode = cfg.partition.mode
    official_diti_params = [*encoder.parameters(), *decoder.label_emb.parameters(),
                            *decoder.shift_middle_block.parameters(), *decoder.shift_output_blocks.parameters(),
                            *decoder.shift_out.parameters()]
    steps = {
        "official_ddpm": _official_step(lambda: gd.regular_train_one_batch(off_unet, x0)["prediction_loss"],
                                        list(off_unet.parameters()), autocast),
        "official_diti": _official_step(lambda: gd.pdae_timestep_loss(encoder, decoder, x0, None, cum, cur, prev,
                                                                       mode)[0], official_diti_params, autocast),
        "diti_ddpm": make_step(diti_ddpm, list(diti_ddpm.parameters()), args.batch, 64, device, autocast),
        "diti_diti": make_step(diti, diti.trainable_parameters(), args.batch, 64, device, autocast),
    }
    if args.diti_mode:  # diti's steps in one of its execution modes (MODES), the official ones as they are
        for name, module in (("diti_ddpm", diti_ddpm), ("diti_diti", diti)):
            if name == "diti_ddpm" and (MODES[args.diti_mode]["dm_bf16"] or MODES[args.diti_mode]["dm_fp32"]):
                continue  # a DDPM step has no frozen DM: it keeps the plain step
            steps[name] = mode_step(module, _params_of(name.removeprefix("diti_")), args.batch, 64, device,
                                    args.diti_mode)
    params = {"official_ddpm": off_unet.parameters(), "official_diti": official_diti_params,
              "diti_ddpm": diti_ddpm.parameters(), "diti_diti": diti.trainable_parameters()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    row = {"size": "64px-celeba64-guided", "resolution": 64, "batch": args.batch, "device": args.device,
           "precision": args.precision, "diti_mode": args.diti_mode or args.precision, "repeats": args.repeats,
           "threads": torch.get_num_threads(),
           "partition_mode": mode, "official_path": off["root"], "official_commit": off["commit"],
           "eps_max_abs_diff_official_vs_diti": eps_diff}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        row[name] = {"median_s": statistics.median(ts), "q1_s": q[0], "q3_s": q[2],
                     "img_per_s": args.batch / statistics.median(ts), "flops": step_flops(steps[name]),
                     "params_trainable_M": sum(p.numel() for p in params[name]) / 1e6}
    for side in ("official", "diti"):
        row[f"ratio_diti_over_ddpm_{side}"] = row[f"{side}_diti"]["median_s"] / row[f"{side}_ddpm"]["median_s"]
        row[f"flop_ratio_diti_over_ddpm_{side}"] = row[f"{side}_diti"]["flops"] / row[f"{side}_ddpm"]["flops"]
    row["ratio_diti_step_over_official_step"] = row["diti_diti"]["median_s"] / row["official_diti"]["median_s"]
    return row


def print_official(row: dict) -> None:
    print(f"\nside by side with the official code ({row['official_path']} @ {str(row['official_commit'])[:10]}): "
          f"{row['size']}, batch {row['batch']}, {row['device']}, official {row['precision']}, diti "
          f"{row['diti_mode']}, {row['threads']} threads, "
          f"{row['repeats']} interleaved repeats, partition mode {row['partition_mode']}")
    print(f"{'step':<14} {'median s':>9} {'IQR s':>17} {'img/s':>8} {'GFLOP':>9} {'trainable M':>12}")
    for name in OFFICIAL_STEPS:
        r = row[name]
        print(f"{name:<14} {r['median_s']:>9.4f} {r['q1_s']:>8.4f}-{r['q3_s']:<8.4f} {r['img_per_s']:>8.1f} "
              f"{r['flops'] / 1e9:>9.1f} {r['params_trainable_M']:>12.2f}")
    for side in ("official", "diti"):
        print(f"{side}: DiTi / DDPM step time {row[f'ratio_diti_over_ddpm_{side}']:.3f}, "
              f"FLOPs {row[f'flop_ratio_diti_over_ddpm_{side}']:.3f}")
    print(f"diti DiTi step / official DiTi step: {row['ratio_diti_step_over_official_step']:.3f}; "
          f"max |eps_official - eps_diti| = {row['eps_max_abs_diff_official_vs_diti']:.2e}")


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


# --modes: one training step of each model in several execution modes, every mode from the same weights.
# name -> the flags of the mode: bf16 autocast, torch.compile, channels_last, fused Adam, frozen DM stored in bf16
# (dm_bf16), frozen DM run in float32 under autocast (dm_fp32: decoder.frozen_fp32), SDPA math kernel
MODE_FLAGS = ("bf16", "compile", "channels_last", "fused", "dm_bf16", "dm_fp32", "sdpa_math")
MODES = {name: {f: f in flags for f in MODE_FLAGS} for name, flags in {
    "fp32": (),
    "bf16": ("bf16",),  # everything under autocast, the frozen DM's forward too
    "channels_last": ("channels_last",),
    "bf16+channels_last": ("bf16", "channels_last"),
    "fused_adam": ("fused",),
    "bf16+fused_adam": ("bf16", "fused"),
    "bf16+dm_bf16": ("bf16", "dm_bf16"),
    "bf16+dm_fp32": ("bf16", "dm_fp32"),
    "bf16+sdpa_math": ("bf16", "sdpa_math"),
    "compile": ("compile",),
    "compile+bf16": ("bf16", "compile"),
    "compile+bf16+dm_fp32": ("bf16", "compile", "dm_fp32"),
}.items()}
MODE_NOTES = {
    "bf16+dm_bf16": "the frozen DM's weights cast to bf16 once (DiTi only): no per-step cast of the frozen half",
    "bf16+dm_fp32": "E and G under bf16 autocast, the frozen DM's forward in float32 (decoder.frozen_fp32; DiTi only)",
    "bf16+sdpa_math": "bf16 with torch's math attention kernel instead of the fused (flash) CPU kernel",
    "fused_adam": "torch's fused Adam (one kernel for all parameters) instead of the default foreach Adam",
    "inference_mode": "not a mode: tensors made under torch.inference_mode cannot be saved for the decoder's "
                      "backward, and the frozen forward already runs under no_grad",
    "sdpa_encoder": "not a mode: the encoder's attention (diffusers Attention) already uses "
                    "scaled_dot_product_attention; the shapes encoders have no attention",
}


def mode_step(module, params_of, batch: int, resolution: int, device, mode: str):
    """(step function, loss of its first call): ``module`` (a fresh copy) set up for ``mode``; the first call
    runs on a fixed batch (same images, t and noise in every mode) and its loss is returned with the step."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flags = MODES[mode]
    bf16, compile_, channels_last, fused = flags["bf16"], flags["compile"], flags["channels_last"], flags["fused"]
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if hasattr(module, "decoder"):  # a DiTi model: the frozen forward in float32 only in the dm_fp32 modes
        module.decoder.frozen_fp32 = flags["dm_fp32"]
    if flags["dm_bf16"]:
        module.decoder.dm.to(torch.bfloat16)
    params = params_of(module)
    run = torch.compile(module) if compile_ else module
    opt = torch.optim.Adam(params, lr=1e-4, fused=True if fused else None)
    gen = torch.Generator().manual_seed(1)
    x0 = (torch.rand(batch, 3, resolution, resolution, generator=gen) * 2 - 1).to(device)
    t0 = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    noise0 = torch.randn(x0.shape, generator=gen).to(device)
    if channels_last:
        x0, noise0 = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise0))

    def context():
        stack = contextlib.ExitStack()
        if bf16:
            stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
        if flags["sdpa_math"]:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack

    draws = torch.Generator().manual_seed(2)

    def step(fixed: bool = False):
        t = t0 if fixed else torch.randint(0, 1000, (batch,), generator=draws).to(device)
        noise = noise0 if fixed else torch.randn(x0.shape, generator=draws).to(device)
        with context():
            out = run(x0, t, noise)
        out.mean.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.mean.detach()

    return step


def _params_of(name: str):
    return (lambda m: list(m.parameters())) if name == "ddpm" else (lambda m: m.trainable_parameters())


def measure_modes(size: str, modes: list[str], batch: int, repeats: int, warmup: int, device: torch.device,
                  models=("ddpm", "diti")) -> dict:
    """Every (mode, model) step at ``size``, repeats interleaved over all of them (module docstring of --modes)."""
    resolution, ddpm, diti = build(size, device)
    bases = {"ddpm": ddpm, "diti": diti}
    steps, out = {}, {}
    for mode in modes:
        out[mode] = {}
        for name in models:
            if (MODES[mode]["dm_bf16"] or MODES[mode]["dm_fp32"]) and name == "ddpm":
                out[mode][name] = {"skipped": "the DDPM step has no frozen DM"}
                continue
            step = mode_step(copy.deepcopy(bases[name]), _params_of(name), batch, resolution, device, mode)
            sync(device)
            start = time.perf_counter()
            loss = float(step(fixed=True))  # compilation included, on the fixed batch
            sync(device)
            out[mode][name] = {"first_step_s": time.perf_counter() - start, "loss_fixed_batch": loss}
            for _ in range(warmup):
                step()
            steps[(mode, name)] = step
            print(f"  {size} {mode} {name}: first step {out[mode][name]['first_step_s']:.1f} s", flush=True)
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for key, step in steps.items():  # interleaved over every mode and model
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[key].append(time.perf_counter() - start)
    for (mode, name), ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[mode][name].update(median_s=statistics.median(ts), q1_s=q[0], q3_s=q[2],
                               img_per_s=batch / statistics.median(ts))
    for mode in modes:
        for name in models:
            row, ref = out[mode][name], out.get("fp32", {}).get(name, {})
            if "median_s" not in row or "median_s" not in ref:
                continue
            row["speedup_over_fp32"] = ref["median_s"] / row["median_s"]
            row["loss_diff_vs_fp32"] = row["loss_fixed_batch"] - ref["loss_fixed_batch"]
            if MODES[mode]["compile"]:  # compiled: the first step's extra time, and when it is paid back
                row["compile_s"] = row["first_step_s"] - row["median_s"]
                # against the same mode uncompiled (compile+bf16 against bf16)
                eager = mode.replace("compile+", "") if mode != "compile" else "fp32"
                gain = out.get(eager, {}).get(name, {}).get("median_s", float("nan")) - row["median_s"]
                row["pays_off_after_steps"] = row["compile_s"] / gain if gain > 0 else None
    return {"size": size, "resolution": resolution, "batch": batch, "repeats": repeats, "warmup": warmup,
            "device": device.type, "threads": torch.get_num_threads(), "modes": out}


def mode_peak_rss(size: str, mode: str, name: str, batch: int) -> float:
    """Peak RSS (MiB) of a fresh process that builds one model and runs two steps of ``mode``."""
    code = (
        "import runpy, torch, copy; "
        f"torch.set_num_threads({torch.get_num_threads()}); "
        f"b = runpy.run_path({__file__!r}); "
        f"r, d, m = b['build']({size!r}, torch.device('cpu'), ({name!r},)); "
        f"mod = d if {name!r} == 'ddpm' else m; "
        f"s = b['mode_step'](mod, b['_params_of']({name!r}), {batch}, r, torch.device('cpu'), {mode!r}); "
        "s(True); s(); print(b['_peak_rss_mib']())"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def print_modes(row: dict) -> None:
    print(f"\n{row['size']} ({row['resolution']} px, batch {row['batch']}, {row['device']}, {row['threads']} "
          f"thread(s), {row['repeats']} repeats interleaved over every mode)")
    print(f"{'mode':<20} {'model':<5} {'median s':>9} {'IQR s':>17} {'speed-up':>8} {'first s':>8} "
          f"{'compile s':>9} {'pays off':>9} {'peak MiB':>9} {'dloss':>9}")
    for mode, models in row["modes"].items():
        for name, r in models.items():
            if "median_s" not in r:
                print(f"{mode:<20} {name:<5} {r.get('skipped', r.get('error', '-'))}")
                continue
            pays = r.get("pays_off_after_steps")
            print(f"{mode:<20} {name:<5} {r['median_s']:>9.4f} {r['q1_s']:>8.4f}-{r['q3_s']:<8.4f} "
                  f"{r.get('speedup_over_fp32', float('nan')):>8.3f} {r['first_step_s']:>8.1f} "
                  f"{r.get('compile_s', float('nan')):>9.1f} {'-' if pays is None else f'{pays:.0f}':>9} "
                  f"{r.get('peak_rss_MiB', float('nan')):>9.0f} {r.get('loss_diff_vs_fp32', float('nan')):>9.2e}")


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
    p.add_argument("--official", metavar="PATH", help="a clone of the official DiTi repository: add the side-by-side row")
    p.add_argument("--diti-mode", default=None, help=f"with --official: diti's steps in this mode ({', '.join(MODES)}); "
                   "the official steps keep --precision")
    p.add_argument("--modes", default=None, help=f"comma list of execution modes ({', '.join(MODES)}) or 'all': "
                   "time every (mode, model) step at each size, repeats interleaved over all of them")
    p.add_argument("--batches", default=None, help="with --modes: comma list of one batch per size (default --batch)")
    p.add_argument("--memory", action="store_true", help="with --modes: peak RSS of each eager mode in a fresh "
                   "process (compiled modes are not: the process would compile again)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.repeats, args.warmup = "16px-quick", 4, 2, 1
    if args.modes:
        return run_modes(p, args)
    rows = []
    for size in filter(None, args.sizes.split(",")):
        if size not in SIZES:
            p.error(f"unknown size {size!r}; choose from {list(SIZES)}")
        row = measure(args, size)
        if args.device == "cpu" and not args.quick:
            for name, mib in cpu_peak_memory(args, size).items():
                row[name]["peak_rss_MiB"] = mib
        rows.append(row)
        print_row(row)
    if args.official:
        row = measure_official(args, args.official)
        rows.append(row)
        print_official(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=2)
    return rows


def run_modes(p: argparse.ArgumentParser, args) -> list[dict]:
    """``--modes``: one interleaved measurement of every mode per size (module docstring)."""
    modes = list(MODES) if args.modes == "all" else args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    if args.quick:
        modes = [m for m in modes if not MODES[m]["compile"]]  # tracing takes minutes on a CPU
    if "fp32" not in modes:
        modes.insert(0, "fp32")  # the reference of every speed-up
    sizes = [x for x in args.sizes.split(",") if x]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [args.batch] * len(sizes)
    if len(batches) != len(sizes):
        p.error(f"--batches needs one batch per size ({len(sizes)})")
    rows = []
    for size, batch in zip(sizes, batches, strict=True):
        if size not in SIZES:
            p.error(f"unknown size {size!r}; choose from {list(SIZES)}")
        start = time.perf_counter()
        row = measure_modes(size, modes, batch, args.repeats, args.warmup, torch.device(args.device))
        if args.memory and args.device == "cpu":
            for mode, models in row["modes"].items():
                for name, r in models.items():
                    if "median_s" in r and not MODES[mode]["compile"]:
                        r["peak_rss_MiB"] = mode_peak_rss(size, mode, name, batch)
        row["wall_s"] = time.perf_counter() - start
        rows.append(row)
        print_modes(row)
        if args.out:  # rewritten after every size: a long run keeps what it measured
            with open(args.out, "w") as f:
                json.dump({"machine": machine(), "notes": MODE_NOTES, "command": " ".join(sys.argv), "rows": rows},
                          f, indent=2)
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
    print(f"DiTi / DDPM step time: {row['ratio_diti_over_ddpm']:.3f}; FLOPs per step "
          f"{row['ddpm']['flops'] / 1e9:.2f} / {row['diti']['flops'] / 1e9:.2f} GFLOP, "
          f"ratio {row['flop_ratio_diti_over_ddpm']:.3f}")
    for name, table in row.get("profile", {}).items():
        print(f"\nprofile of the {name} step (3 steps):\n{table}")


if __name__ == "__main__":
    main()

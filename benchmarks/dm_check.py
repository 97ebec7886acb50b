"""A frozen DM's numbers for its README: sha256 of the weights and the DDIM reconstruction error.

The images of a test split are DDIM-inverted to x_T and decoded back with the same number of steps (no
shift decoder: the DM alone); the mean squared error is on [-1, 1] and PSNR = 10 log10(4 / MSE).

    python benchmarks/dm_check.py --dm src/diti/assets/dm-shapes2-16 --data runs/shapes2-16 --images 64
    python benchmarks/dm_check.py --quick      # a random tiny DM, for the tests
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diti.config import UNetConfig
from diti.data import generate_shapes, open_dataset
from diti.diffusion.ddim import ddim_invert, ddim_sample
from diti.diffusion.schedule import NoiseSchedule
from diti.models.dm import build_unet, dm_resolution, load_dm, save_dm


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def reconstruction(dm: Path, data: Path, images: int, steps: int, split: str = "test") -> dict:
    schedule = NoiseSchedule()
    unet = load_dm(dm, schedule).eval()
    dataset = open_dataset(data, split, dm_resolution(unet))
    n = min(images, len(dataset))
    x = torch.stack([dataset[i] for i in range(n)])

    def eps(x_t, t):
        return unet(x_t, t).sample

    t0 = time.perf_counter()
    x_rec = ddim_sample(eps, schedule, ddim_invert(eps, schedule, x, steps), steps)
    mse = float(((x_rec - x) ** 2).mean())
    weights = Path(dm) / "unet" / "diffusion_pytorch_model.safetensors"
    return {"dm": str(dm), "images": n, "split": split, "ddim_steps": steps, "mse": mse,
            "psnr_db": float(10 * np.log10(4 / mse)), "seconds": time.perf_counter() - t0,
            "sha256": sha256(weights) if weights.is_file() else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dm", help="DM folder (a diffusers UNet2DModel / pipeline folder)")
    p.add_argument("--data", help="data folder with a test split at the DM's resolution")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=100, help="DDIM steps of the inversion and of the decoding")
    p.add_argument("--out", help="JSON to write")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        tmp = Path(tempfile.mkdtemp())
        torch.manual_seed(0)
        unet = UNetConfig(block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8, attention_head_dim=8)
        dm = save_dm(build_unet(unet, 16), tmp / "dm", NoiseSchedule())
        data = generate_shapes(tmp / "data", resolution=16, n_train=8, n_test=8, progress=False)
        result = reconstruction(dm, data, 4, 5)
    else:
        if not args.dm or not args.data:
            p.error("--dm and --data are required (or --quick)")
        result = reconstruction(Path(args.dm), Path(args.data), args.images, args.steps)
    print(f"{result['images']} images, {result['ddim_steps']} DDIM steps: MSE {result['mse']:.4f} on [-1, 1], "
          f"PSNR {result['psnr_db']:.1f} dB; sha256(weights) {result['sha256']}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

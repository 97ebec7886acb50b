"""Images/s of `diti encode` (data set -> features with the EMA encoder) at 32 and 64 px.

Measures the library path `encode_dataset` end to end on shapes data written to a temporary folder (array
format: decoding is a memory copy, so this is the encoder's throughput plus batching), for the shapes-demo
encoder at 32 px and the official CelebA64 encoder at 64 px, with randomly initialised weights (speed does
not depend on them).

    python benchmarks/encode.py                  # CPU
    python benchmarks/encode.py --device cuda --batch 512
    python benchmarks/encode.py --quick          # seconds; used by the test suite
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diti.config import DiTiConfig, build_config
from diti.data import generate_shapes, open_dataset
from diti.evaluation.features import encode_dataset
from diti.models.encoder import Encoder

SIZES = {"32px-shapes-demo": (32, "shapes-demo"), "64px-celeba64": (64, "celeba64-diti64"),
         "16px-quick": (16, "shapes-quick")}


def measure(size: str, n: int, batch: int, repeats: int, device: str, root: Path) -> dict:
    resolution, preset = SIZES[size]
    cfg = build_config(DiTiConfig, preset)
    enc = cfg.encoder
    torch.manual_seed(0)
    encoder = Encoder(resolution, cfg.partition.latent_dim, 3, enc.channels, enc.attn_resolutions, enc.norm_groups,
                      enc.attn_heads).to(device)
    data = generate_shapes(root / size, resolution=resolution, n_train=1, n_test=n, progress=False)
    dataset = open_dataset(data, "test")
    encode_dataset(encoder, dataset, batch_size=batch, device=device, progress=False)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        z = encode_dataset(encoder, dataset, batch_size=batch, device=device, progress=False)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    assert z.shape == (n, cfg.partition.latent_dim)
    median = statistics.median(times)
    return {"size": size, "resolution": resolution, "images": n, "batch": batch, "device": device,
            "repeats": repeats, "median_s": median, "min_s": min(times), "max_s": max(times),
            "img_per_s": n / median, "encoder_params_M": sum(p.numel() for p in encoder.parameters()) / 1e6}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="32px-shapes-demo,64px-celeba64")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="16 px, 64 images, 2 repeats (format check)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.images, args.batch, args.repeats = "16px-quick", 64, 32, 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            if size not in SIZES:
                p.error(f"unknown size {size!r}; choose from {list(SIZES)}")
            row = measure(size, args.images, args.batch, args.repeats, args.device, Path(tmp))
            rows.append(row)
            print(f"{size}: {row['img_per_s']:.0f} img/s (median of {row['repeats']}: {row['median_s']:.3f} s for "
                  f"{row['images']} images, batch {row['batch']}, {row['device']}, "
                  f"encoder {row['encoder_params_M']:.2f}M params)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()

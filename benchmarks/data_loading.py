"""Data-loader throughput: images/s of the training loader per worker count, on JPEG folders and LMDBs.

What is timed is the loader `diti train` itself uses (src/diti/training/loader.py): for each micro-batch,
decode every image (PIL), crop and resize it, draw the step's t, noise and flips, flip the images; in W
DataLoader worker processes (W = 0: in the loop's own thread). With ``--device cuda`` each batch is also
copied to the GPU (pinned memory, non-blocking) and the clock stops after a synchronisation. The first
batch is not timed (it includes starting the workers). Reported per worker count: img/s and img/s per
worker (img/s / max(W, 1)).

The data is synthetic, written once to a temporary folder: N smooth random images (a coarse random field
upsampled, plus fine noise) saved as JPEG quality 95, as files (``jpeg-folder``) and as LMDB records with
diffae's keys (``lmdb``). ``--source 64``: 64x64 images read at 64 px (decode only); ``--source celeba``:
178x218 images cropped to CelebA's 128x128 box and resized to 64 px (the CelebA64 pipeline).

    python benchmarks/data_loading.py                                  # CPU, 64 px, workers 0,1,2
    python benchmarks/data_loading.py --source celeba --workers 0,1,2
    python benchmarks/data_loading.py --device cuda --workers 0,4,8   # what gpu_check.py runs
    python benchmarks/data_loading.py --quick                          # seconds; used by the test suite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diti.data import ImageFolderDataset, LMDBDataset
from diti.data.formats import CELEBA_BOX
from diti.training.loader import StepBatches, StepBatchSampler, step_loader

SOURCES = {"64": ((64, 64), None), "celeba": ((178, 218), CELEBA_BOX)}  # (width, height), crop box


def synthetic_image(i: int, size: tuple[int, int]) -> np.ndarray:
    """A smooth random RGB image (H, W, 3) uint8: a coarse 8x8 random field, bilinearly upsampled, + noise."""
    rng = np.random.default_rng(i)
    w, h = size
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BILINEAR)
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _jpeg(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_jpeg_folder(root: Path, n: int, size: tuple[int, int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"{i:06d}.jpg").write_bytes(_jpeg(synthetic_image(i, size)))
    return root


def write_lmdb(root: Path, n: int, size: tuple[int, int]) -> Path:
    import lmdb

    env = lmdb.open(str(root), map_size=max(1 << 24, n * size[0] * size[1] * 4))
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(f"{size[0]}-{i:05d}".encode(), _jpeg(synthetic_image(i, size)))
        txn.put(b"length", str(n).encode())
    env.close()
    return root


def open_synthetic(fmt: str, root: Path, resolution: int, box) -> torch.utils.data.Dataset:
    if fmt == "jpeg-folder":
        return ImageFolderDataset(root, resolution, box=box)
    return LMDBDataset(root, resolution, box=box)


def loader_throughput(dataset, batch: int, workers: int, batches: int, device: str = "cpu",
                      prefetch_factor: int = 4) -> dict:
    """img/s of the training loader in its steady state: ``skipped`` batches untimed (what the workers had ready
    at start: max(1, workers x prefetch_factor)), then max(``batches``, 8 x workers) timed batches of ``batch``
    images, each copied to ``device``."""
    device = torch.device(device)
    shape = tuple(dataset[0].shape)
    skipped = max(1, workers * prefetch_factor)
    timed = max(batches, 8 * workers)
    sampler = StepBatchSampler(len(dataset), batch, 0, 0, skipped + timed)
    loader = step_loader(StepBatches(dataset, batch, shape, 1000, 0, hflip=True), sampler, workers, device,
                         prefetch_factor=prefetch_factor)
    it = iter(loader)
    first = time.perf_counter()
    next(it)
    first_batch_s = time.perf_counter() - first
    for _ in range(skipped - 1):
        next(it)
    start = time.perf_counter()
    for micro in it:
        for key in ("x0", "t", "noise"):
            micro[key].to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del it, loader  # ends persistent workers
    rate = timed * batch / elapsed
    return {"workers": workers, "img_per_s": rate, "img_per_s_per_worker": rate / max(workers, 1),
            "skipped_batches": skipped, "timed_batches": timed, "prefetch_factor": prefetch_factor,
            "first_batch_s": first_batch_s}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", choices=list(SOURCES), default="64")
    p.add_argument("--formats", default="jpeg-folder,lmdb")
    p.add_argument("--workers", default="0,1,2", help="comma list of worker counts")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=6, help="timed batches per worker count (at least 8 x workers, after the batches the workers had ready at start)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="64 images, batch 16, 2 batches, workers 0,1")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.batch, args.batches, args.workers = 64, 16, 2, "0,1"
    size, box = SOURCES[args.source]
    workers = [int(w) for w in args.workers.split(",")]
    result = {"source": args.source, "image_size": list(size), "crop_box": box, "resolution": args.resolution,
              "images": args.images, "batch": args.batch, "device": args.device, "jpeg_quality": 95,
              "machine": {"cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "python": platform.python_version()},
              "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            if fmt not in ("jpeg-folder", "lmdb"):
                p.error(f"unknown format {fmt!r}; choose jpeg-folder or lmdb")
            write = write_jpeg_folder if fmt == "jpeg-folder" else write_lmdb
            root = write(Path(tmp) / fmt, args.images, size)
            dataset = open_synthetic(fmt, root, args.resolution, box)
            result["rows"][fmt] = [loader_throughput(dataset, args.batch, w, args.batches, args.device)
                                   for w in workers]
    print_result(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def print_result(result: dict) -> None:
    w, h = result["image_size"]
    print(f"\ntraining loader, {w}x{h} JPEG -> {result['resolution']} px, batch {result['batch']}, "
          f"{result['images']} images, {result['device']}")
    print(f"{'format':<12} {'workers':>7} {'img/s':>9} {'img/s per worker':>17}")
    for fmt, rows in result["rows"].items():
        for r in rows:
            print(f"{fmt:<12} {r['workers']:>7} {r['img_per_s']:>9.0f} {r['img_per_s_per_worker']:>17.0f}")


if __name__ == "__main__":
    main()

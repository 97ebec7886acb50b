"""Shapes version 2 (the benchmark's data): factor table, rendering, graded pixel energies, and version 1's
files staying exactly as they were."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest

from diti.data import (
    SHAPES_V2_FACTORS,
    generate_shapes,
    open_dataset,
    render_shapes,
    sample_factors,
    shapes_factors,
)

NAMES = [f.name for f in SHAPES_V2_FACTORS]
SIZES = [len(f.values) for f in SHAPES_V2_FACTORS]


def test_factor_table():
    assert NAMES == ["background_color", "object_color", "shape", "scale", "x_position", "y_position", "texture",
                     "grain"]
    assert SIZES == [4, 4, 3, 3, 4, 4, 3, 2]
    assert shapes_factors(2) is SHAPES_V2_FACTORS and len(shapes_factors(1)) == 7
    with pytest.raises(ValueError, match="unknown shapes version 3"):
        shapes_factors(3)
    with pytest.raises(ValueError, match=r"shape \(N, 8\) for shapes version 2"):
        render_shapes(np.zeros((2, 7), dtype=np.int64), 16, version=2)


def test_every_factor_changes_the_image_and_rendering_is_deterministic():
    f = sample_factors(200, np.random.default_rng(0), version=2)
    images = render_shapes(f, 16, version=2)
    assert images.shape == (200, 16, 16, 3) and np.array_equal(images, render_shapes(f, 16, version=2))
    base = np.array([1, 0, 0, 2, 1, 2, 0, 0])
    for j, size in enumerate(SIZES):
        rows = np.stack([np.where(np.arange(8) == j, v, base) for v in range(size)])
        out = render_shapes(rows, 16, version=2)
        for a, b in itertools.combinations(range(size), 2):
            assert not np.array_equal(out[a], out[b]), f"{NAMES[j]}: values {a}, {b} render the same image"


def _energy(j: int, n: int = 300) -> float:
    """Mean squared pixel difference (on [-1, 1]) between images that differ in factor j alone."""
    rng = np.random.default_rng(j)
    a = sample_factors(n, rng, version=2)
    b = a.copy()
    b[:, j] = (a[:, j] + rng.integers(1, SIZES[j], n)) % SIZES[j]
    xa, xb = (render_shapes(x, 16, version=2).astype(np.float64) / 127.5 for x in (a, b))
    return float(((xa - xb) ** 2).sum(axis=(1, 2, 3)).mean())


def test_pixel_energies_are_graded_fine_to_coarse():
    # The design: each factor is several times fainter than the next coarser one, so that a DM loses them at
    # separated time-steps (a factor's crossing t rises with the log of its energy).
    e = {n: _energy(j) for j, n in enumerate(NAMES)}
    assert e["grain"] < e["texture"] / 3
    assert e["texture"] < e["object_color"] / 2
    assert e["object_color"] < min(e["shape"], e["scale"]) / 2
    assert max(e["shape"], e["scale"]) < min(e["x_position"], e["y_position"])
    assert max(e["x_position"], e["y_position"]) < e["background_color"] / 2


def test_grain_is_a_one_pixel_checker_on_the_object_only():
    rows = np.array([[0, 0, 0, 2, 1, 1, 0, g] for g in (0, 1)])
    plain, grain = render_shapes(rows, 16, version=2).astype(int)
    changed = np.any(grain != plain, axis=-1)
    inside = np.any(plain != plain[0, 0], axis=-1)  # the object (the corner pixel is background)
    assert changed.any() and not (changed & ~inside).any()
    assert not (changed[:, 1:] & changed[:, :-1]).any() and not (changed[1:] & changed[:-1]).any()
    assert set(np.unique(grain[changed] - plain[changed])) == {8}


def test_generate_version_2_layout(tmp_path):
    root = generate_shapes(tmp_path / "v2", resolution=16, n_train=40, n_test=10, seed=1, progress=False, version=2)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["shapes_version"] == 2 and meta["name"] == "shapes-v2"
    assert [f["name"] for f in meta["factors"]] == NAMES
    ds = open_dataset(root, "train")
    assert len(ds) == 40 and ds.attributes.names == NAMES and ds[0].shape == (3, 16, 16)


def test_version_1_files_are_unchanged(tmp_path):
    # sha256 of the files written by the code before versions existed (same arguments)
    root = generate_shapes(tmp_path / "v1", resolution=16, n_train=64, n_test=16, seed=0, progress=False)
    digest = {f: hashlib.sha256((root / f).read_bytes()).hexdigest()[:16]
              for f in ("train/images.npy", "train/factors.csv", "dataset.json")}
    assert digest == {"train/images.npy": "37e3c47785a5c0e8", "train/factors.csv": "b47ce10f887198f1",
                      "dataset.json": "adf63fec007712ce"}

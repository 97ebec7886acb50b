"""Shapes: a procedural data set with known factors, from coarse (background colour) to fine (texture).

Two versions, both reproducible byte for byte (``version`` in ``generate_shapes`` and in ``dataset.json``):

- **version 1** (the default; the presets ``shapes-demo`` and ``shapes-bench``): seven factors, every object bright on a dark background. On a
  DDPM with the linear schedule every factor is lost between t ~ 400 and 700 (texture and shape first).
- **version 2** (the benchmark's data, designed at 16 px): eight factors whose pixel energy is graded so that
  a DM loses them across the time axis: a faint 1-pixel grain first, then low-contrast stripes, close object
  hues, shape and scale, position, and the background colour last (the t at which the shipped 16-px DM loses
  each: ``assets/dm-shapes2-16/attribute_loss.json`` and its card). Objects are mid-grey-ish, so their outline
  contrasts less with the background than in version 1.

Every image is one object on a flat background. The factors are independent and uniform, so a probe on a
representation can be scored per factor, and the factors differ in granularity the way DiTi's time-steps do:
the background colour changes every pixel, the texture only flips single pixels inside the object.

Geometry is in units of the resolution R (sizes and positions scale with R); the texture is always 1-2
pixels, whatever R. A pixel belongs to the object when its centre lies inside the shape, so rendering is
exact, deterministic and has no anti-aliasing. The object always lies fully inside the image: the largest
half-size (0.25 R) is less than the distance from the outermost centre (0.28 R or 0.72 R) to the border.

``generate_shapes`` writes the ``diti-array`` format that ``diti.data.open_dataset`` reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .attributes import Attributes


@dataclass(frozen=True)
class Factor:
    """One factor of variation: its name and the names of its values (codes 0..len(values)-1)."""

    name: str
    values: tuple[str, ...]


SHAPES_FACTORS: tuple[Factor, ...] = (
    Factor("background_color", ("black", "navy", "dark_green", "maroon")),
    Factor("object_color", ("white", "yellow", "cyan", "pink")),
    Factor("shape", ("square", "circle", "triangle")),
    Factor("scale", ("small", "medium", "large")),
    Factor("x_position", ("left", "center_left", "center_right", "right")),
    Factor("y_position", ("top", "upper", "lower", "bottom")),
    Factor("texture", ("plain", "checker", "stripes")),
)
FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in SHAPES_FACTORS)

# RGB of each value, same order as SHAPES_FACTORS. Backgrounds are dark, objects bright, so every object
# colour stands out on every background (the closest pair, cyan on navy, is ~200 apart in RGB).
BACKGROUND_RGB = np.array([(0, 0, 0), (30, 40, 140), (20, 110, 40), (140, 25, 35)], dtype=np.uint8)
OBJECT_RGB = np.array([(245, 245, 245), (250, 215, 30), (30, 215, 235), (250, 110, 210)], dtype=np.uint8)
# The texture alternates the object colour with this darker version of it (40 % darker: clearly visible,
# yet still apart from the dark backgrounds, so the object's outline stays crisp).
TEXTURE_SHADE = 0.6
OBJECT_DARK_RGB = np.round(OBJECT_RGB * TEXTURE_SHADE).astype(np.uint8)
# Object side (square), diameter (circle) or base and height (triangle), as a fraction of R.
SCALE_FRACTIONS = np.array([0.3, 0.4, 0.5])
# Object centre, as a fraction of R, evenly spaced. The outermost centres are 0.28 R from the border, more
# than the largest half-size 0.25 R, so the object never touches the border (a 1 px margin at R = 32).
POSITION_FRACTIONS = np.linspace(0.28, 0.72, 4)

# Version 2: the same geometry; the factors' pixel energies are graded so that a DM loses them at separated
# time-steps (measured at 16 px with the data set's ideal denoiser, then on a trained DM: benchmarks/RESULTS.md).
# The energy of a factor, the squared pixel difference it makes, sets the signal-to-noise ratio at which the
# DM can no longer tell its values apart; each step down the list is several times fainter than the next.
SHAPES_V2_FACTORS: tuple[Factor, ...] = (
    Factor("background_color", ("black", "navy", "dark_green", "maroon")),
    Factor("object_color", ("grey", "tan", "steel", "rose")),
    Factor("shape", ("square", "circle", "triangle")),
    Factor("scale", ("small", "medium", "large")),
    Factor("x_position", ("left", "center_left", "center_right", "right")),
    Factor("y_position", ("top", "upper", "lower", "bottom")),
    Factor("texture", ("plain", "h_stripes", "v_stripes")),
    Factor("grain", ("none", "checker")),
)
# Mid-bright objects of close hues (20-45 levels apart): object colour goes before shape, and the outline
# (shape, scale, position) goes before the background colour.
V2_OBJECT_RGB = np.array([(170, 170, 170), (180, 160, 125), (145, 165, 190), (185, 145, 160)], dtype=np.float64)
V2_STRIPE_SHADE = 0.89  # 2-px stripes 11 % darker than the object (~19 levels)
V2_GRAIN_LEVELS = 8.0  # a 1-px checker 8 levels brighter on every other object pixel

SHAPES_VERSIONS: dict[int, tuple[Factor, ...]] = {1: SHAPES_FACTORS, 2: SHAPES_V2_FACTORS}

MIN_RESOLUTION = 16
_RENDER_CHUNK = 1000  # images per chunk: bounds the (chunk, R, R, 3) temporaries and drives the progress bar


def shapes_factors(version: int = 1) -> tuple[Factor, ...]:
    """The factor table of a version of the shapes data (ValueError for an unknown version)."""
    if version not in SHAPES_VERSIONS:
        raise ValueError(f"unknown shapes version {version!r}; available: {sorted(SHAPES_VERSIONS)}")
    return SHAPES_VERSIONS[version]


def sample_factors(n: int, rng: np.random.Generator, version: int = 1) -> np.ndarray:
    """(n, F) int64 factor codes, each factor uniform and independent, columns in the version's factor order."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    sizes = np.array([len(f.values) for f in shapes_factors(version)])
    return rng.integers(0, sizes, size=(n, len(sizes)), dtype=np.int64)


def render_shapes(factors: np.ndarray, resolution: int = 32, version: int = 1) -> np.ndarray:
    """Images (N, R, R, 3) uint8 for factor codes (N, F) in the version's factor order. Deterministic."""
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be >= {MIN_RESOLUTION}, got {resolution}")
    factors = _check_factors(factors, version)
    out = np.empty((len(factors), resolution, resolution, 3), dtype=np.uint8)
    for start in range(0, len(factors), _RENDER_CHUNK):
        stop = start + _RENDER_CHUNK
        out[start:stop] = _RENDERERS[version](factors[start:stop], resolution)
    return out


def _check_factors(factors: np.ndarray, version: int = 1) -> np.ndarray:
    table = shapes_factors(version)
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != len(table):
        raise ValueError(f"factors must have shape (N, {len(table)}) for shapes version {version}, "
                         f"got {factors.shape}")
    if factors.size and not np.issubdtype(factors.dtype, np.integer):
        raise ValueError(f"factors must be integer codes, got dtype {factors.dtype}")
    for j, factor in enumerate(table):
        bad = (factors[:, j] < 0) | (factors[:, j] >= len(factor.values))
        if bad.any():
            value = factors[np.argmax(bad), j]
            raise ValueError(
                f"factor {factor.name!r} has code {value}, expected 0..{len(factor.values) - 1} ({factor.values})"
            )
    return factors.astype(np.int64, copy=False)


def _object_mask(shape, scale, x, y, resolution: int) -> np.ndarray:
    """(n, R, R) bool: pixel centre inside the object, for (n,) codes of shape, scale and x/y position."""
    # 1. geometry in pixels: centre (cx, cy) and half-size h of each object, (n,) each
    cx = POSITION_FRACTIONS[x] * resolution
    cy = POSITION_FRACTIONS[y] * resolution
    h = SCALE_FRACTIONS[scale] * resolution / 2
    # offsets of pixel centres from the object centre: dx (n, 1, R) varies along width, dy (n, R, 1) along height
    centres = np.arange(resolution) + 0.5
    dx = centres[None, None, :] - cx[:, None, None]
    dy = centres[None, :, None] - cy[:, None, None]
    h = h[:, None, None]

    # 2. object mask (n, R, R): pixel centre inside the shape
    square = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    circle = dx**2 + dy**2 <= h**2
    # upward triangle, apex (cx, cy - h), base from cx - h to cx + h at cy + h: half-width grows by 1/2 per row
    triangle = (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    s = shape[:, None, None]
    return np.where(s == 0, square, np.where(s == 1, circle, triangle))


def _render_v1(factors: np.ndarray, resolution: int) -> np.ndarray:
    bg, color, shape, scale, x, y, texture = factors.T
    mask = _object_mask(shape, scale, x, y, resolution)

    # 3. texture (n, R, R): which object pixels take the darker shade. Fixed to the pixel grid, so it stays
    # 1 px (checker) or 2 px (stripes) at every resolution.
    rows, cols = np.indices((resolution, resolution))
    checker = (rows + cols) % 2 == 1
    stripes = (rows // 2) % 2 == 1
    t = texture[:, None, None]
    dark = ((t == 1) & checker) | ((t == 2) & stripes)

    # 4. compose (n, R, R, 3)
    fg = np.where(dark[..., None], OBJECT_DARK_RGB[color][:, None, None], OBJECT_RGB[color][:, None, None])
    return np.where(mask[..., None], fg, BACKGROUND_RGB[bg][:, None, None])


def _render_v2(factors: np.ndarray, resolution: int) -> np.ndarray:
    bg, color, shape, scale, x, y, texture, grain = factors.T
    mask = _object_mask(shape, scale, x, y, resolution)
    rows, cols = np.indices((resolution, resolution))
    # texture: 2-px stripes, horizontal or vertical, fixed to the pixel grid
    t = texture[:, None, None]
    dark = ((t == 1) & ((rows // 2) % 2 == 1)) | ((t == 2) & ((cols // 2) % 2 == 1))
    fg = V2_OBJECT_RGB[color][:, None, None] * np.where(dark, V2_STRIPE_SHADE, 1.0)[..., None]
    img = np.where(mask[..., None], fg, BACKGROUND_RGB[bg][:, None, None].astype(np.float64))
    # grain: a 1-px checker on the object, added on top of the texture
    bright = (grain[:, None, None] == 1) & ((rows + cols) % 2 == 1) & mask
    img = img + np.where(bright, V2_GRAIN_LEVELS, 0.0)[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


_RENDERERS = {1: _render_v1, 2: _render_v2}


def generate_shapes(
    out: str | Path,
    resolution: int = 32,
    n_train: int = 10000,
    n_test: int = 2000,
    seed: int = 0,
    progress: bool = True,
    version: int = 1,
) -> Path:
    """Write the shapes data set to ``out`` in the ``diti-array`` format and return ``out``.

    Layout: ``dataset.json``, and per split ``<split>/images.npy`` (N, R, R, 3) uint8 and
    ``<split>/factors.csv`` (``index,<factor names>``, integer codes). The same arguments give
    byte-identical files; the test split depends only on ``seed``, not on ``n_train``. ``version`` picks the
    factor design (module docstring); version 1 files are unchanged by the existence of version 2.
    """
    table = shapes_factors(version)
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be >= {MIN_RESOLUTION}, got {resolution}")
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if n < 1:
            raise ValueError(f"{label} must be >= 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # independent child seeds, so that changing n_train leaves the test split as it was
    seeds = np.random.SeedSequence(seed).spawn(2)
    splits = {"train": n_train, "test": n_test}
    classes = [list(f.values) for f in table]
    with tqdm(total=n_train + n_test, desc="shapes", unit="img", disable=not progress) as bar:
        for (split, n), child in zip(splits.items(), seeds, strict=True):
            factors = sample_factors(n, np.random.default_rng(child), version)
            images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
            for start in range(0, n, _RENDER_CHUNK):
                stop = min(start + _RENDER_CHUNK, n)
                images[start:stop] = _RENDERERS[version](factors[start:stop], resolution)
                bar.update(stop - start)
            folder = out / split
            folder.mkdir(exist_ok=True)
            np.save(folder / "images.npy", images)
            Attributes([f.name for f in table], factors, classes).to_csv(folder / "factors.csv")
    meta = {
        "format": "diti-array",
        "format_version": 1,
        "name": "shapes" if version == 1 else f"shapes-v{version}",
        "resolution": resolution,
        "seed": seed,
        "factors": [{"name": f.name, "values": list(f.values)} for f in table],
        "splits": splits,
    }
    if version != 1:  # version 1's files stay byte-identical to those written before versions existed
        meta = {**meta, "shapes_version": version}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out

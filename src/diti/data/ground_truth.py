"""The disentanglement benchmarks as released: Shapes3D, dSprites, MPI3D and Cars3D.

Each is one array of images over a full factor grid, in row-major order (the last factor varies fastest), as
disentanglement_lib and disent index them; the factor codes of image i are ``np.unravel_index(i, sizes)``.
This module holds what the four have in common: the grid (``FactorGrid``), the one data set class
(``GridDataset``), the deterministic split (``grid_split``), the layout check that refuses a file in another
layout (``check_arrays``) and the readers of each release; ``diti.data.formats`` has one ``FormatSpec`` per
data set that calls them.

The grid of a file is taken from its image count (``Release.grids``: count -> factor sizes), never assumed:
MPI3D's released files hold 1,036,800 images (6 x 6 x 2 x 3 x 3 x 40 x 40), its complex-shapes file and the
older loaders 460,800 (4 x 4 x 2 x ...). A count that is in no table is refused. The tests add small grids to
these tables (``monkeypatch.setitem``) to write tiny files in the released keys, dtypes and axis order; no grid
but the released ones is ever accepted otherwise.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .arrays import (
    H5Array,
    MappedArray,
    cache_file,
    h5_datasets,
    npz_headers,
    npz_member,
    take,
    writable_cache,
)
from .attributes import Attributes
from .datasets import ImageDataset
from .images import fit_square

logger = logging.getLogger(__name__)

# The split every format here uses (docs/evaluation.md): image i goes to "test" when its 64-bit hash
# splitmix64(SPLIT_SEED * 2**32 + i) is among the round(TEST_FRACTION * N) smallest (ties by index), else to
# "train"; "all" is every image (what the peers train on and sample their scores from).
SPLIT_SEED = 0
TEST_FRACTION = 0.1
GRID_SPLITS = ("train", "test", "all")
DEFAULT_RESOLUTION = 64  # the resolution the peers train and score at


@dataclass(frozen=True)
class FactorGrid:
    """Factor ``names``, their ``sizes`` (row-major: the last varies fastest) and value labels ``classes``."""

    names: list[str]
    sizes: tuple[int, ...]
    classes: list[list[str]]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.sizes) == len(self.classes)):
            raise ValueError(f"{len(self.names)} names, {len(self.sizes)} sizes, {len(self.classes)} label lists")
        for name, size, labels in zip(self.names, self.sizes, self.classes, strict=True):
            if len(labels) != size:
                raise ValueError(f"factor {name!r}: {len(labels)} value labels for {size} values")

    def __len__(self) -> int:
        return int(np.prod(self.sizes))

    def codes(self, indices: np.ndarray) -> np.ndarray:
        """Factor codes (len(indices), F) of the images ``indices``."""
        return np.stack(np.unravel_index(np.asarray(indices, dtype=np.int64), self.sizes), axis=1).astype(np.int64)

    def stride(self, f: int) -> int:
        """How many images apart two images are that differ by one step of factor ``f`` only."""
        return int(np.prod(self.sizes[f + 1 :]))


@dataclass(frozen=True)
class Release:
    """One released data set: its factor names (in the file's order) and the grids its files may hold."""

    name: str
    factors: tuple[str, ...]
    grids: dict[int, tuple[int, ...]] = field(hash=False)  # image count -> factor sizes

    def grid_of(self, count: int, path: Path, what: str = "images") -> tuple[int, ...]:
        if count not in self.grids:
            known = ", ".join(f"{n:,} ({' x '.join(map(str, s))})" for n, s in self.grids.items())
            raise ValueError(f"{path}: {count:,} {what}; a {self.name} file holds {known}")
        return self.grids[count]


SHAPES3D = Release(
    "shapes3d",
    ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"),
    {480_000: (10, 10, 10, 8, 4, 15)},
)
DSPRITES = Release(  # the file's first latent, colour, has one value and is not a factor
    "dsprites", ("shape", "scale", "orientation", "pos_x", "pos_y"), {737_280: (3, 6, 40, 32, 32)}
)
DSPRITES_SHAPES = ["square", "ellipse", "heart"]  # the dSprites README's names of shape values 1, 2, 3
MPI3D = Release(
    "mpi3d",
    ("object_color", "object_shape", "object_size", "camera_height", "background_color", "horizontal_axis",
     "vertical_axis"),
    {1_036_800: (6, 6, 2, 3, 3, 40, 40), 460_800: (4, 4, 2, 3, 3, 40, 40)},
)
CARS3D = Release("cars3d", ("elevation", "azimuth", "object"), {17_568: (4, 24, 183)})
CARS3D_MESH_SHAPE = (128, 128, 3, 24, 4)  # each car_*_mesh.mat's "im": H, W, RGB, azimuth, elevation

SHAPES3D_FILE = "3dshapes.h5"
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
MPI3D_GLOB = "mpi3d*.npz"
CARS3D_NPZ = ("cars3d.npz", "cars3d_x64.npz")  # disent's files (128 and 64 px)
CARS3D_MAT_GLOB = "car_*_mesh.mat"


# ----------------------------------------------------------------------------------------------------
# The split and the data set class
# ----------------------------------------------------------------------------------------------------
def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def grid_split(n: int, split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """The sorted image indices of ``split`` ("train", "test" or "all") of a data set of ``n`` images: the
    round(TEST_FRACTION n) images of smallest splitmix64(seed 2^32 + index) are the test split. Pure integer
    arithmetic, so the split is the same on every machine and numpy version."""
    if split not in GRID_SPLITS:
        raise ValueError(f"no split {split!r}; available: {list(GRID_SPLITS)}")
    if split == "all":
        return np.arange(n, dtype=np.int64)
    index = np.arange(n, dtype=np.int64)
    order = np.lexsort((index, _splitmix64(np.uint64(seed) * np.uint64(1 << 32) + index.astype(np.uint64))))
    n_test = round(TEST_FRACTION * n)
    test = np.zeros(n, dtype=bool)
    test[order[:n_test]] = True
    return np.flatnonzero(test if split == "test" else ~test).astype(np.int64)


class GridDataset(ImageDataset):
    """Images of a full factor grid in one lazy array (``diti.data.arrays``): ``array`` holds (N, S, S, 3)
    uint8, or (N, S, S) uint8 in {0, 1} with ``binary`` (dSprites: shown as black and white RGB).
    ``indices``: the images of this split; attributes are the grid's factor codes, with its value labels.
    Images are resized from S to ``resolution`` (data.resize) on access."""

    def __init__(self, root: Path, array, grid: FactorGrid, indices: np.ndarray, resolution: int, name: str,
                 binary: bool = False):
        self.array, self.grid, self.binary = array, grid, binary
        self.indices = np.asarray(indices, dtype=np.int64)
        self.stored_resolution = int(array.shape[1])
        super().__init__(root, resolution, Attributes(list(grid.names), grid.codes(self.indices),
                                                      [list(c) for c in grid.classes]), name)

    def __len__(self) -> int:
        return len(self.indices)

    def images(self, indices) -> np.ndarray:
        batch = take(self.array, self.indices[np.asarray(indices, dtype=np.int64)])
        if self.binary:
            batch = np.repeat((batch * 255).astype(np.uint8)[..., None], 3, axis=-1)
        if self.resolution == self.stored_resolution:
            return batch
        return np.stack([fit_square(Image.fromarray(im), self.resolution, resize=self.resize) for im in batch])


# ----------------------------------------------------------------------------------------------------
# The layout check
# ----------------------------------------------------------------------------------------------------
# An expected array: (key, shape pattern, dtype); a pattern entry is an int, "N" (the image count, the same for
# every key) or a tuple of allowed ints
Expected = tuple[str, tuple, str]


def _pattern(shape: tuple) -> str:
    return "(" + ", ".join("|".join(map(str, d)) if isinstance(d, tuple) else str(d) for d in shape) + ")"


def check_arrays(path: Path, found: dict[str, tuple[tuple[int, ...], np.dtype]], expected: list[Expected],
                 release: Release, what: str) -> int:
    """The image count N of ``found`` (key -> (shape, dtype)) when it matches ``expected`` and one of
    ``release``'s grids; else ValueError naming the expected keys, shapes and dtypes and what was found."""
    problems, counts = [], set()
    for key, shape, dtype in expected:
        if key not in found:
            problems.append(f"no {what} {key!r}")
            continue
        got_shape, got_dtype = found[key]
        ok = np.dtype(got_dtype) == np.dtype(dtype) and len(got_shape) == len(shape)
        for want, got in zip(shape, got_shape, strict=False):
            if want == "N":
                counts.add(got)
            elif isinstance(want, tuple):
                ok = ok and got in want
            else:
                ok = ok and got == want
        if not ok:
            problems.append(f"{key!r} is {np.dtype(got_dtype)} {tuple(got_shape)}")
    if len(counts) > 1:
        problems.append(f"the arrays disagree on the image count ({sorted(counts)})")
    elif counts and not problems and next(iter(counts)) not in release.grids:
        problems.append(f"{next(iter(counts)):,} images")
    if problems:
        want = ", ".join(f"{key!r} {dtype} {_pattern(shape)}" for key, shape, dtype in expected)
        grids = " or ".join(f"{n:,}" for n in release.grids)
        have = ", ".join(f"{k!r} {np.dtype(d)} {tuple(s)}" for k, (s, d) in found.items()) or "nothing"
        raise ValueError(
            f"{path} is not in the released {release.name} layout: {'; '.join(problems)}. Expected {what}s {want} "
            f"with N = {grids}; found {have}"
        )
    return counts.pop()


def _need_file(path: Path, release: Release) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{release.name} file not found: {path} (`diti data formats` gives the layout)")
    return path


def _resolution(resolution: int | None) -> int:
    return DEFAULT_RESOLUTION if resolution is None else resolution


def _no_attributes(attributes: Path | None, release: Release) -> None:
    if attributes is not None:
        raise ValueError(f"the factors of {release.name} come from its grid; an attribute table cannot replace them")


def _format_value(v: float) -> str:
    return f"{float(v):g}"


def _checked_labels(path: Path, labels, sizes: tuple[int, ...], columns: list[int], what: str) -> list[np.ndarray]:
    """The value of each factor at each of its steps, read from the label rows k * stride(f) (a few dozen rows),
    checking the row-major order on the way: between row 0 and row k * stride(f) only column ``columns[f]``
    changes, through distinct values; the last row holds every factor's last value."""
    grid = FactorGrid([str(c) for c in columns], sizes, [[""] * s for s in sizes])
    rows = sorted({k * grid.stride(f) for f, s in enumerate(sizes) for k in range(s)} | {len(grid) - 1})
    table = dict(zip(rows, take(labels, rows), strict=True))
    first, values = table[0], []
    for f, (column, size) in enumerate(zip(columns, sizes, strict=True)):
        steps = np.array([table[k * grid.stride(f)] for k in range(size)])
        others = [c for c in range(len(first)) if c != column]
        if not np.array_equal(steps[:, others], np.broadcast_to(first[others], (size, len(others)))) or len(
            np.unique(steps[:, column])
        ) != size:
            raise ValueError(
                f"{path}: the {what} are not in row-major factor order (factor {f} should step every "
                f"{grid.stride(f):,} images with the others fixed)"
            )
        values.append(steps[:, column])
    if not np.array_equal(table[len(grid) - 1][columns], [v[-1] for v in values]):
        raise ValueError(f"{path}: the last row of the {what} is not every factor's last value")
    return values


# ----------------------------------------------------------------------------------------------------
# The four releases
# ----------------------------------------------------------------------------------------------------
def open_shapes3d(root: Path, split: str, resolution: int | None, attributes: Path | None) -> GridDataset:
    """``3dshapes.h5``: datasets ``images`` uint8 (480000, 64, 64, 3) and ``labels`` float64 (480000, 6),
    read lazily with h5py; value labels are read from ``labels`` (which is checked to be in row-major order)."""
    _no_attributes(attributes, SHAPES3D)
    path = _need_file(root / SHAPES3D_FILE, SHAPES3D)
    n = check_arrays(path, h5_datasets(path), [("images", ("N", 64, 64, 3), "uint8"), ("labels", ("N", 6), "float64")],
                     SHAPES3D, "dataset")
    sizes = SHAPES3D.grid_of(n, path)
    images, labels = H5Array(path, "images"), H5Array(path, "labels")
    values = _checked_labels(path, labels, sizes, list(range(6)), "labels")
    grid = FactorGrid(list(SHAPES3D.factors), sizes, [[_format_value(v) for v in col] for col in values])
    return GridDataset(root, images, grid, grid_split(n, split), _resolution(resolution), "shapes3d")


def _npz_found(path: Path) -> dict:
    return {k: (h.shape, h.dtype) for k, h in npz_headers(path).items()}


def open_dsprites(root: Path, split: str, resolution: int | None, attributes: Path | None) -> GridDataset:
    """``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``: ``imgs`` uint8 (737280, 64, 64) in {0, 1},
    ``latents_classes`` int64 (737280, 6), ``latents_values`` float64 (737280, 6) (and the pickled
    ``metadata``, never read). The colour latent (one value) is dropped; ``latents_classes`` is checked to be
    the row-major grid, value labels come from ``latents_values`` (shape: square, ellipse, heart)."""
    _no_attributes(attributes, DSPRITES)
    path = _need_file(root / DSPRITES_FILE, DSPRITES)
    expected = [("imgs", ("N", 64, 64), "uint8"), ("latents_classes", ("N", 6), "int64"),
                ("latents_values", ("N", 6), "float64")]
    n = check_arrays(path, _npz_found(path), expected, DSPRITES, "member")
    sizes = DSPRITES.grid_of(n, path)
    with np.load(path, allow_pickle=False) as npz:  # the two latent tables: 35 MB each
        classes, latent_values = npz["latents_classes"], npz["latents_values"]
    columns = list(range(1, 6))
    codes = _checked_labels(path, classes, sizes, columns, "latents_classes")  # (colour stays fixed too)
    if any(not np.array_equal(c, np.arange(len(c))) for c in codes):
        raise ValueError(f"{path}: latents_classes should step through the codes 0, 1, ... of each factor")
    values = _checked_labels(path, latent_values, sizes, columns, "latents_values")
    labels = [list(DSPRITES_SHAPES)] + [[_format_value(v) for v in col] for col in values[1:]]
    grid = FactorGrid(list(DSPRITES.factors), sizes, labels)
    imgs = npz_member(path, "imgs")
    if take(imgs, [0, n - 1]).max() > 1:
        raise ValueError(f"{path}: 'imgs' should hold 0 and 1 (the released file's pixels), found larger values")
    return GridDataset(root, imgs, grid, grid_split(n, split), _resolution(resolution), "dsprites", binary=True)


def mpi3d_file(root: Path) -> Path:
    files = sorted(root.glob(MPI3D_GLOB))
    if len(files) != 1:
        raise ValueError(f"{root}: expected one {MPI3D_GLOB} file (mpi3d_toy, mpi3d_realistic, mpi3d_real, "
                         f"...), found {[f.name for f in files] or 'none'}")
    return files[0]


def open_mpi3d(root: Path, split: str, resolution: int | None, attributes: Path | None) -> GridDataset:
    """``mpi3d_*.npz``: ``images`` uint8 (N, 64, 64, 3); the grid from N (1,036,800 or 460,800). The file has no
    labels, so the row-major order cannot be checked; value labels are the indices 0..n-1."""
    _no_attributes(attributes, MPI3D)
    path = mpi3d_file(root)
    n = check_arrays(path, _npz_found(path), [("images", ("N", 64, 64, 3), "uint8")], MPI3D, "member")
    sizes = MPI3D.grid_of(n, path)
    grid = FactorGrid(list(MPI3D.factors), sizes, [[str(k) for k in range(s)] for s in sizes])
    return GridDataset(root, npz_member(path, "images"), grid, grid_split(n, split), _resolution(resolution),
                       path.stem)


def cars3d_source(root: Path) -> Path | None:
    """disent's npz in ``root`` (``cars3d.npz`` before ``cars3d_x64.npz``), or None for a folder of meshes."""
    return next((root / f for f in CARS3D_NPZ if (root / f).is_file()), None)


def cars3d_meshes(root: Path) -> list[Path]:
    """The ``car_*_mesh.mat`` files in object order: ``list.txt`` (the release's list, as disent reads it) when
    it is there, else sorted names."""
    found = sorted(root.glob(CARS3D_MAT_GLOB))
    listing = root / "list.txt"
    if not listing.is_file():
        return found
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    files = [root / (name if name.endswith(".mat") else name + ".mat") for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{listing} lists {len(missing)} files that are not in {root}: {missing[:5]}")
    if len(set(files)) != len(found) or set(files) != set(found):
        raise ValueError(f"{listing} lists {len(files)} meshes, {root} holds {len(found)} {CARS3D_MAT_GLOB} files")
    return files


def open_cars3d(root: Path, split: str, resolution: int | None, attributes: Path | None) -> GridDataset:
    """disent's ``cars3d.npz`` (``images`` uint8 (17568, 128, 128, 3), or 64 px in ``cars3d_x64.npz``), or the
    183 ``car_*_mesh.mat`` files of the release (``im`` uint8 (128, 128, 3, 24, 4)), which are gathered once
    into the cache folder in the npz's order: elevation, azimuth, object, the object fastest."""
    _no_attributes(attributes, CARS3D)
    npz = cars3d_source(root)
    if npz is not None:
        n = check_arrays(npz, _npz_found(npz), [("images", ("N", (64, 128), (64, 128), 3), "uint8")], CARS3D,
                         "member")
        array, objects = npz_member(npz, "images"), None
        if array.shape[1] != array.shape[2]:
            raise ValueError(f"{npz}: images are {array.shape[1]}x{array.shape[2]}, expected square")
    else:
        meshes = cars3d_meshes(root)
        sizes = CARS3D.grid_of(4 * 24 * len(meshes), root, f"images in {len(meshes)} {CARS3D_MAT_GLOB} files")
        array, objects, n = gather_meshes(root, meshes), [m.stem for m in meshes], int(np.prod(sizes))
    sizes = CARS3D.grid_of(n, root)
    labels = [[str(k) for k in range(s)] for s in sizes]
    if objects is not None:
        labels[2] = objects
    grid = FactorGrid(list(CARS3D.factors), sizes, labels)
    return GridDataset(root, array, grid, grid_split(n, split), _resolution(resolution), "cars3d")


def _read_mesh(path: Path) -> np.ndarray:
    from scipy.io import loadmat

    try:
        im = loadmat(path, variable_names=["im"]).get("im")
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if im is None or im.dtype != np.uint8 or im.shape != CARS3D_MESH_SHAPE:
        got = "no 'im'" if im is None else f"'im' {im.dtype} {im.shape}"
        raise ValueError(f"{path} is not in the released Cars3D layout: expected 'im' uint8 "
                         f"{CARS3D_MESH_SHAPE} (H, W, RGB, azimuth, elevation); found {got}")
    return im


def gather_meshes(root: Path, meshes: list[Path]) -> MappedArray:
    """The images of the mesh files as one (4 * 24 * M, 128, 128, 3) array in the cache folder (built on first
    use, one file at a time), memory-mapped."""
    n_obj = len(meshes)
    # the cache is keyed by the folder, the mesh count and the newest file (a re-extracted release is gathered
    # again)
    newest = max(m.stat().st_mtime_ns for m in meshes)
    target = cache_file(root, f"images-{n_obj}-{newest}")
    shape = (4 * 24 * n_obj, 128, 128, 3)
    if not target.is_file():
        for m in meshes[:1]:
            _read_mesh(m)  # a wrong layout is refused before anything is written
        writable_cache(target)
        logger.warning("gathering the %d Cars3D meshes of %s once into %s", n_obj, root, target)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            view = out.reshape(4, 24, n_obj, 128, 128, 3)
            for o, mesh in enumerate(meshes):
                view[:, :, o] = _read_mesh(mesh).transpose(4, 3, 0, 1, 2)  # (elevation, azimuth, H, W, 3)
            out.flush()
            del view, out
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    with open(target, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return MappedArray(target, f.tell(), np.uint8, shape)

"""Data set formats: a table of specs (``FORMATS``) behind the one entry point ``open_dataset``.

A format is data, not a class: how to recognise its folder (``detect``), how to open one split of it with the
generic dataset classes of ``diti.data.datasets`` (``open``), and the layout it expects (``layout``, the text
``describe_formats`` returns for the README and the CLI). Real data sets are these formats:

| data set        | format                                   |
| --------------- | ---------------------------------------- |
| shapes          | ``diti-array`` (``generate_shapes``)     |
| CelebA          | ``celeba`` (official files) or ``lmdb``  |
| LFW attributes  | ``lfw``                                  |
| FFHQ, LSUN, ... | ``image-folder`` or ``lmdb``             |
| Shapes3D        | ``shapes3d`` (``3dshapes.h5``)            |
| dSprites        | ``dsprites`` (the released ``.npz``)      |
| MPI3D           | ``mpi3d`` (``mpi3d_*.npz``)               |
| Cars3D          | ``cars3d`` (meshes or disent's ``.npz``)  |

The four disentanglement benchmarks are full factor grids in one array each; ``diti.data.ground_truth`` reads
them (lazily) and checks their layout.

``detect_format`` tries the specs in table order; ``image-folder`` matches any folder and comes last.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ground_truth as gt
from .attributes import Attributes
from .datasets import (
    IMAGE_EXTENSIONS,
    SPLIT_DIRS,
    ArrayImageDataset,
    ImageDataset,
    ImageFolderDataset,
    list_images,
    read_dataset_json,
)
from .images import RESIZE_FILTERS
from .lmdb_dataset import LMDBDataset

logger = logging.getLogger(__name__)

# CelebA's official crop (D2C, diffae, PDAE): the 128x128 square at top 57, left 25 of the 178x218 aligned
# image
CELEBA_ALIGNED_SIZE = (178, 218)  # (width, height)
CELEBA_BOX = (25, 57, 25 + 128, 57 + 128)  # (left, top, right, bottom)
CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}  # the codes of list_eval_partition.txt
CELEBA_CLASSES = ["no", "yes"]  # codes 0 (file value -1) and 1 (file value 1)

# LFW has no official split in this protocol: each person goes, as a whole, to one split. The people of the
# attribute table are ordered by a seeded hash of the name and cut at exactly 70 % / 80 % of them
LFW_IMAGE_DIRS = ("lfw_funneled", "lfw-deepfunneled", "lfw")  # the first that exists is used
LFW_SPLIT_FRACTIONS = {"train": 0.7, "valid": 0.1, "test": 0.2}  # of the people, exactly (rounded)
LFW_SPLIT_SEED = 0

Opener = Callable[[Path, str, int | None, Path | None], ImageDataset]


@dataclass(frozen=True)
class FormatSpec:
    """One data set format: ``detect(root)`` says whether the folder is in it; ``open(root, split,
    resolution, attributes)`` opens one split; ``splits(root, attributes)`` lists the splits a folder has;
    ``layout`` describes the files it expects."""

    detect: Callable[[Path], bool]
    open: Opener
    layout: str
    splits: Callable[[Path, Path | None], list[str]]


# ----------------------------------------------------------------------------------------------------
# Attribute and partition files of the real data sets
# ----------------------------------------------------------------------------------------------------
def read_celeba_attributes(path: str | Path) -> tuple[list[str], Attributes]:
    """(file names, Attributes) of a ``list_attr_celeba.txt``, in file order.

    Line 1: the image count; line 2: the attribute names; then ``<file> v1 ... vA`` (whitespace-separated, the
    official file pads with double spaces). Values -1 (or 0) become code 0 ("no"), 1 becomes code 1 ("yes").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CelebA attribute table not found: {path}")
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a line of attribute names")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ValueError(f"{path}, line 1: expected the image count, got {lines[0][:40]!r}") from None
    names = lines[1].split()
    rows = [
        (lineno, line.split(maxsplit=1)) for lineno, line in enumerate(lines[2:], start=3) if line.strip()
    ]
    files = [parts[0] for _, parts in rows]
    if len(files) != count:
        raise ValueError(f"{path}: line 1 says {count} images, the table has {len(files)} rows")
    for lineno, parts in rows:
        if len(parts) < 2 or len(parts[1].split()) != len(names):
            raise ValueError(f"{path}, line {lineno}: expected a file and {len(names)} values, got {parts}")
    # one C-level parse of all values (a Python int() per cell takes seconds on the 8M cells of CelebA); a bad
    # token makes numpy stop there, with a ValueError (numpy >= 2.3) or a DeprecationWarning (older)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            raw = np.fromstring(" ".join(parts[1] for _, parts in rows), dtype=np.int64, sep=" ")
        except ValueError:
            raw = np.zeros(0, np.int64)
    if raw.size != len(files) * len(names):
        lineno, parts = next((n, p) for n, p in rows if not all(_is_int(v) for v in p[1].split()))
        raise ValueError(f"{path}, line {lineno}: attribute values must be -1 or 1, got {parts[1][:80]!r}")
    raw = raw.reshape(len(files), len(names))
    bad = ~np.isin(raw, (-1, 0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"{path}: {files[r]} has {names[c]} = {raw[r, c]}, expected -1 or 1")
    _check_unique(files, path)
    codes = (raw > 0).astype(np.int64)
    return files, Attributes(names, codes, [list(CELEBA_CLASSES) for _ in names])


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_celeba_partition(path: str | Path) -> dict[str, int]:
    """``list_eval_partition.txt``: file name -> 0 (train), 1 (valid) or 2 (test)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CelebA partition file not found: {path}")
    partition: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {lineno}: expected '<file> <0|1|2>', got {line[:60]!r}")
        if fields[0] in partition:
            raise ValueError(f"{path}: file {fields[0]!r} is listed more than once")
        partition[fields[0]] = int(fields[1])
    return partition


def read_lfw_attributes(path: str | Path) -> tuple[list[tuple[str, int]], Attributes]:
    """((person, image number) per row, Attributes) of ``lfw_attributes.txt``, in file order.

    Tab-separated. Lines starting with ``#`` are comments, except the header
    ``#\\tperson\\timagenum\\t<names>`` (the names may hold spaces, e.g. ``Middle Aged``); rows are
    ``<Person Name>\\t<n>\\t<values>``. Every attribute is continuous (classes None: a regression target).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LFW attribute table not found: {path}")
    names: list[str] | None = None
    keys: list[tuple[str, int]] = []
    rows: list[list[float]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            fields = [f.strip() for f in line.lstrip("#").split("\t") if f.strip()]
            if fields[:2] == ["person", "imagenum"]:
                names = fields[2:]
            continue
        if names is None:
            raise ValueError(f"{path}, line {lineno}: a row before the '#\\tperson\\timagenum\\t...' header")
        fields = line.strip().split("\t")
        if len(fields) != len(names) + 2:
            raise ValueError(
                f"{path}, line {lineno}: {len(fields)} tab-separated fields, expected person, imagenum and "
                f"{len(names)} values"
            )
        try:
            keys.append((fields[0].strip(), int(fields[1])))
            rows.append([float(v) for v in fields[2:]])
        except ValueError:
            raise ValueError(
                f"{path}, line {lineno}: imagenum must be an integer and values numbers"
            ) from None
    if names is None:
        raise ValueError(f"{path}: no '#\\tperson\\timagenum\\t<attribute names>' header line")
    _check_unique([f"{p} {n}" for p, n in keys], path)
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    return keys, Attributes(names, values, [None] * len(names))


def lfw_file(person: str, imagenum: int) -> str:
    """``Aaron Eckhart``, 1 -> ``Aaron_Eckhart/Aaron_Eckhart_0001.jpg`` (relative to ``lfw_funneled``)."""
    folder = person.replace(" ", "_")
    return f"{folder}/{folder}_{imagenum:04d}.jpg"


def lfw_splits(people, seed: int = LFW_SPLIT_SEED) -> dict[str, str]:
    """Person -> split for the distinct names in ``people``: the names sorted by
    sha256("diti-lfw-split:<seed>:<person>") (ties by name), the first round(0.7 P) in train, the next
    round(0.8 P) - round(0.7 P) in valid, the rest in test (P = number of people)."""
    names = sorted(set(people), key=lambda p: (hashlib.sha256(f"diti-lfw-split:{seed}:{p}".encode()).digest(), p))
    out, start, edge = {}, 0, 0.0
    for split, fraction in LFW_SPLIT_FRACTIONS.items():
        edge += fraction
        stop = len(names) if split == "test" else round(edge * len(names))
        out.update((p, split) for p in names[start:stop])
        start = stop
    return out


def _check_unique(keys: list[str], path: Path) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{path}: {key!r} has more than one row")
        seen.add(key)


def _check_split(split: str, known, root: Path) -> None:
    if split not in known:
        raise ValueError(f"{root}: no split {split!r}; available: {list(known)}")


def _need_resolution(root: Path, resolution: int | None, fmt: str) -> int:
    if resolution is None:
        raise ValueError(f"{root} is in the {fmt!r} format: pass a resolution")
    return resolution


def _examples(items: list[str]) -> str:
    return ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")


# ----------------------------------------------------------------------------------------------------
# Openers: one split of a folder in each format
# ----------------------------------------------------------------------------------------------------
def _open_array(root: Path, split: str, resolution: int | None, attributes: Path | None) -> ImageDataset:
    return ArrayImageDataset(root, split, resolution, attributes)


def _open_image_folder(
    root: Path, split: str, resolution: int | None, attributes: Path | None
) -> ImageDataset:
    resolution = _need_resolution(root, resolution, "image-folder")
    splits = [d for d in SPLIT_DIRS if (root / d).is_dir()]
    if not splits:  # a plain folder is the whole data set, whatever split is asked for
        return ImageFolderDataset(root, resolution, attributes)
    _check_split(split, splits, root)
    return ImageFolderDataset(root / split, resolution, attributes, name=root.name)


def _open_celeba(root: Path, split: str, resolution: int | None, attributes: Path | None) -> ImageDataset:
    resolution = _need_resolution(root, resolution, "celeba")
    _check_split(split, CELEBA_SPLITS, root)
    image_dir = root / "img_align_celeba"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"CelebA image folder not found: {image_dir}")
    table_path = Path(attributes) if attributes is not None else root / "list_attr_celeba.txt"
    files, table = read_celeba_attributes(table_path)
    partition = read_celeba_partition(root / "list_eval_partition.txt")
    # one directory listing (not 200k stat calls) to check the table against the folder, both ways
    on_disk = {
        e.name
        for e in os.scandir(image_dir)
        if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith(".") and e.is_file()
    }
    missing = [f for f in files if f not in on_disk]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(files)} images listed in {table_path} are missing from {image_dir}: "
            f"{_examples(missing)}"
        )
    listed = set(files)
    unlisted = sorted(on_disk - listed)
    if unlisted:
        raise ValueError(
            f"{len(unlisted)} images in {image_dir} have no row in {table_path}: {_examples(unlisted)}"
        )
    unsplit = [f for f in files if f not in partition]
    if unsplit:
        raise ValueError(
            f"{len(unsplit)} images of {table_path} are not in {root / 'list_eval_partition.txt'}: "
            f"{_examples(unsplit)}"
        )
    code = CELEBA_SPLITS[split]
    row_of = {f: r for r, f in enumerate(files)}
    chosen = sorted(f for f in files if partition[f] == code)
    if not chosen:
        raise ValueError(f"{root}: the {split!r} split of list_eval_partition.txt is empty")
    return ImageFolderDataset(
        image_dir,
        resolution,
        table.subset([row_of[f] for f in chosen]),
        name="celeba",
        files=chosen,
        box=CELEBA_BOX,
    )


def _open_lfw(root: Path, split: str, resolution: int | None, attributes: Path | None) -> ImageDataset:
    resolution = _need_resolution(root, resolution, "lfw")
    _check_split(split, LFW_SPLIT_FRACTIONS, root)
    image_dir = next((root / d for d in LFW_IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise FileNotFoundError(f"{root}: no LFW image folder ({', '.join(LFW_IMAGE_DIRS)})")
    table_path = Path(attributes) if attributes is not None else root / "lfw_attributes.txt"
    keys, table = read_lfw_attributes(table_path)
    on_disk = set(list_images(image_dir))
    files = [lfw_file(person, num) for person, num in keys]
    present = [r for r, f in enumerate(files) if f in on_disk]
    if len(present) < len(files):
        # some copies of lfw_attributes.txt have rows for images that lfw_funneled does not hold
        absent = [files[r] for r in range(len(files)) if files[r] not in on_disk]
        logger.warning(
            "%s: skipped %d of %d attribute rows whose image is not in %s (e.g. %s)",
            table_path,
            len(absent),
            len(files),
            image_dir,
            _examples(absent),
        )
    if not present:
        raise ValueError(f"none of the {len(files)} images of {table_path} is in {image_dir}")
    # the split is drawn over every person of the table, so images missing from a copy move nobody
    split_of = lfw_splits(person for person, _ in keys)
    rows = sorted((r for r in present if split_of[keys[r][0]] == split), key=lambda r: files[r])
    if not rows:
        raise ValueError(f"{root}: the {split!r} split is empty ({len(present)} images, too few people)")
    return ImageFolderDataset(
        image_dir, resolution, table.subset(rows), name="lfw", files=[files[r] for r in rows]
    )


def _lmdb_partition(root: Path, attributes: Path | None) -> Path | None:
    """The partition file of an LMDB data set: beside it, or beside its attribute table, or None."""
    table_path = Path(attributes) if attributes is not None else root / "list_attr_celeba.txt"
    candidates = [root / "list_eval_partition.txt", table_path.parent / "list_eval_partition.txt"]
    return next((p for p in candidates if p.is_file()), None)


def _open_lmdb(root: Path, split: str, resolution: int | None, attributes: Path | None) -> ImageDataset:
    resolution = _need_resolution(root, resolution, "lmdb")
    dataset = LMDBDataset(root, resolution)
    n = dataset.num_records
    table_path = Path(attributes) if attributes is not None else root / "list_attr_celeba.txt"
    table, names = None, None
    if table_path.suffix == ".csv":
        table = Attributes.from_csv(table_path)  # index-keyed: row i is record i
    elif attributes is not None or table_path.is_file():
        files, table = read_celeba_attributes(table_path)
        # record i is the i-th file name in sorted order (diffae wrote the LMDB from the sorted folder)
        order = sorted(range(len(files)), key=files.__getitem__)
        names, table = [files[r] for r in order], table.subset(order)
    if table is not None and len(table) != n:
        raise ValueError(f"{table_path}: {len(table)} attribute rows for the {n} images of {root}")
    partition_path = _lmdb_partition(root, attributes)
    indices = None
    if partition_path is None and split != "train":
        # without a partition every split would be the same images (a probe tested on its training set)
        raise ValueError(
            f"{root} has no list_eval_partition.txt (beside it or beside the attribute table), so its only split "
            f"is 'train' (every record); there is no {split!r} split. Add a partition file to split it."
        )
    if partition_path is not None:
        partition = read_celeba_partition(partition_path)
        names = names or sorted(partition)
        if len(names) != n or any(f not in partition for f in names):
            raise ValueError(f"{partition_path} does not list the {n} images of {root} (sorted file names)")
        _check_split(split, CELEBA_SPLITS, root)
        indices = np.array(
            [i for i, f in enumerate(names) if partition[f] == CELEBA_SPLITS[split]], dtype=np.int64
        )
        if len(indices) == 0:
            raise ValueError(f"{root}: the {split!r} split of {partition_path} is empty")
        if table is not None:
            table = table.subset(indices)
    if table is not None or indices is not None:  # (the key list of a 'keys' LMDB is read once more)
        dataset = LMDBDataset(root, resolution, table, indices=indices)
    if dataset.stored_size(0) == CELEBA_ALIGNED_SIZE:
        dataset.box = CELEBA_BOX  # raw aligned CelebA (diffae's celeba.lmdb): the official crop
    return dataset


# ----------------------------------------------------------------------------------------------------
# The table, detection and the one entry point
# ----------------------------------------------------------------------------------------------------

_GRID_NOTES = """\
Splits "train" / "test" / "all": image i is in "test" when splitmix64(i) (seed 0) is among the 10 % smallest
(exactly round(0.1 N) images), else in "train"; "all" is every image. Attributes: the factor codes of the grid
(row-major, the last factor fastest), with value labels. Resolution None = 64; 16 or 32 resize each image on
access (data.resize). Read lazily, never the whole array in memory."""


def _grid_spec(detect, open_, layout: str) -> FormatSpec:
    return FormatSpec(detect=detect, open=open_, layout=layout + "\n" + _GRID_NOTES,
                      splits=lambda root, attributes: list(gt.GRID_SPLITS))


FORMATS: dict[str, FormatSpec] = {
    "diti-array": FormatSpec(
        detect=lambda root: (root / "dataset.json").is_file(),
        open=_open_array,
        layout="""\
<root>/dataset.json                 {"format": "diti-array", "format_version": 1, "splits": {"train": N, ...},
                                     "factors": [{"name": ..., "values": [class names]}, ...]}
<root>/<split>/images.npy           uint8 (N, R, R, 3)
<root>/<split>/factors.csv          index,<factor names>: integer class codes (optional)
Written by `diti.data.generate_shapes`. Resolution optional (None = stored; another resizes, data.resize).""",
        splits=lambda root, attributes: list(read_dataset_json(root).get("splits", {})),
    ),
    "celeba": FormatSpec(
        detect=lambda root: (
            (root / "img_align_celeba").is_dir() and (root / "list_attr_celeba.txt").is_file()
        ),
        open=_open_celeba,
        layout="""\
<root>/img_align_celeba/000001.jpg ...   the aligned 178x218 images (every one listed in the attribute table)
<root>/list_attr_celeba.txt              line 1: image count; line 2: the 40 attribute names; then
                                         "<file> v1 ... v40", values -1/1, whitespace-separated
<root>/list_eval_partition.txt           "<file> <0|1|2>": train / valid / test
Splits "train", "valid", "test", images in sorted file-name order. Each image is cropped to the 128x128 box at
top 57, left 25, then resized to the resolution (data.resize: bicubic, or the official bilinear). Attributes: 40
binary columns, codes 0/1 with classes ["no", "yes"] (file value -1 -> 0, 1 -> 1). `attributes=` replaces
list_attr_celeba.txt.""",
        splits=lambda root, attributes: list(CELEBA_SPLITS),
    ),
    "lfw": FormatSpec(
        detect=lambda root: (
            (root / "lfw_attributes.txt").is_file() and any((root / d).is_dir() for d in LFW_IMAGE_DIRS)
        ),
        open=_open_lfw,
        layout="""\
<root>/lfw_funneled/<Person_Name>/<Person_Name>_0001.jpg   (or lfw-deepfunneled/, lfw/: the first that exists)
<root>/lfw_attributes.txt   tab-separated: '#' comment lines, the header
                            "#<TAB>person<TAB>imagenum<TAB><73 names>",
                            rows "<Person Name><TAB><imagenum><TAB><73 values>"
Row ("Aaron Eckhart", 1) is lfw_funneled/Aaron_Eckhart/Aaron_Eckhart_0001.jpg. Rows whose image is missing are
skipped (a logged warning gives the count); images without a row are not used. Attributes: 73 continuous
columns (regression). Splits "train" / "valid" / "test" by person (no one in two splits): the people of the
table, ordered by a seeded hash of the name, go 70 % / 10 % / 20 % (exactly, rounded) to train / valid / test.
Images in sorted path order, centre-cropped and resized (data.resize). `attributes=` replaces
lfw_attributes.txt.""",
        splits=lambda root, attributes: list(LFW_SPLIT_FRACTIONS),
    ),
    "lmdb": FormatSpec(
        detect=lambda root: (root / "data.mdb").is_file(),
        open=_open_lmdb,
        layout="""\
<root>/data.mdb, <root>/lock.mdb    an LMDB environment of encoded images (PNG, JPEG, WEBP), either
    diffae / PDAE style: "length" -> the count as ASCII digits, image i under "<prefix>-<i zero-filled>"
    ("256-00000", "None-0000000"; numbering from 0 or 1), or
    any keys and no "length" record (LSUN's official LMDBs): images in byte-sorted key order.
<root>/list_attr_celeba.txt         optional (or `attributes=`; a .csv is an index,<names> table): CelebA
                                    attributes, record i = the i-th file name in sorted order
<root>/list_eval_partition.txt      optional (or beside the `attributes=` file): "train"/"valid"/"test" by
                                    that order; without it the only split is "train" (every record), and
                                    "valid" / "test" are refused
Images are centre-cropped and resized (data.resize); 178x218 images (raw aligned CelebA, diffae's celeba.lmdb)
get the CelebA crop first. Needs the `lmdb` package.""",
        splits=lambda root, attributes: (
            list(CELEBA_SPLITS) if _lmdb_partition(root, attributes) is not None else ["train"]
        ),
    ),
    "shapes3d": _grid_spec(
        lambda root: (root / gt.SHAPES3D_FILE).is_file(),
        gt.open_shapes3d,
        """\
<root>/3dshapes.h5     HDF5 (read with h5py): dataset "images" uint8 (480000, 64, 64, 3), dataset "labels"
                       float64 (480000, 6)
Factors in file order: floor_hue 10, wall_hue 10, object_hue 10, scale 8, shape 4, orientation 15; value labels
are the values of "labels", whose row-major order is checked on open.""",
    ),
    "dsprites": _grid_spec(
        lambda root: (root / gt.DSPRITES_FILE).is_file(),
        gt.open_dsprites,
        """\
<root>/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz   members "imgs" uint8 (737280, 64, 64) in {0, 1},
    "latents_classes" int64 (737280, 6), "latents_values" float64 (737280, 6); "metadata" (pickled) is not read
Factors: shape 3 (square, ellipse, heart), scale 6, orientation 40, pos_x 32, pos_y 32 (the colour latent has one
value and is not a factor); latents_classes is checked to be the row-major grid, value labels come from
latents_values (both tables are read into memory, 35 MB each). Images are shown as black and white RGB. The released file is compressed, so "imgs" is
extracted once (2.9 GB) to $DITI_CACHE (default ~/.cache/diti) and memory-mapped from there.""",
    ),
    "mpi3d": _grid_spec(
        lambda root: any(root.glob(gt.MPI3D_GLOB)),
        gt.open_mpi3d,
        """\
<root>/mpi3d_toy.npz | mpi3d_realistic.npz | mpi3d_real.npz | any one mpi3d*.npz
                       member "images" uint8 (N, 64, 64, 3)
The grid comes from N: 1,036,800 = 6 x 6 x 2 x 3 x 3 x 40 x 40 (the released files), 460,800 = 4 x 4 x 2 x 3 x 3
x 40 x 40 (the complex-shapes file, and what older loaders assume); any other N is refused. Factors:
object_color, object_shape, object_size, camera_height, background_color, horizontal_axis, vertical_axis, value
labels their indices (the file has no labels, so its order cannot be checked). An uncompressed member
(np.savez) is memory-mapped in place; a compressed one is extracted once to $DITI_CACHE (12.7 GB).""",
    ),
    "cars3d": _grid_spec(
        lambda root: any(root.glob(gt.CARS3D_MAT_GLOB)) or gt.cars3d_source(root) is not None,
        gt.open_cars3d,
        """\
<root>/car_001_mesh.mat ...   the 183 meshes of the release (its data/cars/ folder): MATLAB files with "im"
                              uint8 (128, 128, 3, 24, 4) = (H, W, RGB, azimuth, elevation); objects in the
                              order of <root>/list.txt when present, else by file name
  or <root>/cars3d.npz       disent's file: member "images" uint8 (17568, 128, 128, 3)
  or <root>/cars3d_x64.npz   disent's 64-px file: "images" uint8 (17568, 64, 64, 3)
Factors: elevation 4, azimuth 24, object 183, in this order (the object fastest), value labels the indices (the
mesh file names for objects). 128-px images are resized with data.resize (bicubic by default;
disentanglement_lib uses PIL's antialiased thumbnail). The meshes are gathered once into one array in $DITI_CACHE (863 MB), the
compressed npz is extracted there once.""",
    ),
    "image-folder": FormatSpec(
        detect=lambda root: True,
        open=_open_image_folder,
        layout="""\
<root>/**/*.png|jpg|jpeg|bmp|webp   every image, recursively (sorted relative paths, hidden files skipped)
<root>/attributes.csv               optional: a "file" column (paths relative to the folder), numeric columns
With train/, valid/, val/, validation/ or test/ sub-folders each is a split (each may hold attributes.csv);
otherwise the whole folder is every split (so `diti probe` and `diti disentangle` refuse it). Images are
centre-cropped and resized (data.resize). FFHQ, LSUN exported to files, and any other unlabelled set use this
format.""",
        splits=lambda root, attributes: [d for d in SPLIT_DIRS if (root / d).is_dir()] or ["train"],
    ),
}


def describe_formats() -> dict[str, str]:
    """Format name -> the folder layout it expects (README / CLI text)."""
    return {name: spec.layout for name, spec in FORMATS.items()}


def detect_format(root: str | Path) -> str:
    """The format of the data set folder ``root``: the ``format`` of its ``dataset.json`` when it has one,
    else the first spec in ``FORMATS`` whose ``detect`` matches (``image-folder`` matches any folder)."""
    root = Path(root)
    if (root / "dataset.json").is_file():
        fmt = read_dataset_json(root).get("format")
        if fmt not in FORMATS:
            raise ValueError(f"{root / 'dataset.json'}: unknown format {fmt!r}; known: {sorted(FORMATS)}")
        return fmt
    return next(name for name, spec in FORMATS.items() if spec.detect(root))


def open_dataset(
    path: str | Path,
    split: str = "train",
    resolution: int | None = None,
    attributes: str | Path | None = None,
    format: str | None = None,
    resize: str = "bicubic",
    skip_unreadable: bool = False,
) -> ImageDataset:
    """Open one split of the data set at ``path``; ``describe_formats()`` gives each format's layout.

    ``format``: one of ``FORMATS`` (None = ``detect_format(path)``). ``resolution``: optional for
    ``diti-array`` (None = stored; another value resizes on the fly), required for every other format.
    ``attributes``: a file replacing the data set's own attribute table (``index``-keyed CSV for
    ``diti-array``, ``file``-keyed CSV for image folders, ``list_attr_celeba.txt``-style for ``celeba`` and
    ``lmdb`` (or an ``index``-keyed CSV for ``lmdb``), ``lfw_attributes.txt``-style for ``lfw``).
    ``resize`` (``bicubic`` | ``bilinear``) and ``skip_unreadable``: see ``diti.data.datasets``.
    """
    root = Path(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown data set format {format!r}; known: {list(FORMATS)}")
    if not root.exists():
        raise FileNotFoundError(f"data set not found: {root}")
    if not root.is_dir():
        raise ValueError(f"a data set is a folder, got the file {root}")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if resize not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize filter {resize!r}; expected one of {RESIZE_FILTERS}")
    fmt = format or detect_format(root)
    dataset = FORMATS[fmt].open(root, split, resolution, None if attributes is None else Path(attributes))
    dataset.resize, dataset.skip_unreadable = resize, bool(skip_unreadable)
    return dataset

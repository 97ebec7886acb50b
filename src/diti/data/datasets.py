"""Image data sets: the dataset classes every format is opened with, and the attribute table that goes with
them.

Three classes serve every format; the formats themselves (which files, which split, which crop) are a table of
specs in ``diti.data.formats`` (``FORMATS``, ``detect_format``, ``open_dataset``, ``describe_formats``):

- ``ArrayImageDataset``: the ``diti-array`` format (``images.npy`` per split, written by ``generate_shapes``).
- ``ImageFolderDataset``: a list of image files under a folder (found recursively, or given explicitly, as the
  CelebA and LFW specs do), each centre-cropped (or cropped to a fixed box) and resized to the resolution.
- ``LMDBDataset``: encoded images in an LMDB environment (diffae / PDAE keys ``<prefix>-<index>``, or any
  keys).

Every data set yields float32 images (3, R, R) in [-1, 1]. ``__getitems__`` returns a whole batch
(B, 3, R, R) at once, so a DataLoader needs ``collate_fn=collate_images`` (torch's default collate cannot
take a ready tensor).

Two per-data-set settings (``open_dataset`` sets them from the config's ``data.resize`` and
``data.skip_unreadable``):

- ``resize``: ``bicubic`` (diti's default: one PIL bicubic resample of the crop square, reading the pixels
  just outside it, as resize-then-crop does) or ``bilinear`` (the official pipeline: cut the crop square out,
  then PIL bilinear, what torchvision's ``Resize`` does to a PIL image). Both antialias when shrinking.
- ``skip_unreadable``: an image that cannot be decoded is replaced by the next readable item of the data set
  (in index order, wrapping around) and a warning naming the file is logged (once per file and process);
  off, it raises ValueError naming the file. The replacement is deterministic, so ``--resume`` still
  continues exactly.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# (left, top, right, bottom) pixel box; PIL's order
Box = tuple[int, int, int, int]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_DIRS = ("train", "valid", "val", "validation", "test")
ARRAY_FORMAT_VERSION = 1
# Arrays up to this size are read into memory (fastest batched indexing); larger ones are memory-mapped.
IN_MEMORY_BYTES = 2 << 30
RESIZE_FILTERS = ("bicubic", "bilinear")

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# Attribute table
# ----------------------------------------------------------------------------------------------------
@dataclass
class Attributes:
    """Per-image attributes: ``values`` (N, A), column i named ``names[i]``.

    A column is categorical when ``classes[i]`` is a list of class names (its values are codes
    0..len(classes[i])-1) and continuous when ``classes[i]`` is None. ``values`` is int64 when every column
    is categorical, float64 otherwise. ``classes=None`` infers the column kinds: a column of non-negative
    integers is categorical with classes ``"0".."max"``; anything else is continuous.
    """

    names: list[str]
    values: np.ndarray
    classes: list[list[str] | None] | None = None

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        values = np.asarray(self.values)
        if values.ndim != 2 or values.shape[1] != len(self.names):
            raise ValueError(
                f"values must have shape (N, {len(self.names)}) for names {self.names}, got {values.shape}"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"attribute names must be unique, got {self.names}")
        if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
            raise ValueError(f"attribute values must be numeric, got dtype {values.dtype}")
        if self.classes is None:
            self.classes = [_infer_classes(values[:, i]) for i in range(values.shape[1])]
        if len(self.classes) != len(self.names):
            raise ValueError(f"classes has {len(self.classes)} entries for {len(self.names)} attributes")
        self.classes = [None if c is None else [str(x) for x in c] for c in self.classes]
        for i, names in enumerate(self.classes):
            if names is None:
                continue
            column = values[:, i]
            bad = (column != np.round(column)) | (column < 0) | (column >= len(names))
            if bad.any():
                raise ValueError(
                    f"attribute {self.names[i]!r} has value {column[np.argmax(bad)]}, "
                    f"expected a code 0..{len(names) - 1} ({len(names)} classes)"
                )
        all_categorical = all(c is not None for c in self.classes)
        self.values = values.astype(np.int64 if all_categorical else np.float64, copy=False)

    def __len__(self) -> int:
        return len(self.values)

    def num_classes(self, i: int) -> int:
        """Number of classes of categorical column ``i``."""
        if self.classes[i] is None:
            raise ValueError(f"attribute {self.names[i]!r} is continuous, it has no classes")
        return len(self.classes[i])

    def is_categorical(self, i: int) -> bool:
        """Whether column ``i`` holds class codes (else continuous values)."""
        return self.classes[i] is not None

    def subset(self, indices: Sequence[int] | np.ndarray) -> Attributes:
        """The rows ``indices``, same columns and classes."""
        return Attributes(list(self.names), self.values[np.asarray(indices, dtype=np.int64)], self.classes)

    def to_csv(self, path: str | Path) -> None:
        """Write ``index,<names>``, one row per image; codes as integers, continuous values exactly (repr)."""
        fmt = [_format_code if self.is_categorical(i) else repr for i in range(len(self.names))]
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["index", *self.names])
            for index, row in enumerate(self.values.tolist()):
                writer.writerow([index, *(f(v) for f, v in zip(fmt, row, strict=True))])

    @classmethod
    def from_csv(cls, path: str | Path, classes: list[list[str] | None] | None = None) -> Attributes:
        """Read a table written by ``to_csv``. Rows are put in ``index`` order (a permutation of 0..N-1)."""
        path = Path(path)
        keys, names, values = _read_table(path, "index")
        try:
            index = np.array([int(k) for k in keys], dtype=np.int64)
        except ValueError:
            raise ValueError(f"{path}: the index column must hold integers") from None
        if not np.array_equal(np.sort(index), np.arange(len(index))):
            raise ValueError(f"{path}: the index column must be a permutation of 0..{len(index) - 1}")
        ordered = np.empty_like(values)
        ordered[index] = values
        return cls(names, ordered, classes)


def _format_code(v: float | int) -> str:
    return str(int(v))


def _infer_classes(column: np.ndarray) -> list[str] | None:
    integral = np.issubdtype(column.dtype, np.integer) or bool(np.all(column == np.round(column)))
    if len(column) == 0 or not integral or column.min() < 0:
        return None
    return [str(k) for k in range(int(column.max()) + 1)]


def _read_table(path: Path, key: str) -> tuple[list[str], list[str], np.ndarray]:
    """(keys, names, values) of a CSV with a ``key`` column and numeric other columns.

    values is int64 when every cell is an integer literal, float64 otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"attribute table not found: {path}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or key not in rows[0]:
        raise ValueError(
            f"{path}: expected a header with a {key!r} column, got {rows[0] if rows else 'an empty file'}"
        )
    header = [h.strip() for h in rows[0]]
    k = header.index(key)
    names = header[:k] + header[k + 1 :]
    keys, cells, lines = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # tolerate blank lines
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}")
        keys.append(row[k].strip())
        cells.append([c.strip() for j, c in enumerate(row) if j != k])
        lines.append(line)
    values = np.zeros((len(cells), len(names)), dtype=np.float64)
    integral = True
    for r, row in enumerate(cells):
        for c, text in enumerate(row):
            try:
                values[r, c] = int(text)
            except ValueError:
                integral = False
                try:
                    values[r, c] = float(text)
                except ValueError:
                    raise ValueError(
                        f"{path}, line {lines[r]}: column {names[c]!r} must be numeric, got {text!r}"
                    ) from None
    return keys, names, values.astype(np.int64) if integral else values


# ----------------------------------------------------------------------------------------------------
# Data sets
# ----------------------------------------------------------------------------------------------------
def collate_images(batch: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """DataLoader collate for ImageDataset: passes a ``__getitems__`` batch through, stacks single items."""
    return batch if torch.is_tensor(batch) else torch.stack(list(batch))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    # one pass to a contiguous float32 copy, then the affine map in place (no further temporaries)
    return x.to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 127.5).sub_(1.0)


class ImageDataset(torch.utils.data.Dataset):
    """Base class: square RGB images of side ``resolution``, with optional per-image ``attributes``.

    Subclasses implement ``__len__`` and ``images`` (uint8 (B, R, R, 3)); this class turns them into
    tensors. Use ``collate_fn=collate_images`` (or ``ImageDataset.collate``) in a DataLoader.
    """

    collate = staticmethod(collate_images)
    resize = "bicubic"  # see the module docstring; open_dataset sets both per data set
    skip_unreadable = False

    def __init__(self, root: Path, resolution: int, attributes: Attributes | None, name: str):
        if attributes is not None and len(attributes) != len(self):
            raise ValueError(f"{root}: {len(attributes)} attribute rows for {len(self)} images")
        self.root = root
        self.resolution = resolution
        self.attributes = attributes
        self.name = name

    def __len__(self) -> int:
        raise NotImplementedError

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images ``indices`` as uint8 (B, R, R, 3)."""
        raise NotImplementedError

    def sources(self) -> list[tuple[str, Path | Callable[[], bytes], Box | None]] | None:
        """(name, encoded file, crop box) of every item, for ``diti data check``: the file is a path or a
        picklable function returning its bytes. None for a data set of decoded pixels (nothing to decode)."""
        return None

    def __getitem__(self, i: int) -> torch.Tensor:
        """Image ``i``: float32 (3, R, R) in [-1, 1]."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        return to_tensor(self.read_images([i]))[0]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        """Images ``indices``: float32 (B, 3, R, R) in [-1, 1]; DataLoader calls this for whole batches."""
        return to_tensor(self.read_images(indices))

    def read_images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``images(indices)``, with unreadable items replaced when ``skip_unreadable`` is set."""
        try:
            return self.images(indices)
        except ValueError:
            if not self.skip_unreadable:
                raise
        return np.stack([self._readable(int(i)) for i in np.asarray(indices).reshape(-1)])

    def _readable(self, i: int) -> np.ndarray:
        """Item i, or the next readable item after it (wrapping around), logging each unreadable one once."""
        n = len(self)
        skipped = self.__dict__.setdefault("_skipped", set())
        for k in range(n):
            j = (i + k) % n
            try:
                return self.images([j])[0]
            except ValueError as err:
                if j not in skipped:
                    skipped.add(j)
                    logger.warning("skipping an unreadable image (data.skip_unreadable): %s", err)
        raise ValueError(f"{self.root}: none of the {n} images is readable")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)}, resolution={self.resolution}, root='{self.root}')"


class ArrayImageDataset(ImageDataset):
    """The ``diti-array`` format: ``<root>/<split>/images.npy`` and ``factors.csv``, described by ``dataset.json``.

    ``resolution`` None keeps the stored resolution; another value resizes each image on the fly (PIL,
    bicubic). ``attributes`` replaces ``factors.csv`` with another table (``index,<names>``) of the same length.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        resolution: int | None = None,
        attributes: str | Path | Attributes | None = None,
    ):
        root = Path(root)
        if resolution is not None and resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        meta = read_dataset_json(root)
        if meta.get("format") != "diti-array" or meta.get("format_version") != ARRAY_FORMAT_VERSION:
            raise ValueError(
                f"{root / 'dataset.json'}: expected format 'diti-array' version {ARRAY_FORMAT_VERSION}, "
                f"got {meta.get('format')!r} version {meta.get('format_version')!r}"
            )
        splits = meta.get("splits", {})
        if split not in splits:
            raise ValueError(f"{root}: no split {split!r}; available: {sorted(splits)}")
        folder = root / split
        file = folder / "images.npy"
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found (listed in {root / 'dataset.json'})")
        mmap = "r" if file.stat().st_size > IN_MEMORY_BYTES else None
        self._array = np.load(file, mmap_mode=mmap, allow_pickle=False)
        shape = self._array.shape
        if self._array.dtype != np.uint8 or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(f"{file}: expected uint8 (N, R, R, 3), got {self._array.dtype} {shape}")
        if shape[0] != splits[split]:
            raise ValueError(f"{file}: {shape[0]} images, dataset.json says {splits[split]}")
        self.split = split
        self.stored_resolution = shape[1]
        if isinstance(attributes, (str, Path)):
            attributes = Attributes.from_csv(attributes)
        elif attributes is None and (folder / "factors.csv").is_file():
            factors = meta.get("factors")
            classes = [list(f["values"]) for f in factors] if factors else None
            attributes = Attributes.from_csv(folder / "factors.csv", classes=classes)
            if factors and attributes.names != [f["name"] for f in factors]:
                raise ValueError(
                    f"{folder / 'factors.csv'}: columns {attributes.names} differ from the factors in dataset.json"
                )
        super().__init__(
            root, resolution or self.stored_resolution, attributes, str(meta.get("name", root.name))
        )

    def __len__(self) -> int:
        return len(self._array)

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        batch = self._array[np.asarray(indices, dtype=np.int64)]
        if self.resolution == self.stored_resolution:
            return batch
        return np.stack([fit_square(Image.fromarray(im), self.resolution, resize=self.resize) for im in batch])


class ImageFolderDataset(ImageDataset):
    """Image files under ``root``, each centre-cropped to a square (or cropped to ``box``) and resized to
    ``resolution`` (PIL bicubic, antialiased when shrinking). Images are decoded lazily, on access.

    ``files``: the images, as POSIX paths relative to ``root``, in data set order; None lists every image
    under ``root`` (recursively, sorted by relative path; hidden files skipped). An explicit list is not
    checked at open (the format specs check it against the folder); a missing file fails on access, named.
    ``box``: (left, top, right, bottom) cropped from every image before the centre-square fit and resize
    (CelebA's official crop); an image the box does not fit in fails on access, named.
    ``attributes``: an Attributes table in file order, a CSV path, or None for ``<root>/attributes.csv`` when
    it exists. The CSV has a ``file`` column (paths relative to ``root``) and numeric columns; every image
    needs a row, rows without an image are ignored.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        attributes: str | Path | Attributes | None = None,
        name: str | None = None,
        files: Sequence[str] | None = None,
        box: Box | None = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        if resolution is None or resolution < 1:
            raise ValueError(f"an image folder needs a resolution >= 1, got {resolution}")
        self.files = list_images(root) if files is None else [Path(f).as_posix() for f in files]
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        self.box = _check_box(box)
        if attributes is None and (root / "attributes.csv").is_file():
            attributes = root / "attributes.csv"
        if isinstance(attributes, (str, Path)):
            attributes = _attributes_for_files(Path(attributes), self.files)
        super().__init__(root, resolution, attributes, name or root.name)

    def __len__(self) -> int:
        return len(self.files)

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.stack(
            [load_image(self.root / self.files[i], self.resolution, self.box, self.resize) for i in np.asarray(indices)]
        )

    def sources(self) -> list[tuple[str, Path | Callable[[], bytes], Box | None]]:
        return [(str(self.root / f), self.root / f, self.box) for f in self.files]


class LMDBDataset(ImageDataset):
    """Encoded images (PNG, JPEG, WEBP, ...) stored as the values of an LMDB environment folder ``root``
    (``data.mdb`` + ``lock.mdb``), each centre-cropped (or cropped to ``box``) and resized like an image
    folder.

    Two key layouts, told apart by a ``length`` record:

    - ``indexed`` (diffae's ``BaseLMDB``, PDAE / DiTi): ``length`` holds the number of images as ASCII digits
      and image i is stored under ``<prefix>-<i zero-filled>``, e.g. ``256-00000`` (FFHQ, PDAE's CelebA 64:
      the stored resolution, 5 digits) or ``None-0000000`` (diffae's CelebA: 7 digits). Prefix and width are
      read from the first such key; numbering from 0 (diffae) or 1 is detected.
    - ``keys`` (no ``length`` record, e.g. LSUN's official ``bedroom_train_lmdb``): every key is an image, in
      LMDB's byte-sorted key order; the key list is read once at open (one cursor pass, a few seconds for
      LSUN Bedroom's 3M keys) and kept in memory.

    ``indices``: the records this data set exposes, in order (a split of the environment); None = all.
    ``attributes``: an Attributes table aligned with the exposed items, or None.

    The environment is opened read-only (``lock=False``, ``readahead=False``) lazily, once per process and
    shared by every data set on it (``lmdb_environment``); the data set holds no handle, so it pickles, and a
    DataLoader worker (forked or spawned) reads through an environment of its own.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        attributes: Attributes | None = None,
        name: str | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        box: Box | None = None,
    ):
        root = Path(root)
        if not (root / "data.mdb").is_file():
            raise FileNotFoundError(f"not an LMDB environment folder (no data.mdb): {root}")
        if resolution is None or resolution < 1:
            raise ValueError(f"an LMDB data set needs a resolution >= 1, got {resolution}")
        self.root = root
        self.box = _check_box(box)
        with self._environment().begin(write=False) as txn:
            self.key_style, self._key_format, self._keys, self.num_records = _lmdb_layout(root, txn)
        if indices is None:
            self.indices = np.arange(self.num_records, dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
            bad = (self.indices < 0) | (self.indices >= self.num_records)
            if bad.any():
                raise ValueError(
                    f"{root}: record index {self.indices[np.argmax(bad)]} out of range "
                    f"for {self.num_records} records"
                )
        super().__init__(root, resolution, attributes, name or root.name)

    def __len__(self) -> int:
        return len(self.indices)

    def key(self, i: int) -> bytes:
        """The LMDB key of item ``i``."""
        record = int(self.indices[i])
        if self._keys is not None:
            return bytes(self._keys[record])
        prefix, width, first = self._key_format
        return f"{prefix}-{str(record + first).zfill(width)}".encode()

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        out = []
        with self._environment().begin(write=False) as txn:
            for i in np.asarray(indices, dtype=np.int64):
                key = self.key(int(i))
                value = txn.get(key)
                if value is None:
                    raise ValueError(f"{self.root}: no record under key {key!r} (item {int(i)})")
                out.append(
                    decode_image(value, self.resolution, self.box, name=f"{self.root} key {key!r}", resize=self.resize)
                )
        return np.stack(out)

    def sources(self) -> list[tuple[str, Path | Callable[[], bytes], Box | None]]:
        return [(f"{self.root} key {self.key(i)!r}", functools.partial(self._record, i), self.box)
                for i in range(len(self))]

    def _record(self, i: int) -> bytes:
        key = self.key(i)
        with self._environment().begin(write=False) as txn:
            value = txn.get(key)
        if value is None:
            raise ValueError(f"{self.root}: no record under key {key!r} (item {i})")
        return value

    def stored_size(self, i: int = 0) -> tuple[int, int]:
        """(width, height) of the stored image of item ``i`` (reads only its header)."""
        key = self.key(i)
        with self._environment().begin(write=False) as txn:
            value = txn.get(key)
        if value is None:
            raise ValueError(f"{self.root}: no record under key {key!r} (item {i})")
        try:
            with Image.open(io.BytesIO(value)) as im:
                return im.size
        except (OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read image {self.root} key {key!r}: {err}") from None

    def _environment(self):
        return lmdb_environment(self.root)


# The open LMDB environments of this process, by resolved path. py-lmdb refuses to open one environment twice
# in a process, so every data set on it (train and test splits, a pickled copy) shares one; and LMDB forbids
# using an environment across fork(), so a forked DataLoader worker closes what it inherited and opens its
# own.
_ENVIRONMENTS: dict[str, object] = {}
_ENVIRONMENTS_PID = os.getpid()


def lmdb_environment(root: str | Path):
    """This process's read-only environment of the LMDB folder ``root`` (``lock=False``,
    ``readahead=False``), opened on first use in each process."""
    global _ENVIRONMENTS_PID
    if _ENVIRONMENTS_PID != os.getpid():
        for inherited in _ENVIRONMENTS.values():
            inherited.close()  # in the child only: frees its copy and py-lmdb's "already open" mark
        _ENVIRONMENTS.clear()
        _ENVIRONMENTS_PID = os.getpid()
    key = str(Path(root).resolve())
    if key not in _ENVIRONMENTS:
        _ENVIRONMENTS[key] = _open_lmdb_env(Path(root))
    return _ENVIRONMENTS[key]


def close_lmdb_environment(root: str | Path) -> None:
    """Close this process's environment of ``root`` (e.g. before rewriting the LMDB); the data sets on it
    reopen it on their next access."""
    env = _ENVIRONMENTS.pop(str(Path(root).resolve()), None)
    if env is not None and _ENVIRONMENTS_PID == os.getpid():
        env.close()


def _open_lmdb_env(root: Path):
    try:
        import lmdb  # optional: only LMDB data sets need it
    except ImportError:
        raise ImportError(f"the LMDB data set {root} needs the lmdb package: pip install lmdb") from None
    try:
        return lmdb.open(
            str(root), readonly=True, lock=False, readahead=False, meminit=False, max_readers=256, subdir=True
        )
    except lmdb.Error as err:
        raise ValueError(f"cannot open the LMDB environment {root}: {err}") from None


_INDEXED_KEY = re.compile(rb"^(.+)-(\d+)$")


def _lmdb_layout(root: Path, txn) -> tuple[str, tuple[str, int, int] | None, np.ndarray | None, int]:
    """(key style, (prefix, width, first index) for ``indexed``, key array for ``keys``, record count)."""
    raw = txn.get(b"length")
    if raw is None:
        keys = list(txn.cursor().iternext(keys=True, values=False))
        if not keys:
            raise ValueError(f"{root}: the LMDB environment is empty")
        if any(k.endswith(b"\0") for k in keys):
            raise ValueError(f"{root}: keys ending in NUL bytes are not supported")
        return "keys", None, np.array(keys, dtype=bytes), len(keys)
    try:
        length = int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{root}: the 'length' record must be an ASCII integer, got {raw[:40]!r}") from None
    # keys sort byte-wise, so '<prefix>-<digits>' image keys come before 'length'; skip any other record
    for key in itertools.islice(txn.cursor().iternext(keys=True, values=False), 64):
        match = _INDEXED_KEY.match(key)
        if match:
            prefix, width = match.group(1).decode(), len(match.group(2))
            break
    else:
        raise ValueError(f"{root}: a 'length' record but no '<prefix>-<index>' image keys (e.g. '256-00000')")
    for first in (0, 1):
        if txn.get(f"{prefix}-{str(first).zfill(width)}".encode()) is not None:
            break
    else:
        raise ValueError(f"{root}: neither {prefix}-{'0' * width} nor {prefix}-{str(1).zfill(width)} exists")
    last = f"{prefix}-{str(length - 1 + first).zfill(width)}"
    if length < 1 or txn.get(last.encode()) is None:
        raise ValueError(f"{root}: 'length' says {length} images but key {last!r} is missing")
    return "indexed", (prefix, width, first), None, length


def _check_box(box: Sequence[int] | None) -> Box | None:
    if box is None:
        return None
    left, top, right, bottom = (int(v) for v in box)
    if not (0 <= left < right and 0 <= top < bottom):
        raise ValueError(
            f"crop box must be (left, top, right, bottom) with left < right, top < bottom; got {box}"
        )
    return left, top, right, bottom


def list_images(root: Path) -> list[str]:
    """Relative POSIX paths of the images under ``root``, sorted; hidden files and folders are skipped
    (e.g. macOS ``._x.png`` side files, which are not images)."""
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if (
            p.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in rel.parts)
            and p.is_file()
        ):
            found.append(rel.as_posix())
    return sorted(found)


def _attributes_for_files(path: Path, files: list[str]) -> Attributes:
    """The rows of the ``file``-keyed table ``path`` for ``files``, in that order."""
    keys, names, values = _read_table(path, "file")
    # kinds and classes come from the whole table, so that every split of one table agrees on them
    table = Attributes(names, values)
    row_of: dict[str, int] = {}
    for r, key in enumerate(keys):
        key = Path(key).as_posix().removeprefix("./")
        if key in row_of:
            raise ValueError(f"{path}: file {key!r} has more than one row")
        row_of[key] = r
    missing = [f for f in files if f not in row_of]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} of {len(files)} images have no row, e.g. {', '.join(missing[:5])}"
        )
    return table.subset([row_of[f] for f in files])


def load_image(path: Path, resolution: int, box: Box | None = None, resize: str = "bicubic") -> np.ndarray:
    """Decode the file ``path`` to RGB uint8 (R, R, 3); see ``decode_image``."""
    return decode_image(path, resolution, box, name=str(path), resize=resize)


def decode_image(
    source: Path | bytes, resolution: int, box: Box | None = None, name: str = "", resize: str = "bicubic"
) -> np.ndarray:
    """Decode an image file or encoded bytes to RGB uint8 (R, R, 3): crop ``box`` if given, then the centre
    square, resized to R (``resize``: bicubic or bilinear, see ``fit_square``).

    Transparent images are composited on white; 16-bit images are scaled to 8 bits. An unreadable or
    truncated image, or one the box does not fit in, raises ValueError naming it (``name``)."""
    name = name or str(source)[:80]
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as im:
            im.load()
            rgb = to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL reports a bad file from deep inside its decoders; one line naming the file is more useful
        raise ValueError(f"cannot read image {name}: {err}") from None
    try:
        return fit_square(rgb, resolution, box, resize)
    except ValueError as err:
        raise ValueError(f"image {name}: {err}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        # 16-bit files open as I;16 (or I in older Pillow); a mode-I image with values <= 255 is taken as 8-bit
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def fit_square(im: Image.Image, resolution: int, box: Box | None = None, resize: str = "bicubic") -> np.ndarray:
    """Centre square of the image (or of ``box`` inside it), resized to (R, R). A square already R wide is cut
    out exactly.

    ``resize="bicubic"`` (diti's default): one bicubic step (= resize the shorter side to R, then crop; the
    filter reads the pixels just outside the square, as resize-then-crop does). ``resize="bilinear"``: the
    official pipeline, crop the square out first, then PIL bilinear (torchvision's ``Resize`` on a PIL image).
    """
    if resize not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize filter {resize!r}; expected one of {RESIZE_FILTERS}")
    w, h = im.size
    left, top, right, bottom = (0, 0, w, h) if box is None else box
    if left < 0 or top < 0 or right > w or bottom > h:
        raise ValueError(f"crop box {box} does not fit in the {w}x{h} image")
    s = min(right - left, bottom - top)
    left, top = left + (right - left - s) // 2, top + (bottom - top - s) // 2
    square = (left, top, left + s, top + s)
    if s == resolution:
        return np.asarray(im if square == (0, 0, w, h) else im.crop(square))
    if resize == "bilinear":
        cut = im if square == (0, 0, w, h) else im.crop(square)
        return np.asarray(cut.resize((resolution, resolution), Image.Resampling.BILINEAR))
    return np.asarray(im.resize((resolution, resolution), Image.Resampling.BICUBIC, box=square))


def read_dataset_json(root: Path) -> dict:
    file = root / "dataset.json"
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return meta

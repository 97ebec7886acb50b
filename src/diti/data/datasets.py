"""Image data sets: one generic loader for every format, and the attribute table that goes with the images.

Formats, detected by ``detect_format`` and opened by ``open_dataset``:

- ``diti-array``: a folder with ``dataset.json`` (``"format": "diti-array"``) and, per split,
  ``<split>/images.npy`` (N, R, R, 3) uint8 and ``<split>/factors.csv`` (``index,<names>``, integer codes,
  class names in ``dataset.json``). ``diti.data.shapes.generate_shapes`` writes it.
- ``image-folder``: a folder of images (png, jpg, jpeg, bmp, webp, searched recursively). When it has
  ``train/``, ``valid/``, ``val/``, ``validation/`` or ``test/`` sub-folders, each is a split; otherwise the
  whole folder is the data set, whatever split is asked for. An optional ``attributes.csv`` in the (split)
  folder has a ``file`` column (paths relative to that folder) and one numeric column per attribute.

Every data set yields float32 images (3, R, R) in [-1, 1]. ``__getitems__`` returns a whole batch
(B, 3, R, R) at once, so a DataLoader needs ``collate_fn=collate_images`` (torch's default collate cannot
take a ready tensor).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_DIRS = ("train", "valid", "val", "validation", "test")
ARRAY_FORMAT_VERSION = 1
# Arrays up to this size are read into memory (fastest batched indexing); larger ones are memory-mapped.
IN_MEMORY_BYTES = 2 << 30


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

    def __getitem__(self, i: int) -> torch.Tensor:
        """Image ``i``: float32 (3, R, R) in [-1, 1]."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        return to_tensor(self.images([i]))[0]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        """Images ``indices``: float32 (B, 3, R, R) in [-1, 1]; DataLoader calls this for whole batches."""
        return to_tensor(self.images(indices))

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
        return np.stack([fit_square(Image.fromarray(im), self.resolution) for im in batch])


class ImageFolderDataset(ImageDataset):
    """Every image under ``root`` (recursively, sorted by relative path; hidden files skipped), resized so the
    shorter side is ``resolution`` and centre-cropped.

    ``attributes``: a CSV path, an Attributes table in file order, or None for ``<root>/attributes.csv`` when
    it exists. The CSV has a ``file`` column (paths relative to ``root``) and numeric columns; every image
    needs a row, rows without an image are ignored. Images are decoded lazily, on access.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        attributes: str | Path | Attributes | None = None,
        name: str | None = None,
    ):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        if resolution is None or resolution < 1:
            raise ValueError(f"an image folder needs a resolution >= 1, got {resolution}")
        self.files = list_images(root)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        if attributes is None and (root / "attributes.csv").is_file():
            attributes = root / "attributes.csv"
        if isinstance(attributes, (str, Path)):
            attributes = _attributes_for_files(Path(attributes), self.files)
        super().__init__(root, resolution, attributes, name or root.name)

    def __len__(self) -> int:
        return len(self.files)

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.stack([load_image(self.root / self.files[i], self.resolution) for i in np.asarray(indices)])


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


def load_image(path: Path, resolution: int) -> np.ndarray:
    """Decode ``path`` to RGB uint8 (R, R, 3): shorter side resized to R (bicubic), centre crop.

    Transparent images are composited on white; 16-bit images are scaled to 8 bits. An unreadable or
    truncated file raises ValueError naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # PIL reports a bad file from deep inside its decoders; one line naming the file is more useful
        raise ValueError(f"cannot read image {path}: {err}") from None
    return fit_square(rgb, resolution)


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


def fit_square(im: Image.Image, resolution: int) -> np.ndarray:
    """Centre square crop, resized to (R, R) in one bicubic step (= resize the shorter side to R, then crop)."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    if s == resolution and w == h:
        return np.asarray(im)
    out = im.resize((resolution, resolution), Image.Resampling.BICUBIC, box=(left, top, left + s, top + s))
    return np.asarray(out)


# ----------------------------------------------------------------------------------------------------
# Format detection and the one entry point
# ----------------------------------------------------------------------------------------------------
def read_dataset_json(root: Path) -> dict:
    file = root / "dataset.json"
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return meta


def detect_format(root: Path) -> str:
    """The format of the data set folder ``root``: the ``format`` of its ``dataset.json``, else ``image-folder``."""
    if (root / "dataset.json").is_file():
        fmt = read_dataset_json(root).get("format")
        if fmt not in _OPENERS:
            raise ValueError(f"{root / 'dataset.json'}: unknown format {fmt!r}; known: {sorted(_OPENERS)}")
        return fmt
    return "image-folder"


def _open_array(
    root: Path, split: str, resolution: int | None, attributes: str | Path | None
) -> ImageDataset:
    return ArrayImageDataset(root, split, resolution, attributes)


def _open_image_folder(
    root: Path, split: str, resolution: int | None, attributes: str | Path | None
) -> ImageDataset:
    if resolution is None:
        raise ValueError(f"{root} is an image folder: pass a resolution")
    splits = [d for d in SPLIT_DIRS if (root / d).is_dir()]
    if not splits:  # a plain folder is the whole data set, whatever split is asked for
        return ImageFolderDataset(root, resolution, attributes)
    if split not in splits:
        raise ValueError(f"{root}: no split {split!r}; available: {splits}")
    return ImageFolderDataset(root / split, resolution, attributes, name=root.name)


_OPENERS = {"diti-array": _open_array, "image-folder": _open_image_folder}


def open_dataset(
    path: str | Path,
    split: str = "train",
    resolution: int | None = None,
    attributes: str | Path | None = None,
) -> ImageDataset:
    """Open the data set at ``path`` (format detected by ``detect_format``).

    ``resolution``: optional for ``diti-array`` (None = stored; another value resizes on the fly), required
    for image folders. ``attributes``: a CSV replacing the data set's own attribute table (``index``-keyed
    for ``diti-array``, ``file``-keyed for image folders, paths relative to the split folder).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"data set not found: {root}")
    if not root.is_dir():
        raise ValueError(f"a data set is a folder, got the file {root}")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    return _OPENERS[detect_format(root)](root, split, resolution, attributes)

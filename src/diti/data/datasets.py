"""Image data sets: the classes every format is opened with (``diti.data.formats`` holds the formats).

Three classes serve every format; the formats themselves (which files, which split, which crop) are a table of
specs in ``diti.data.formats`` (``FORMATS``, ``detect_format``, ``open_dataset``, ``describe_formats``):

- ``ArrayImageDataset``: the ``diti-array`` format (``images.npy`` per split, written by ``generate_shapes``).
- ``ImageFolderDataset``: a list of image files under a folder (found recursively, or given explicitly, as the
  CelebA and LFW specs do), each centre-cropped (or cropped to a fixed box) and resized to the resolution.
- ``LMDBDataset`` (``diti.data.lmdb_dataset``): encoded images in an LMDB environment (diffae / PDAE keys
  ``<prefix>-<index>``, or any keys).

Every data set yields float32 images (3, R, R) in [-1, 1] (``diti.data.images`` converts them), with an
optional attribute table (``diti.data.attributes``). ``__getitems__`` returns a whole batch (B, 3, R, R) at
once, so a DataLoader needs ``collate_fn=collate_images`` (torch's default collate cannot take a ready tensor).

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

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .attributes import Attributes, attributes_for_files
from .images import Box, fit_square, load_image, to_tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLIT_DIRS = ("train", "valid", "val", "validation", "test")
ARRAY_FORMAT_VERSION = 1
# Arrays up to this size are read into memory (fastest batched indexing); larger ones are memory-mapped.
IN_MEMORY_BYTES = 2 << 30

logger = logging.getLogger(__name__)


def collate_images(batch: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """DataLoader collate for ImageDataset: passes a ``__getitems__`` batch through, stacks single items."""
    return batch if torch.is_tensor(batch) else torch.stack(list(batch))


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
        self.box = check_box(box)
        if attributes is None and (root / "attributes.csv").is_file():
            attributes = root / "attributes.csv"
        if isinstance(attributes, (str, Path)):
            attributes = attributes_for_files(Path(attributes), self.files)
        super().__init__(root, resolution, attributes, name or root.name)

    def __len__(self) -> int:
        return len(self.files)

    def images(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return np.stack(
            [load_image(self.root / self.files[i], self.resolution, self.box, self.resize) for i in np.asarray(indices)]
        )

    def sources(self) -> list[tuple[str, Path | Callable[[], bytes], Box | None]]:
        return [(str(self.root / f), self.root / f, self.box) for f in self.files]


def check_box(box: Sequence[int] | None) -> Box | None:
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


def read_dataset_json(root: Path) -> dict:
    file = root / "dataset.json"
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return meta

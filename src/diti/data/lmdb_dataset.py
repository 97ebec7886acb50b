"""LMDB data sets: encoded images stored as the values of an LMDB environment (diffae / PDAE keys, or any keys),
and the one read-only environment per process that every data set on a folder shares."""

from __future__ import annotations

import functools
import io
import itertools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .attributes import Attributes
from .datasets import ImageDataset, check_box
from .images import Box, decode_image


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
        self.box = check_box(box)
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

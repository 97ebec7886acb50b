"""Lazy image arrays inside released data files: a member of an ``.npz``, a dataset of an HDF5 file.

The disentanglement data sets ship as one large array each (Shapes3D 5.9 GB, MPI3D 12.7 GB uncompressed), so
nothing here reads a whole array into memory:

- ``npz_member(path, name)``: a member of an ``.npz``. A member stored without compression (``np.savez``) is
  memory-mapped where it lies inside the zip file. A deflated member (``np.savez_compressed``: the released
  dSprites file, disent's ``cars3d.npz``) cannot be read at random offsets, so it is decompressed once, in
  chunks of 64 MB, to an uncompressed ``.npy`` in the cache folder (``cache_dir``), which is then
  memory-mapped; the cache file is named after the source's path, size and modification time, so a changed
  file is extracted again.
- ``H5Array``: a dataset of an HDF5 file (h5py), read per batch; the file is opened on first use in each
  process (an h5py handle cannot cross ``fork`` or be pickled into DataLoader workers).
- ``npz_headers(path)``: the shape and dtype of every member of an ``.npz`` from its ``.npy`` headers only, and
  whether it is compressed; the format checks use it before anything is read.

Every array here has ``shape``, ``dtype`` and ``take(indices)`` -> an in-memory array of those rows (any order,
repeats allowed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

CACHE_ENV = "DITI_CACHE"  # where extracted arrays go; default ~/.cache/diti
_CHUNK = 64 << 20


def cache_dir() -> Path:
    """The folder extracted arrays are written to: ``$DITI_CACHE``, else ``~/.cache/diti``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diti")


@dataclass(frozen=True)
class MemberHeader:
    """One ``.npy`` member of an ``.npz``: its array's shape and dtype, and whether it is deflated."""

    shape: tuple[int, ...]
    dtype: np.dtype
    compressed: bool
    fortran_order: bool


def npz_headers(path: str | Path) -> dict[str, MemberHeader]:
    """Member name (without ``.npy``) -> header, reading only the ``.npy`` headers (a few hundred bytes each).

    ValueError when ``path`` is not a zip file or a member is not an ``.npy``."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz (zip) file: {err}") from None
    out = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                shape, fortran, dtype = _read_npy_header(f, f"{path}:{info.filename}")
            out[info.filename[:-4]] = MemberHeader(
                tuple(shape), dtype, info.compress_type != zipfile.ZIP_STORED, fortran
            )
    return out


def _read_npy_header(f, name: str):
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)
    except ValueError as err:
        raise ValueError(f"{name} is not a .npy array: {err}") from None


def npz_member(path: str | Path, name: str) -> MappedArray:
    """The member ``name`` of the ``.npz`` at ``path`` as a read-only memory map (see the module docstring:
    deflated members are extracted to the cache folder once). Object arrays are refused (nothing is
    unpickled)."""
    path = Path(path)
    headers = npz_headers(path)
    if name not in headers:
        raise ValueError(f"{path} has no member {name!r}; its members: {sorted(headers)}")
    header = headers[name]
    if header.dtype.hasobject:
        raise ValueError(f"{path}:{name} holds Python objects; diti does not unpickle data")
    if header.fortran_order:
        raise ValueError(f"{path}:{name} is stored in Fortran order; expected C order")
    if not header.compressed:
        return MappedArray(path, _stored_offset(path, name), header.dtype, header.shape)
    extracted = _extracted(path, name, header)
    with open(extracted, "rb") as f:
        _read_npy_header(f, str(extracted))
        return MappedArray(extracted, f.tell(), header.dtype, header.shape)


class MappedArray:
    """A C-order array at byte ``offset`` of the file ``path``, memory-mapped on first use in each process
    (pickling it, into a DataLoader worker, sends the path, never the pixels)."""

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.shape = Path(path), int(offset), np.dtype(dtype), tuple(shape)
        self._map = None

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
        return np.asarray(self._map[np.asarray(indices, dtype=np.int64)])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}


def _stored_offset(path: Path, name: str) -> int:
    """Byte offset of the array data of the uncompressed member ``name`` inside the zip file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name + ".npy")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header; name and extra-field lengths at bytes 26 and 28
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: bad zip local header for member {name!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        _read_npy_header(f, f"{path}:{name}")
        return f.tell()


def cache_file(source: Path, tag: str) -> Path:
    """The cache file of ``source`` (a file or folder) for ``tag``: named after its resolved path, size and
    modification time."""
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{tag}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{source.name}.{tag}.{digest}.npy"


def writable_cache(target: Path) -> None:
    """Make the cache folder of ``target``; ValueError naming $DITI_CACHE when it cannot be written."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = target.parent / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write the cache folder {target.parent} ({err.strerror or err}); set "
                         f"${CACHE_ENV} to a folder with room for the extracted array") from None


def _extracted(path: Path, name: str, header: MemberHeader) -> Path:
    target = cache_file(path, name)
    if target.is_file():
        return target
    writable_cache(target)
    nbytes = int(np.prod(header.shape)) * header.dtype.itemsize
    logger.warning(
        "%s:%s is compressed, so it cannot be read lazily; extracting it once (%.1f GB) to %s",
        path, name, nbytes / 1e9, target,
    )
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=header.dtype, shape=header.shape)
        flat = memoryview(out.reshape(-1).view(np.uint8))
        with zipfile.ZipFile(path) as zf, zf.open(name + ".npy") as f:
            _read_npy_header(f, f"{path}:{name}")
            pos = 0
            while pos < nbytes:
                got = f.readinto(flat[pos : min(pos + _CHUNK, nbytes)])
                if not got:
                    raise ValueError(f"{path}:{name} ends after {pos} of {nbytes} bytes")
                pos += got
        out.flush()
        del flat, out
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def h5_datasets(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Dataset name -> (shape, dtype) of the top level of the HDF5 file ``path`` (metadata only)."""
    h5py = _h5py(path)
    try:
        with h5py.File(path, "r") as f:
            return {k: (tuple(v.shape), v.dtype) for k, v in f.items() if isinstance(v, h5py.Dataset)}
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file: {err}") from None


def _h5py(path):
    try:
        import h5py
    except ImportError:
        raise ImportError(f"{path} needs the h5py package: pip install h5py") from None
    return h5py


class H5Array:
    """The dataset ``name`` of the HDF5 file ``path``, read lazily (h5py); reopened in each process."""

    def __init__(self, path: str | Path, name: str):
        self.path, self.name = Path(path), name
        self._file, self._pid = None, None
        dataset = self._dataset()
        self.shape, self.dtype = tuple(dataset.shape), dataset.dtype

    def _dataset(self):
        if self._pid != os.getpid():
            h5py = _h5py(self.path)
            try:
                self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            except OSError as err:
                raise ValueError(f"{self.path} is not a readable HDF5 file: {err}") from None
        if self.name not in self._file:
            raise ValueError(f"{self.path} has no dataset {self.name!r}; it has {sorted(self._file)}")
        return self._file[self.name]

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices) -> np.ndarray:
        """Rows ``indices`` (any order, repeats allowed): h5py reads increasing, distinct indices."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        unique, inverse = np.unique(indices, return_inverse=True)
        return self._dataset()[unique][inverse]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}


def take(array, indices) -> np.ndarray:
    """Rows ``indices`` of an ``H5Array``, a ``MappedArray`` or a numpy array, in memory."""
    if isinstance(array, (H5Array, MappedArray)):
        return array.take(indices)
    return np.asarray(array[np.asarray(indices, dtype=np.int64)])

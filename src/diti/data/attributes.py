"""The attribute table of a data set: per-image factors or attributes, categorical or continuous, read from and
written to CSV."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


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
        keys, names, values = read_table(path, "index")
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


def read_table(path: Path, key: str) -> tuple[list[str], list[str], np.ndarray]:
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


def attributes_for_files(path: Path, files: list[str]) -> Attributes:
    """The rows of the ``file``-keyed table ``path`` for ``files``, in that order."""
    keys, names, values = read_table(path, "file")
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

"""``diti data check``: decode every image of a data set once and list the unreadable and the odd ones.

A corrupt file otherwise ends training only when its batch comes up (hours into a large set, and again at
the same step after ``--resume``). The check opens every split of the folder (as ``open_dataset`` would)
and runs each image through the same decoding as training (crop box, centre square, resize), so a file it
passes is a file training can read. What it reports, per file:

- ``unreadable``: cannot be opened or decoded (empty, truncated, not an image, unknown format), or the
  crop box does not fit in it: training stops on it (or skips it with ``data.skip_unreadable=true``);
- ``converted``: decoded, but not plain 8-bit RGB (grayscale, palette, alpha composited on white, 16-bit
  scaled to 8 bits, CMYK);
- ``upsampled``: its crop square is smaller than the resolution (only with a resolution);
- ``extension``: the file's bytes are in another format than its extension says.

A split that cannot be opened at all (a missing table row, a missing partition) is one ``error`` finding.
Formats that store decoded pixels (``diti-array``, e.g. ``diti data shapes``, and the factor grids
``shapes3d``, ``dsprites``, ``mpi3d``, ``cars3d``) have nothing to decode: opening each split checks their
arrays (keys, shapes, dtypes, image count, the order of the label tables; a file in another layout is an
``error`` finding naming what was expected), and their images are counted as ``stored``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from .formats import FORMATS, detect_format, open_dataset
from .images import Box, fit_square, to_rgb

# PIL's format name for each image extension diti reads
_FORMAT_OF_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}
KINDS = ("unreadable", "converted", "upsampled", "extension", "error")


@dataclass
class Finding:
    """One unreadable or odd file (or a split that could not be opened: kind ``error``)."""

    kind: str
    split: str
    item: str
    message: str


@dataclass
class CheckReport:
    root: str
    format: str
    resolution: int | None
    splits: list[str]
    checked: int  # images decoded (each file once, whatever splits it is in)
    findings: list[Finding] = field(default_factory=list)
    stored: int = 0  # images stored as decoded pixels, checked when their split was opened (nothing to decode)

    @property
    def unreadable(self) -> list[Finding]:
        """Findings that stop training: unreadable files and splits that cannot be opened."""
        return [f for f in self.findings if f.kind in ("unreadable", "error")]

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts()}

    def counts(self) -> dict[str, int]:
        return {kind: sum(f.kind == kind for f in self.findings) for kind in KINDS}

    def format_table(self) -> str:
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts().items() if n) or "nothing odd"
        what = [f"checked {self.checked} images"] if self.checked or not self.stored else []
        if self.stored:
            what.append(f"opened {self.stored} images stored as decoded pixels (nothing to decode)")
        lines = [f"{' and '.join(what)} of {self.root} (format {self.format}, splits "
                 f"{', '.join(self.splits) or 'none'}): {counts}"]
        width = max((len(f.kind) for f in self.findings), default=0)
        lines += [f"{f.kind:<{width}}  {f.split}  {f.item}: {f.message}" for f in self.findings]
        return "\n".join(lines)


def inspect_image(
    source: Path | Callable[[], bytes], resolution: int | None = None, box: Box | None = None
) -> list[tuple[str, str]]:
    """(kind, message) pairs for one image file (a path, or a function returning its bytes), decoded as
    training decodes it; empty when it is plain RGB that needs no upsampling."""
    try:
        data = source.read_bytes() if isinstance(source, Path) else source()
    except (OSError, ValueError) as err:
        return [("unreadable", str(getattr(err, "strerror", None) or err))]
    if not data:
        return [("unreadable", "empty file")]
    notes = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode, fmt, size = im.mode, im.format, im.size
            rgb = to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return [("unreadable", str(err) or type(err).__name__)]
    try:
        square = _square_side(size, box)
        fit_square(rgb, resolution or square, box)
    except ValueError as err:
        return [("unreadable", str(err))]
    if mode != "RGB":
        notes.append(("converted", f"mode {mode} ({_conversion(mode)})"))
    if resolution is not None and square < resolution:
        notes.append(("upsampled", f"{square}x{square} crop square upsampled to {resolution}x{resolution}"))
    expected = _FORMAT_OF_SUFFIX.get(source.suffix.lower()) if isinstance(source, Path) else None
    if expected is not None and fmt is not None and fmt != expected:
        notes.append(("extension", f"{source.suffix} file holding {fmt} data"))
    return notes


def _square_side(size: tuple[int, int], box: Box | None) -> int:
    w, h = size
    left, top, right, bottom = (0, 0, w, h) if box is None else box
    return min(right - left, bottom - top)


def _conversion(mode: str) -> str:
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return "alpha composited on white"
    if mode.startswith("I;16") or mode in ("I", "F"):
        return "high bit depth scaled to 8 bits"
    return "converted to RGB"


class _Items(torch.utils.data.Dataset):
    """The (name, source, box) items of a data set as a Dataset, so a DataLoader can check them in parallel."""

    def __init__(self, sources, resolution: int | None):
        self.sources, self.resolution = sources, resolution

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> list[tuple[str, str]]:
        _, source, box = self.sources[i]
        return inspect_image(source, self.resolution, box)


def check_dataset(
    root: str | Path,
    resolution: int | None = None,
    format: str | None = None,
    attributes: str | Path | None = None,
    workers: int = 0,
    progress: bool = True,
) -> CheckReport:
    """Decode every image of every split of the data set at ``root`` once; see the module docstring.

    ``resolution`` None checks decoding and the crop at the images' own size (nothing is reported as
    upsampled). ``workers``: DataLoader worker processes that decode in parallel.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data set folder not found: {root}")
    fmt = format or detect_format(root)
    if fmt not in FORMATS:
        raise ValueError(f"unknown data set format {fmt!r}; known: {list(FORMATS)}")
    splits = FORMATS[fmt].splits(root, None if attributes is None else Path(attributes))
    report = CheckReport(str(root), fmt, resolution, list(splits), 0)
    seen: set[str] = set()
    for split in splits:
        try:
            # any resolution opens the split (the crop and resize are checked per image below)
            dataset = open_dataset(root, split, resolution or 64, attributes=attributes, format=fmt)
        except (ValueError, FileNotFoundError) as err:
            report.findings.append(Finding("error", split, str(root), str(err)))
            continue
        sources = dataset.sources()
        if sources is None:  # decoded pixels, checked when the split was opened: nothing to decode
            report.stored += len(dataset)
            continue
        fresh = [s for s in sources if s[0] not in seen]
        seen.update(name for name, _, _ in fresh)
        loader = torch.utils.data.DataLoader(_Items(fresh, resolution), batch_size=None, num_workers=workers)
        bar = tqdm(loader, total=len(fresh), desc=f"check {split}", disable=not progress, dynamic_ncols=True)
        for (name, _, _), notes in zip(fresh, bar, strict=True):
            report.findings += [Finding(kind, split, name, message) for kind, message in notes]
        report.checked += len(fresh)
    return report


def write_report(report: CheckReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return path

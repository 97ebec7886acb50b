"""Image grids with row and column labels (PIL), shared by the counterfactual and manipulation figures.

Cells are upscaled with nearest-neighbour sampling to ``cell`` pixels, so 16-32 px images stay crisp and
the labels readable. Row labels go in a column on the left, column labels in a row on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..data.images import to_uint8

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1, or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def image_grid(
    images: torch.Tensor | np.ndarray,
    ncols: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: int = 64,
    pad: int = 2,
    font_size: int = 12,
    title: str | None = None,
) -> Image.Image:
    """A grid of ``images`` (row-major, ``ncols`` per row) as one PIL image.

    ``images``: (N, 3, H, W) in [-1, 1] or uint8 (N, H, W, 3); N must be a multiple of ``ncols``.
    ``row_labels``: one per row (drawn on the left); ``col_labels``: one per column (drawn on top; a column
    widens to fit its label, the image centred in it). Without labels the grid is exactly
    (ncols * (cell + pad) + pad) x (nrows * (cell + pad) + pad) pixels.
    """
    pixels = to_uint8(images)
    n = len(pixels)
    if ncols < 1 or n == 0 or n % ncols:
        raise ValueError(f"{n} images do not fill rows of ncols={ncols}")
    nrows = n // ncols
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"{len(row_labels)} row labels for {nrows} rows")
    if col_labels is not None and len(col_labels) != ncols:
        raise ValueError(f"{len(col_labels)} column labels for {ncols} columns")

    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag", font)[1] + 4
    # a column is as wide as its widest label, so long labels never run into each other
    col_w = max([cell, *(_text_size(probe, s, font)[0] + 6 for s in col_labels or [])])
    label_w = 0
    if row_labels:
        label_w = max(_text_size(probe, s, font)[0] for s in row_labels) + 8
    header_h = line_h if col_labels else 0
    title_h = line_h + 2 if title else 0
    width = label_w + ncols * (col_w + pad) + pad
    height = title_h + header_h + nrows * (cell + pad) + pad
    if title:
        width = max(width, _text_size(probe, title, font)[0] + 8)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill=TEXT, font=font)
    top = title_h + header_h
    for c, text in enumerate(col_labels or []):
        x = label_w + pad + c * (col_w + pad) + col_w // 2
        draw.text((x, title_h + line_h // 2), text, fill=TEXT, font=font, anchor="mm")
    for r in range(nrows):
        y = top + pad + r * (cell + pad)
        if row_labels:
            draw.text((4, y + cell // 2), row_labels[r], fill=TEXT, font=font, anchor="lm")
        for c in range(ncols):
            tile = Image.fromarray(pixels[r * ncols + c]).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (col_w + pad) + (col_w - cell) // 2, y))
    return canvas


def save_image_grid(path: str | Path, images: torch.Tensor | np.ndarray, ncols: int, **kwargs) -> Path:
    """``image_grid(images, ncols, **kwargs)`` saved to ``path`` (PNG by extension); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, ncols, **kwargs).save(path)
    return path

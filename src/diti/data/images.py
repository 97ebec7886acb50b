"""Image conversion, in one place: decoding files, RGB, the centre-square fit and resize, uint8 <-> tensors.

The data sets (``diti.data.datasets``), the API's inputs (``diti.api.images``), ``diti data check`` and the
image grids all convert images with these functions, so an image is fitted the same way wherever it enters.
Tensors are float32 (B, 3, R, R) in [-1, 1]; arrays are uint8 (B, R, R, 3).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# (left, top, right, bottom) pixel box; PIL's order
Box = tuple[int, int, int, int]

RESIZE_FILTERS = ("bicubic", "bilinear")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    # one pass to a contiguous float32 copy, then the affine map in place (no further temporaries)
    return x.to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 127.5).sub_(1.0)


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images to uint8 (N, H, W, 3).

    Accepts float tensors/arrays (N, 3, H, W) in [-1, 1] (clipped) or uint8 arrays (N, H, W, 3) as they are.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, 3, H, W) or (N, H, W, 3), got shape {images.shape}")
    if images.dtype == np.uint8:
        if images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got shape {images.shape}")
        return images
    if images.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W) in [-1, 1], got shape {images.shape}")
    x = np.clip((images + 1.0) * 127.5, 0, 255)
    return np.round(x).astype(np.uint8).transpose(0, 2, 3, 1)


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


def open_image(path: str | Path, name: str = "", max_bytes: int | None = None,
               max_pixels: int | None = None) -> Image.Image:
    """A decoded copy of the image file ``path`` (any mode), for images a user hands over one at a time (the API's
    image files, the explorer's uploads).

    Refused with one ValueError sentence naming it (``name``, default the path): a file that is not an image PIL
    reads, a truncated one, one larger than ``max_bytes``, or one of more than ``max_pixels`` pixels (checked from
    the header, before anything is decoded)."""
    path = Path(path)
    name = name or f"image {path}"
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise ValueError(f"{name} is {path.stat().st_size / 2**20:.1f} MB, over the limit of "
                         f"{max_bytes / 2**20:.0f} MB")
    try:
        with Image.open(path) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ValueError(f"{name} is {im.width}x{im.height} pixels, over the limit of "
                                 f"{max_pixels / 1e6:.0f} megapixels")
            im.load()
            return im.copy()
    except Image.DecompressionBombError:
        # PIL refuses to even open an image of more than 2 x Image.MAX_IMAGE_PIXELS pixels
        limit = f"{max_pixels / 1e6:.0f}" if max_pixels is not None else f"{Image.MAX_IMAGE_PIXELS / 1e6:.0f}"
        raise ValueError(f"{name} has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, over the limit "
                         f"of {limit} megapixels") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"cannot read {name}: it is not an image file (or one in a format PIL cannot read)") from None
    except (OSError, SyntaxError) as err:
        # PIL reports a bad file from deep inside its decoders; one line naming the file is more useful
        raise ValueError(f"cannot read {name}: {err}") from None


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

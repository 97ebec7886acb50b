"""Images in and out of the API.

In: PIL images (any size and mode), uint8 arrays (H, W, 3) or (B, H, W, 3) of any size, or float tensors
(3, R, R) or (B, 3, R, R) in [-1, 1] at the model's resolution R. PIL images and arrays are fitted exactly as
the data loader fits a data set's images (``diti.data.images.fit_square``): converted to RGB (transparency
composited on white), the centre square (or a crop box that the run's data format prescribes for images of
that size, e.g. CelebA's official crop) resized to R with the run's ``data.resize`` filter (bicubic by default). Tensors are taken as they are,
so their shape and range are checked; anything else is refused with a ValueError that names the problem.

Out (``output_type``): ``"pil"`` a list of PIL images, ``"np"`` uint8 (B, R, R, 3), ``"pt"`` the decoded
float tensor (B, 3, R, R) on the CPU, not clipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.images import Box, fit_square, to_rgb, to_tensor, to_uint8

OUTPUT_TYPES = ("pil", "np", "pt")
# float tensors may overshoot [-1, 1] by this much (e.g. a decoded image fed back), beyond it they are refused
RANGE_TOLERANCE = 1e-2

HINT = "images must be PIL images, uint8 arrays (H, W, 3) / (B, H, W, 3), or float tensors (B, 3, R, R) in [-1, 1]"


def to_model_input(
    images, resolution: int, channels: int = 3, crop_boxes: Mapping[tuple[int, int], Box] | None = None,
    resize: str = "bicubic",
) -> torch.Tensor:
    """float32 (B, C, R, R) in [-1, 1] on the CPU, from any of the inputs in the module docstring.

    ``crop_boxes`` maps an image size (width, height) to the box cropped from images of exactly that size
    before the centre-square fit (the run's data format decides; empty for most data sets); ``resize``: the
    filter (``fit_square``).
    """
    crop_boxes = crop_boxes or {}
    if isinstance(images, torch.Tensor):
        return _check_tensor(images, resolution, channels)
    if isinstance(images, np.ndarray):
        return to_tensor(_fit_array(images, resolution, crop_boxes, resize))
    if isinstance(images, Image.Image):
        return to_tensor(np.stack([_fit_pil(images, resolution, crop_boxes, resize)]))  # a writable copy
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if not images:
            raise ValueError("no images given (an empty list)")
        return torch.cat([to_model_input(im, resolution, channels, crop_boxes, resize) for im in images])
    raise ValueError(f"{HINT}; got {type(images).__name__}")


def _fit_pil(im: Image.Image, resolution: int, crop_boxes, resize: str) -> np.ndarray:
    rgb = to_rgb(im)
    return fit_square(rgb, resolution, crop_boxes.get(rgb.size), resize)


def _fit_array(images: np.ndarray, resolution: int, crop_boxes, resize: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise ValueError(
            f"numpy images must be uint8 (0..255) arrays (H, W, 3) or (B, H, W, 3); got dtype {images.dtype} "
            "(pass float images as a torch tensor (B, 3, R, R) in [-1, 1])"
        )
    batch = images[None] if images.ndim == 3 else images
    if batch.ndim != 4 or batch.shape[-1] != 3:
        channels = f" ({batch.shape[-1]} channels)" if batch.ndim == 4 else ""
        raise ValueError(
            f"uint8 images must be RGB arrays (H, W, 3) or (B, H, W, 3); got shape {images.shape}{channels}. "
            "Convert them to RGB first, or pass PIL images (any mode is converted as the data loader does)"
        )
    if len(batch) == 0:
        raise ValueError("no images given (an empty batch)")
    if batch.shape[1:3] == (resolution, resolution):
        return batch if batch.flags.writeable else batch.copy()  # torch shares memory only with writable arrays
    return np.stack([_fit_pil(Image.fromarray(im), resolution, crop_boxes, resize) for im in batch])


def _check_tensor(x: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    if not torch.is_floating_point(x):
        raise ValueError(
            f"tensor images must be float (B, {channels}, {resolution}, {resolution}) in [-1, 1]; got dtype "
            f"{x.dtype} (pass uint8 images as a numpy array (B, H, W, 3))"
        )
    batch = x[None] if x.dim() == 3 else x
    if batch.dim() != 4 or batch.shape[1] != channels:
        raise ValueError(
            f"tensor images must be ({channels}, {resolution}, {resolution}) or (B, {channels}, {resolution}, "
            f"{resolution}); got shape {tuple(x.shape)}"
        )
    if tuple(batch.shape[-2:]) != (resolution, resolution):
        raise ValueError(
            f"tensor images must be {resolution}x{resolution}, the model's resolution; got "
            f"{batch.shape[-2]}x{batch.shape[-1]} (PIL images and uint8 arrays are resized, tensors are not)"
        )
    if len(batch) == 0:
        raise ValueError("no images given (an empty batch)")
    batch = batch.detach().to("cpu", torch.float32)
    if not torch.isfinite(batch).all():
        raise ValueError("tensor images contain NaN or inf")
    lo, hi = float(batch.min()), float(batch.max())
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"float images must be in [-1, 1]; got values in [{lo:.3g}, {hi:.3g}] (0..255 images: pass a uint8 "
            "numpy array; 0..1 images: x * 2 - 1)"
        )
    return batch


def from_model_output(x: torch.Tensor, output_type: str = "pil"):
    """Decoded images (B, C, R, R) -> ``output_type`` (module docstring)."""
    check_output_type(output_type)
    if output_type == "pt":
        return x.detach().float().cpu()
    arr = to_uint8(x)
    return arr if output_type == "np" else [Image.fromarray(a) for a in arr]


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")

"""diti.data: image data sets behind one ``open_dataset``, attribute tables, and the procedural shapes set."""

from .datasets import (
    ArrayImageDataset,
    Attributes,
    ImageDataset,
    ImageFolderDataset,
    collate_images,
    detect_format,
    load_image,
    open_dataset,
)
from .shapes import SHAPES_FACTORS, Factor, generate_shapes, render_shapes, sample_factors

__all__ = [
    "SHAPES_FACTORS",
    "ArrayImageDataset",
    "Attributes",
    "Factor",
    "ImageDataset",
    "ImageFolderDataset",
    "collate_images",
    "detect_format",
    "generate_shapes",
    "load_image",
    "open_dataset",
    "render_shapes",
    "sample_factors",
]

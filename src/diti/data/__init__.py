"""diti.data: image data sets behind one ``open_dataset`` (a table of format specs), attribute tables, image
conversion (``diti.data.images``), and the procedural shapes set."""

from .attributes import Attributes
from .datasets import ArrayImageDataset, ImageDataset, ImageFolderDataset, collate_images
from .formats import (
    FORMATS,
    FormatSpec,
    describe_formats,
    detect_format,
    open_dataset,
    read_celeba_attributes,
    read_celeba_partition,
    read_lfw_attributes,
)
from .ground_truth import GridDataset, grid_split
from .images import load_image
from .lmdb_dataset import LMDBDataset
from .shapes import (
    SHAPES_FACTORS,
    SHAPES_V2_FACTORS,
    Factor,
    generate_shapes,
    render_shapes,
    sample_factors,
    shapes_factors,
)

__all__ = [
    "FORMATS",
    "SHAPES_FACTORS",
    "SHAPES_V2_FACTORS",
    "ArrayImageDataset",
    "Attributes",
    "Factor",
    "FormatSpec",
    "GridDataset",
    "ImageDataset",
    "ImageFolderDataset",
    "LMDBDataset",
    "collate_images",
    "describe_formats",
    "detect_format",
    "generate_shapes",
    "grid_split",
    "load_image",
    "open_dataset",
    "read_celeba_attributes",
    "read_celeba_partition",
    "read_lfw_attributes",
    "render_shapes",
    "sample_factors",
    "shapes_factors",
]

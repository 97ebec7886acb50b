"""diti's Python API: ``DiTiPipeline`` (one object for a trained DiTi or PDAE model), ``Inversion`` and
``load``. The command line and the explorer call this layer; it calls the library below it."""

from ..inference import Inversion
from .pipeline import DEFAULT_STEPS, DiTiPipeline, load

__all__ = ["DEFAULT_STEPS", "DiTiPipeline", "Inversion", "load"]

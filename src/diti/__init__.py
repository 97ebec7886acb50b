"""diti: disentangled representations from the time-steps of a frozen diffusion model (DiTi, PDAE).

    import diti
    model = diti.load("runs/diti")          # a `diti train` run folder, or a folder written by `diti export`
    z = model.encode(images)                # see diti.api.DiTiPipeline

``import diti`` stays cheap: torch and the models are imported on the first use of the API.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["DiTiPipeline", "Inversion", "__version__", "load"]


def load(path, device="cpu", dm=None, ema=True):
    """Open a trained model: ``diti.api.DiTiPipeline.from_pretrained(path, device, dm, ema)``.

    ``path``: a ``diti train`` run folder (its latest checkpoint) or a folder written by ``diti export``;
    ``dm``: the frozen DM's folder when it is not where the run says (e.g. a downloaded diffusers folder);
    ``ema``: the EMA weights (default) or the raw ones. Nothing is downloaded.
    """
    from .api import DiTiPipeline

    return DiTiPipeline.from_pretrained(path, device=device, dm=dm, ema=ema)


def __getattr__(name: str):
    if name in ("DiTiPipeline", "Inversion"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'diti' has no attribute {name!r}")

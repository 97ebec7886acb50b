"""diti: disentangled representations from the time-steps of a frozen diffusion model (DiTi, PDAE)."""

__version__ = "0.1.0"

"""diti.diffusion."""

"""diti.training."""

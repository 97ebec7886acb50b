"""diti.models."""

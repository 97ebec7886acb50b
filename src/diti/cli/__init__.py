"""diti.cli."""

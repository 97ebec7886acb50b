"""diti.evaluation."""

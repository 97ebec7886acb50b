"""Apps on top of the API: the counterfactual explorer (``diti explore``, ``diti.app.explorer``)."""

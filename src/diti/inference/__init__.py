"""Inference with a trained DiTi / PDAE model: codes, DDIM inversion and decoding, which dims to edit, and the
counterfactual.

One implementation of each serves every caller: the Python API (``diti.api``, and the explorer through it),
the counterfactual figures and the fidelity measurement (``diti.evaluation``). The functions take a
``DiTiModel`` in eval mode and tensors on its device.

- ``inversion``: ``Inversion`` (z, x_T), ``invert``, ``decode``, ``reconstruct``;
- ``selection``: ``select_dims`` (chunks, stages or dims of z), ``DimGroup`` and the standard groups
  (``dim_groups``, ``chunk_groups``, ``selection_group``);
- ``counterfactual``: the mode checks, ``mix_codes``, ``slerp`` and ``counterfactuals`` (codes and noise of
  every (group, alpha) cell of a batch of pairs, and their decoding).
"""

from .counterfactual import (
    MODES,
    X_T_MODES,
    Counterfactuals,
    check_modes,
    counterfactuals,
    edit_alpha,
    figure_alphas,
    mix_codes,
    slerp,
)
from .inversion import Inversion, decode, invert, reconstruct
from .selection import DimGroup, chunk_groups, dim_groups, select_dims, selection_group

__all__ = [
    "MODES",
    "X_T_MODES",
    "Counterfactuals",
    "DimGroup",
    "Inversion",
    "check_modes",
    "chunk_groups",
    "counterfactuals",
    "decode",
    "dim_groups",
    "edit_alpha",
    "figure_alphas",
    "invert",
    "mix_codes",
    "reconstruct",
    "select_dims",
    "selection_group",
    "slerp",
]

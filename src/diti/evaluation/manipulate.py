"""Attribute manipulation with ProbMask (docs/evaluation.md).

A linear classifier of one binary attribute on standardised codes u = (z - mean) / std, restricted to a
learned sparse mask of d' dims; an edit moves z along the classifier's direction inside the mask and decodes
with DDIM from the image's own x_T.

ProbMask (Zhou et al., "Effective Sparsification of Neural Networks with Global Sparsity Constraint", CVPR
2021), the formulation used here:

- every dim i has a keep probability s_i in [0, 1], constrained to sum(s) = d' (the expected mask size), and a
  classifier weight w_i; the classifier is logit = sum_i m_i w_i u_i + b with a mask m_i ~ Bernoulli(s_i);
- training samples the relaxed (binary concrete / Gumbel-sigmoid) mask
  m_i = sigmoid((logit(s_i) + log U - log(1 - U)) / tau), U ~ U(0, 1), so both s and w get gradients, with
  tau annealed geometrically from ``tau_start`` to ``tau_end`` over the epochs; Adam updates s, w, b on the
  class-balanced BCE, and after every step s is projected back onto {0 <= s <= 1, sum(s) = d'}
  (s <- clamp(s - v, 0, 1) with the scalar v found by bisection);
- the final mask is the top-d' dims of s; w and b are then refit on those dims alone (the same loss with the
  hard mask, ``refit_epochs``), so the edit direction is the best linear classifier on the selected dims.

Edit (in standardised space, mapped back): z' = z + lambda * std * v, v = (mask * w) / ||mask * w||, so the
classifier's logit moves by lambda * ||mask * w||: linearly, monotonically in lambda, and only the d' masked
dims change. lambda is in units of the standardised code (one lambda = one standard deviation along v).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..inference import decode, invert
from .grids import save_image_grid

DEFAULT_STRENGTHS = (-3.0, -1.5, 0.0, 1.5, 3.0)


@dataclass
class ProbMaskResult:
    """A sparse linear classifier of one binary attribute on standardised z, and its edit direction."""

    mask_dims: np.ndarray  # (d',) int, the selected dims, sorted by decreasing keep probability
    weights: np.ndarray  # (d,) float, classifier weights on standardised z, zero outside the mask
    bias: float
    mean: np.ndarray  # (d,) per-dim mean of z (training split)
    std: np.ndarray  # (d,) per-dim standard deviation of z (training split)
    scores: np.ndarray  # (d,) learned keep probabilities s (sum d')
    accuracy: float  # held-out accuracy of the masked classifier (training accuracy if no hold-out)
    balanced_accuracy: float  # held-out mean of the per-class recalls
    train_accuracy: float
    target: str  # what the positive class is, e.g. "label == 1" or "class 2 vs rest"

    @property
    def d_prime(self) -> int:
        return len(self.mask_dims)

    def direction(self) -> np.ndarray:
        """v = (mask * w) / ||mask * w||: the unit edit direction in standardised space, (d,)."""
        norm = np.linalg.norm(self.weights)
        if norm == 0:
            raise ValueError("the classifier has zero weights on its mask; there is no edit direction")
        return self.weights / norm

    def logits(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """The classifier's logit for codes z (N, d): w . (z - mean) / std + b."""
        z = _numpy(z)
        return ((z - self.mean) / self.std) @ self.weights + self.bias

    def to_dict(self) -> dict:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, np.ndarray):
                out[k] = v.tolist()
        out["d_prime"] = self.d_prime
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ProbMaskResult:
        """The inverse of ``to_dict`` (keys it does not know, such as ``d_prime``, are ignored)."""
        arrays = {"mask_dims": np.int64, "weights": np.float64, "mean": np.float64, "std": np.float64,
                  "scores": np.float64}
        try:
            fields = {k: np.asarray(data[k], dtype=arrays[k]) for k in arrays}
            fields.update(bias=float(data["bias"]), accuracy=float(data["accuracy"]),
                          balanced_accuracy=float(data["balanced_accuracy"]),
                          train_accuracy=float(data["train_accuracy"]), target=str(data["target"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a saved ProbMask result: {err!r}") from None
        d = len(fields["weights"])
        if any(len(fields[k]) != d for k in ("mean", "std", "scores")) or fields["mask_dims"].max(initial=0) >= d:
            raise ValueError("not a saved ProbMask result: its arrays disagree in length")
        return cls(**fields)


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def binary_target(labels: np.ndarray, target_class: int | None = None) -> tuple[np.ndarray, str]:
    """(y (N,) float 0/1, description): labels 0/1 (or -1/1) as they are, or ``labels == target_class``."""
    labels = np.asarray(labels).reshape(-1)
    if target_class is not None:
        if not np.any(labels == target_class):
            raise ValueError(
                f"target_class {target_class} never occurs in the labels (values {np.unique(labels)[:10]})"
            )
        return (labels == target_class).astype(np.float64), f"class {target_class} vs rest"
    values = set(np.unique(labels).tolist())
    if values <= {0, 1}:
        return labels.astype(np.float64), "label == 1"
    if values <= {-1, 1}:
        return (labels > 0).astype(np.float64), "label == 1"
    raise ValueError(f"the attribute has more than two values {sorted(values)[:10]}: give the class to move towards "
                     "(target_class=, or --target-class on the command line)")


def project_capped_simplex(s: torch.Tensor, k: float, iters: int = 50) -> torch.Tensor:
    """The Euclidean projection of s onto {0 <= s <= 1, sum(s) = k}: clamp(s - v, 0, 1), v by bisection."""
    lo, hi = s.min() - 1.0, s.max()
    for _ in range(iters):
        v = (lo + hi) / 2
        if (s - v).clamp(0, 1).sum() > k:
            lo = v
        else:
            hi = v
    return (s - (lo + hi) / 2).clamp(0, 1)


def fit_probmask(
    z: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    d_prime: int = 16,
    target_class: int | None = None,
    epochs: int = 30,
    refit_epochs: int = 10,
    lr: float = 1e-2,
    lr_scores: float = 2e-2,
    batch_size: int = 256,
    tau_start: float = 1.0,
    tau_end: float = 0.05,
    valid_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = False,
) -> ProbMaskResult:
    """Learn a d'-dim ProbMask linear classifier of a binary target on standardised z (module docstring).

    z: (N, d) codes; labels: (N,) 0/1 (or -1/1), or class codes with ``target_class`` (one class vs rest).
    A seeded ``valid_fraction`` of the rows is held out for the reported accuracy (0: training accuracy).
    The loss is class-balanced BCE (positives weighted by n_neg / n_pos).
    """
    x_all = _numpy(z)
    if x_all.ndim != 2:
        raise ValueError(f"z must be (N, d), got shape {x_all.shape}")
    n, d = x_all.shape
    if not 1 <= d_prime <= d:
        raise ValueError(f"d_prime must be in [1, d={d}], got {d_prime}")
    y_all, target = binary_target(labels, target_class)
    if len(y_all) != n:
        raise ValueError(f"{len(y_all)} labels for {n} codes")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_valid = int(round(n * valid_fraction)) if valid_fraction > 0 else 0
    valid_idx, train_idx = perm[:n_valid], perm[n_valid:]
    x_tr, y_tr = x_all[train_idx], y_all[train_idx]
    if y_tr.min() == y_tr.max():
        raise ValueError(f"the training labels hold one class only ({target}); ProbMask needs both")

    # 1. standardise with the training split's statistics
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    u_tr = torch.as_tensor((x_tr - mean) / std, dtype=torch.float32)
    yt = torch.as_tensor(y_tr, dtype=torch.float32)
    pos_weight = (len(yt) - yt.sum()) / yt.sum()
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    # 2. ProbMask training: relaxed Bernoulli masks, s projected onto the capped simplex after each step
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(d, generator=gen) * 0.01)
    b = torch.nn.Parameter(torch.zeros(()))
    s = torch.nn.Parameter(torch.full((d,), d_prime / d))
    opt = torch.optim.Adam([{"params": [w, b], "lr": lr}, {"params": [s], "lr": lr_scores}])
    steps_per_epoch = math.ceil(len(u_tr) / batch_size)
    total = max(epochs * steps_per_epoch - 1, 1)
    step = 0
    for _ in tqdm(range(epochs), desc="probmask", disable=not progress, leave=False):
        for idx in torch.randperm(len(u_tr), generator=gen).split(batch_size):
            tau = tau_start * (tau_end / tau_start) ** (step / total)
            p = s.clamp(1e-6, 1 - 1e-6)
            noise = torch.rand(len(idx), d, generator=gen).clamp(1e-6, 1 - 1e-6)
            m = torch.sigmoid((torch.log(p / (1 - p)) + torch.log(noise / (1 - noise))) / tau)  # (B, d)
            loss = loss_fn((u_tr[idx] * m * w).sum(1) + b, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                s.copy_(project_capped_simplex(s, d_prime))
            step += 1

    # 3. the final mask (top-d' of s), then refit w, b on the masked dims alone
    scores = s.detach().numpy().astype(np.float64)
    mask_dims = np.argsort(-scores, kind="stable")[:d_prime]
    hard = torch.zeros(d)
    hard[torch.as_tensor(mask_dims)] = 1.0
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(refit_epochs):
        for idx in torch.randperm(len(u_tr), generator=gen).split(batch_size):
            loss = loss_fn((u_tr[idx] * hard * w).sum(1) + b, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    weights = (w.detach() * hard).numpy().astype(np.float64)

    result = ProbMaskResult(mask_dims, weights, float(b.detach()), mean, std, scores, 0.0, 0.0, 0.0, target)
    result.train_accuracy = _accuracy(result, x_tr, y_tr)[0]
    x_ev, y_ev = (x_all[valid_idx], y_all[valid_idx]) if n_valid else (x_tr, y_tr)
    result.accuracy, result.balanced_accuracy = _accuracy(result, x_ev, y_ev)
    return result


def _accuracy(result: ProbMaskResult, z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    pred = result.logits(z) > 0
    truth = y > 0.5
    recalls = [float((pred[truth == c] == c).mean()) for c in (False, True) if (truth == c).any()]
    return float((pred == truth).mean()), float(np.mean(recalls))


def edit_codes(
    z: np.ndarray | torch.Tensor, result: ProbMaskResult, strengths: Sequence[float] = DEFAULT_STRENGTHS
) -> np.ndarray | torch.Tensor:
    """(n_strengths, B, d): z' = z + lambda * std * v for each strength lambda (same type as z)."""
    step = result.std * result.direction()  # (d,), zero outside the mask
    if isinstance(z, torch.Tensor):
        step_t = torch.as_tensor(step, dtype=z.dtype, device=z.device)
        return torch.stack([z + float(lam) * step_t for lam in strengths])
    z = np.asarray(z)
    return np.stack([z + float(lam) * step for lam in strengths]).astype(z.dtype, copy=False)


@torch.no_grad()
def manipulation_grid(
    model,
    images: torch.Tensor,
    result: ProbMaskResult,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    num_steps: int = 100,
    progress: bool = False,
    clip_x0: bool = False,
) -> dict:
    """Edit ``images`` (B, C, R, R) along the ProbMask direction and decode from each image's own x_T.

    Each strength is decoded as one batch of the B images (lambda 0 is the plain DDIM reconstruction);
    ``clip_x0`` clips the predicted x_0 to [-1, 1] at every decoding step (never in the inversion). Returns
    ``images`` (B, n, C, R, R), ``labels`` (n), ``strengths``, ``logits`` (n, B) of the edited codes and
    ``z`` (B, d).
    """
    inv = invert(model, images, num_steps, progress)
    codes = edit_codes(inv.z, result, strengths)  # (n, B, d)
    columns = [
        decode(model, c, inv.x_T, num_steps, clip_x0=clip_x0)
        for c in tqdm(codes, desc="strengths", disable=not progress, leave=False)
    ]
    return {
        "images": torch.stack(columns, dim=1),
        "labels": [f"lambda={lam:g}" for lam in strengths],
        "strengths": [float(lam) for lam in strengths],
        "logits": np.stack([result.logits(c) for c in codes]),
        "z": inv.z,
    }


def manipulation_figure(
    model,
    images: torch.Tensor,
    result: ProbMaskResult,
    path: str | Path,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    num_steps: int = 100,
    attribute: str | None = None,
    cell: int = 64,
    progress: bool = False,
    clip_x0: bool = False,
) -> Path:
    """One row per image: the real image, then its edits at each strength. Saves a PNG at ``path``."""
    out = manipulation_grid(model, images, result, strengths, num_steps, progress, clip_x0)
    cells = []
    for i in range(len(images)):
        cells += [images[i].float().cpu(), *out["images"][i].float().cpu()]
    prob = 1 / (1 + np.exp(-result.logits(out["z"])))
    row_labels = [f"image {i}: p={prob[i]:.2f}" for i in range(len(images))]
    what = attribute or result.target
    title = (
        f"ProbMask edit of {what} (d'={result.d_prime}, held-out acc {result.accuracy:.2f}), "
        f"{num_steps} DDIM steps" + (", x0 clipped" if clip_x0 else "")
    )
    return save_image_grid(
        path,
        torch.stack(cells),
        len(strengths) + 1,
        row_labels=row_labels,
        col_labels=["real", *out["labels"]],
        cell=cell,
        title=title,
    )

"""Counterfactual fidelity on data with known factors: which factors does each group of z dims carry?

1. ``train_factor_classifier``: a small CNN with one softmax head per (categorical) factor, trained on the
   real training images and scored on the test split. It is the judge of what a decoded image shows.
2. ``counterfactual_fidelity``: random (source, target) pairs. For each dim group (``dim_groups``: a partition
   stage, a group of chunks when the partition has one stage, or an equal slice of dims for PDAE) the target's
   code takes the source's values on that group's dims, z = where(group, z_source, z_target); the image is
   decoded by DDIM from the target's own x_T (kept, not slerped) and classified. For every group g and
   factor f, over the pairs whose source and target differ in f:

   - ``takes_source[g, f]``  = fraction of those pairs where the prediction of f equals the source's value
     (the group carries f: swapping it transfers f);
   - ``keeps_target[g, f]``  = fraction where the prediction equals the target's value (f is untouched).

   The two sum to at most 1 (the rest is a third value). A group that carries exactly the factors it should
   shows takes_source ~ ceiling on them and keeps_target ~ ceiling on the others. NaN where no pair differs.
   Optionally a last row swaps all dims (the most that z alone transfers with the target's x_T kept).
3. References: ``reconstruction_accuracy[f]``, the classifier's accuracy on plain DDIM reconstructions of the
   targets (no swap) against their true factors, is the ceiling for both matrices; ``real_accuracy[f]`` is
   its accuracy on the real target images.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..data import open_dataset
from ..folders.results import FidelityResult
from ..inference import DimGroup, Inversion, counterfactuals, decode, dim_groups, invert
from .counterfactual import random_pairs


# ----------------------------------------------------------------------------------------------------
# The factor classifier
# ----------------------------------------------------------------------------------------------------
class FactorClassifier(nn.Module):
    """A small CNN: three 3x3 convs (the first at full resolution, so 1-2 px textures survive; then two
    stride-2), BatchNorm + ReLU, adaptive average pooling to 4x4 (which keeps where things are), an MLP, and
    one softmax head per factor. Input (B, 3, R, R) in [-1, 1] (clamped); ~0.3M parameters at width 32."""

    def __init__(self, names: Sequence[str], num_classes: Sequence[int], resolution: int, width: int = 32):
        super().__init__()
        if len(names) != len(num_classes) or not names:
            raise ValueError(
                f"need one class count per factor, got names {list(names)}, classes {list(num_classes)}"
            )
        self.names = [str(n) for n in names]
        self.num_classes = [int(c) for c in num_classes]
        self.resolution = int(resolution)
        self.width = int(width)
        w = self.width

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, w, 1),
            *block(w, 2 * w, 2),
            *block(2 * w, 2 * w, 2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * w * 16, 128), nn.ReLU(), nn.Linear(128, sum(self.num_classes))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits per factor: a list of (B, num_classes[f])."""
        return list(self.head(self.features(x.clamp(-1, 1))).split(self.num_classes, dim=1))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
        """Predicted class codes (B, F) int64, in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        for s in range(0, len(x), batch_size):
            logits = self(x[s : s + batch_size].to(device))
            out.append(torch.stack([h.argmax(1) for h in logits], dim=1).cpu())
        self.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.names)), dtype=np.int64)

    def config(self) -> dict:
        return {
            "names": self.names,
            "num_classes": self.num_classes,
            "resolution": self.resolution,
            "width": self.width,
        }


def save_factor_classifier(classifier: FactorClassifier, path: str | Path, extra: dict | None = None) -> Path:
    """Weights in safetensors; constructor arguments and ``extra`` (e.g. test accuracy) in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    meta = {
        "format": "diti-factor-classifier",
        "config": json.dumps(classifier.config()),
        "extra": json.dumps(extra or {}),
    }
    save_file(state, str(path), metadata=meta)
    return path


def load_factor_classifier(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[FactorClassifier, dict]:
    """(classifier in eval mode, the ``extra`` dict saved with it)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"factor classifier not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "diti-factor-classifier":
        raise ValueError(f"{path} is not a diti factor classifier (metadata format {meta.get('format')!r})")
    classifier = FactorClassifier(**json.loads(meta["config"]))
    classifier.load_state_dict(load_file(str(path)))
    return classifier.to(device).eval(), json.loads(meta.get("extra", "{}"))


def _factor_columns(dataset, names: Sequence[str] | None = None) -> tuple[list[str], list[int], list[int]]:
    """(names, column indices, class counts) of the categorical factors of ``dataset`` (or of ``names``)."""
    attrs = dataset.attributes
    if attrs is None:
        raise ValueError(f"{dataset!r} has no attribute table; fidelity needs data with known factors")
    if names is None:
        cols = [i for i in range(len(attrs.names)) if attrs.is_categorical(i)]
        if not cols:
            raise ValueError(f"{dataset!r} has no categorical attribute (names {attrs.names})")
    else:
        missing = [n for n in names if n not in attrs.names]
        if missing:
            raise ValueError(f"factors {missing} are not attributes of the data set (it has {attrs.names})")
        cols = [attrs.names.index(n) for n in names]
        continuous = [attrs.names[i] for i in cols if not attrs.is_categorical(i)]
        if continuous:
            raise ValueError(f"factors {continuous} are continuous; the factor classifier needs class codes")
    return [attrs.names[i] for i in cols], cols, [attrs.num_classes(i) for i in cols]


@torch.no_grad()
def classifier_accuracy(classifier: FactorClassifier, dataset, batch_size: int = 512) -> dict[str, float]:
    """Accuracy per factor of ``classifier`` on every image of ``dataset``."""
    names, cols, _ = _factor_columns(dataset, classifier.names)
    labels = dataset.attributes.values[:, cols]
    preds = np.concatenate(
        [
            classifier.predict(dataset.__getitems__(list(range(s, min(s + batch_size, len(dataset))))))
            for s in range(0, len(dataset), batch_size)
        ]
    )
    return {n: float((preds[:, j] == labels[:, j]).mean()) for j, n in enumerate(names)}


def train_factor_classifier(
    dataset,
    epochs: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    test=None,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 32,
    factors: Sequence[str] | None = None,
    progress: bool = False,
) -> tuple[FactorClassifier, dict]:
    """Train a FactorClassifier on the real images of ``dataset`` (the train split) and score it on ``test``.

    ``test`` None opens the "test" split of the same ``diti-array`` folder. ``factors`` None uses every
    categorical attribute. No augmentation (a flip would change position factors). Adam, cross-entropy summed
    over the heads, lr decayed by cosine to 0. Returns (classifier in eval mode, info) with info =
    ``{"test_accuracy": {factor: acc}, "mean_test_accuracy", "train_seconds", "epochs", "num_train"}``.
    Budget (measured on one CPU thread, 2-core machine under load): shapes at 32 px, 10000 images, 2 epochs:
    0.999 mean test accuracy in ~30 s (3 epochs ~45 s); at 16 px, 2000 images, 4 epochs: ~0.96 in ~5 s (shape
    and scale are the hardest factors at 16 px; 6 epochs: 0.99).
    """
    names, cols, classes = _factor_columns(dataset, factors)
    if test is None:
        split = getattr(dataset, "split", None)
        if split is None or split == "test":
            raise ValueError(f"pass test= explicitly: {dataset!r} is not a diti-array training split")
        test = open_dataset(dataset.root, "test", dataset.resolution)
    labels = torch.as_tensor(dataset.attributes.values[:, cols], dtype=torch.long)

    torch.manual_seed(seed)
    classifier = FactorClassifier(names, classes, dataset.resolution, width).to(device)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    total = max(epochs * math.ceil(len(dataset) / batch_size), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0)))
    )
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    classifier.train()
    bar = tqdm(total=total, desc="factor classifier", disable=not progress, leave=False)
    for _ in range(epochs):
        for idx in torch.randperm(len(dataset), generator=gen).split(batch_size):
            x = dataset.__getitems__(idx.tolist()).to(device)
            y = labels[idx].to(device)
            loss = sum(nn.functional.cross_entropy(h, y[:, j]) for j, h in enumerate(classifier(x)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    classifier.eval()
    acc = classifier_accuracy(classifier, test)
    info = {
        "test_accuracy": acc,
        "mean_test_accuracy": float(np.mean(list(acc.values()))),
        "train_seconds": seconds,
        "epochs": epochs,
        "num_train": len(dataset),
    }
    return classifier, info


# ----------------------------------------------------------------------------------------------------
# Counterfactual fidelity
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def counterfactual_fidelity(
    model,
    classifier: FactorClassifier,
    dataset,
    num_pairs: int = 256,
    num_steps: int = 50,
    seed: int = 0,
    max_groups: int = 4,
    groups: Sequence[DimGroup] | None = None,
    include_all: bool = True,
    batch_size: int | None = None,
    progress: bool = True,
    clip_x0: bool = False,
) -> FidelityResult:
    """Swap each dim group from source into target, decode from the target's x_T, classify (module docstring).

    The classifier's factors must be categorical attributes of ``dataset`` (normally its test split). All
    pairs of a group are decoded as one batch (or in batches of ``batch_size``) on the model's device.
    ``clip_x0`` clips the predicted x_0 to [-1, 1] at every decoding step (never in the inversion).
    """
    device = next(model.parameters()).device
    classifier = classifier.to(device).eval()
    names, cols, _ = _factor_columns(dataset, classifier.names)
    part = model.partition
    groups = list(groups) if groups is not None else dim_groups(part, max_groups)
    if include_all:
        groups.append(
            DimGroup(f"all dims: 0-{part.latent_dim - 1}", (0, part.latent_dim), (0, part.timesteps - 1))
        )

    src_idx, tgt_idx = random_pairs(len(dataset), num_pairs, seed)
    src_lab = dataset.attributes.values[src_idx][:, cols]
    tgt_lab = dataset.attributes.values[tgt_idx][:, cols]
    differ = src_lab != tgt_lab  # (P, F)
    x_src = dataset.__getitems__(src_idx.tolist()).to(device)
    x_tgt = dataset.__getitems__(tgt_idx.tolist()).to(device)

    # 1. codes of the sources, codes and inversions of the targets
    step = batch_size or max(num_pairs, 1)
    z_src = torch.cat([model.encode(x_src[s : s + step]) for s in range(0, num_pairs, step)])
    target = Inversion.cat([invert(model, x_tgt[s : s + step], num_steps) for s in range(0, num_pairs, step)])

    # 2. the ceiling: plain reconstructions of the targets
    recon = decode(model, target.z, target.x_T, num_steps, batch_size, clip_x0=clip_x0)
    recon_acc = (classifier.predict(recon) == tgt_lab).mean(0)
    real_acc = (classifier.predict(x_tgt) == tgt_lab).mean(0)

    # 3. one swap per group: the target with the group's dims of the source, decoded from the target's x_T
    swaps = counterfactuals(target, z_src, [g.mask(part.latent_dim) for g in groups], [1.0], x_T="keep")
    takes = np.full((len(groups), len(names)), np.nan)
    keeps = np.full((len(groups), len(names)), np.nan)
    for g in tqdm(range(len(groups)), desc="fidelity groups", disable=not progress):
        pred = classifier.predict(swaps.decode_cell(model, g, 0, num_steps, batch_size, clip_x0=clip_x0))
        for f in range(len(names)):
            rows = differ[:, f]
            if rows.any():
                takes[g, f] = float((pred[rows, f] == src_lab[rows, f]).mean())
                keeps[g, f] = float((pred[rows, f] == tgt_lab[rows, f]).mean())

    return FidelityResult(
        factor_names=names,
        group_labels=[g.label for g in groups],
        group_dim_ranges=[g.dim_range for g in groups],
        group_t_ranges=[g.t_range for g in groups],
        takes_source=takes,
        keeps_target=keeps,
        num_differ=differ.sum(0),
        reconstruction_accuracy=recon_acc.astype(np.float64),
        real_accuracy=real_acc.astype(np.float64),
        num_pairs=int(num_pairs),
        num_steps=int(num_steps),
        seed=int(seed),
        clip_x0=bool(clip_x0),
    )


def hit_and_leakage(result: FidelityResult, crossings: dict[str, float],
                    t_ranges: Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """Per dim group: does swapping it carry the factors the DM loses in its t-range, and only those?

    A factor belongs to a group when its attribute-loss crossing t (``crossings``: factor -> t) lies in the
    group's t-range (inclusive). ``hit`` is the mean of ``takes_source`` over the group's factors (None when
    it has none); ``leakage`` the mean of 1 - ``keeps_target`` over the other factors (how often a factor the
    group should not touch changed; reconstruction errors count too, so compare with 1 - the reconstruction
    accuracy). ``t_ranges``: the groups' t-ranges when the result has none (PDAE's dim groups: pass the
    t-ranges DiTi's partition gives the same dims). The group of all dims, when present, is left out.
    """
    d = max(hi for _, hi in result.group_dim_ranges)
    ranges = list(t_ranges) if t_ranges is not None else list(result.group_t_ranges)
    if len(ranges) < len(result.group_labels):  # t_ranges given for the dim groups only
        ranges += [None] * (len(result.group_labels) - len(ranges))
    names = list(result.factor_names)
    missing = [f for f in names if f not in crossings]
    if missing:
        raise ValueError(f"no attribute-loss crossing for the factors {missing}")
    rows = []
    for g, label in enumerate(result.group_labels):
        if tuple(result.group_dim_ranges[g]) == (0, d) and len(result.group_labels) > 1:
            continue  # every dim: carries everything by construction
        if ranges[g] is None:
            raise ValueError(f"group {label!r} has no t-range: pass t_ranges")
        t0, t1 = ranges[g]
        mine = [f for f, name in enumerate(names) if t0 <= crossings[name] <= t1]
        others = [f for f in range(len(names)) if f not in mine]
        hit = np.nanmean(result.takes_source[g, mine]) if mine else None
        leak = np.nanmean(1 - result.keeps_target[g, others]) if others else None
        rows.append({"group": label, "t_range": [int(t0), int(t1)], "factors": [names[f] for f in mine],
                     "hit": None if hit is None or np.isnan(hit) else float(hit),
                     "leakage": None if leak is None or np.isnan(leak) else float(leak)})
    return rows


def plot_fidelity(result: FidelityResult, path: str | Path, title: str | None = None) -> Path:
    """Two heatmaps (takes source, keeps target): factors on x, dim groups (with t-ranges) on y, values
    annotated, and a last row with the reconstruction ceiling. Saves to ``path`` (format by extension)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [*result.group_labels, "reconstruction (ceiling)"]
    n_rows, n_cols = len(rows), len(result.factor_names)
    fig = Figure(figsize=(2.0 + 1.6 * n_cols, 1.2 + 0.45 * n_rows), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    panels = (
        ("takes source: P(pred = source | differ)", result.takes_source),
        ("keeps target: P(pred = target | differ)", result.keeps_target),
    )
    for ax, (name, matrix) in zip(axes, panels, strict=True):
        values = np.vstack([matrix, result.reconstruction_accuracy[None]])
        image = ax.imshow(np.ma.masked_invalid(values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for r in range(n_rows):
            for c in range(n_cols):
                v = values[r, c]
                text = "n/a" if np.isnan(v) else f"{v:.2f}"
                ax.text(
                    c,
                    r,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if not np.isnan(v) and v > 0.6 else "white",
                )
        ax.axhline(n_rows - 1.5, color="white", linewidth=2)
        ax.set_xticks(range(n_cols), result.factor_names, rotation=40, ha="right")
        ax.set_yticks(range(n_rows), rows)
        ax.set_title(name, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.suptitle(
        title or f"counterfactual fidelity: {result.num_pairs} pairs, {result.num_steps} DDIM steps",
        fontsize=11,
    )
    fig.savefig(path, dpi=120)
    return path

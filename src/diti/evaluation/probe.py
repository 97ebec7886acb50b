"""Linear probes on frozen features (docs/evaluation.md, "Linear probes").

One Linear(d, outputs) trained with Adam (lr 1e-3) on the raw features; the epoch is chosen on a validation
split (never on test) and the test metrics of that epoch are reported. Two budgets:

- ``epochs=15``: the official CelebA / LFW protocol (``diti probe --preset celeba|lfw``);
- ``steps`` (the default, 5,000 optimizer steps): the number of epochs follows from the data size, so that a
  probe on a few thousand rows converges instead of stopping while its validation curve still rises; training
  stops early once the validation metric has not improved for a fifth of the planned validations.

Tasks:
- ``multiclass``: one softmax head per attribute (integer class codes), cross-entropy; accuracy and macro
  one-vs-rest AP per attribute.
- ``binary``: one logit per attribute (labels 0/1, or -1/1), BCE; AP (sklearn average_precision_score) and
  accuracy per attribute. CelebA's 40 attributes are this task.
- ``regression``: one output per attribute, MSE; Pearson r and MSE per attribute (LFW's 73 attributes).
Means are unweighted over attributes.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from tqdm.auto import tqdm

from ..folders.results import SELECTION_METRIC, ProbeResult

TASKS = ("multiclass", "binary", "regression")
DEFAULT_STEPS = 5000  # matches sklearn's LogisticRegression within 0.01 on 3,000-row 10-class problems (tests)
EVAL_STEPS = 50  # with a step budget, the validation split is scored about this often


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, valid indices): a seeded random hold-out of ``fraction`` of n rows."""
    if not 0 < fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(n * fraction)))
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def _check(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{what} features must be (N, d), got shape {x.shape}")
    if y.ndim != 2 or len(y) != len(x):
        raise ValueError(f"{what} labels must be (N, A) with N={len(x)}, got shape {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} features contain NaN or inf")


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    task: str,
    names: list[str] | None = None,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    valid_fraction: float = 0.1,
    epochs: int | None = None,
    steps: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    train_flipped: np.ndarray | None = None,
) -> ProbeResult:
    """Train a linear probe on (features (N, d), labels (N, A)) and report test metrics at the best valid epoch.

    Budget: ``epochs`` runs exactly that many epochs (the official protocol: 15); otherwise ``steps``
    optimizer steps (default ``DEFAULT_STEPS``) set the epoch count, ceil(steps / batches per epoch); the
    validation split is then scored every ceil(EVAL_STEPS / batches per epoch) epochs, and training stops
    once it has not improved for max(5, a fifth of the planned validations). Give one of the two. Without ``valid``, a seeded ``valid_fraction`` of ``train`` is held out for the epoch
    selection.
    ``train_flipped``: features of the horizontally flipped training images; each epoch every sample uses
    them with probability 1/2 (the official CelebA protocol's flip augmentation).
    """
    if task not in TASKS:
        raise ValueError(f"unknown probe task {task!r}; expected one of {TASKS}")
    if epochs is not None and steps is not None:
        raise ValueError(f"give epochs or steps, not both (got epochs={epochs}, steps={steps})")
    for what, value in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{what} must be >= 1, got {value}")
    (x_tr, y_tr), (x_te, y_te) = train, test
    _check(x_tr, y_tr, "train")
    _check(x_te, y_te, "test")
    if train_flipped is not None and train_flipped.shape != x_tr.shape:
        raise ValueError(f"train_flipped has shape {train_flipped.shape}, train features {x_tr.shape}")
    if valid is None:
        tr_idx, va_idx = split_validation(len(x_tr), valid_fraction, seed)
        (x_tr, y_tr), valid = (x_tr[tr_idx], y_tr[tr_idx]), (x_tr[va_idx], y_tr[va_idx])
        train_flipped = None if train_flipped is None else train_flipped[tr_idx]
    _check(*valid, "valid")
    num_attrs = y_tr.shape[1]
    names = list(names) if names is not None else [f"attr{i}" for i in range(num_attrs)]
    if len(names) != num_attrs:
        raise ValueError(f"{len(names)} names for {num_attrs} attributes")
    if task == "binary":
        y_tr, valid, y_te = _to01(y_tr), (valid[0], _to01(valid[1])), _to01(y_te)
    classes = None
    if task == "multiclass":
        classes = [int(max(y_tr[:, i].max(), valid[1][:, i].max(), y_te[:, i].max())) + 1 for i in range(num_attrs)]

    torch.manual_seed(seed)
    out_dim = sum(classes) if classes else num_attrs
    probe = nn.Linear(x_tr.shape[1], out_dim).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    xt = torch.as_tensor(x_tr, dtype=torch.float32, device=device)
    xf = None if train_flipped is None else torch.as_tensor(train_flipped, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y_tr, dtype=torch.long if classes else torch.float32, device=device)
    gen = torch.Generator().manual_seed(seed)
    batches = -(-len(xt) // batch_size)  # per epoch
    if epochs is not None:
        num_epochs, every, patience = epochs, 1, None
    else:
        num_epochs = -(-(steps or DEFAULT_STEPS) // batches)
        # validate about every EVAL_STEPS steps (every epoch once an epoch is longer): tiny data sets would
        # otherwise spend most of the budget on validation
        every = max(1, -(-EVAL_STEPS // batches))
        patience = max(5, num_epochs // every // 5)  # in validations
    best, best_epoch, best_index, best_state, curve = -np.inf, 0, 0, None, []
    for epoch in tqdm(range(1, num_epochs + 1), desc="probe", disable=not progress, leave=False):
        probe.train()
        for idx in torch.randperm(len(xt), generator=gen).split(batch_size):
            xb = xt[idx]
            if xf is not None:
                flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
                xb = torch.where(flip[:, None], xf[idx], xb)
            loss = _loss(probe(xb), yt[idx], task, classes)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch % every and epoch != num_epochs:
            continue
        score = _evaluate(probe, valid, task, classes, names, device)[1][SELECTION_METRIC[task]]
        curve.append(score)
        if score > best:
            best, best_epoch, best_index = score, epoch, len(curve)
            best_state = {k: v.clone() for k, v in probe.state_dict().items()}
        if patience is not None and len(curve) - best_index >= patience:
            break
    probe.load_state_dict(best_state)
    per_attr, mean = _evaluate(probe, (x_te, y_te), task, classes, names, device)
    budget = {"epochs": epochs, "steps": None if epochs is not None else (steps or DEFAULT_STEPS),
              "epochs_run": epoch, "batches_per_epoch": batches, "validate_every_epochs": every,
              "patience_validations": patience, "stopped_early": epoch < num_epochs}
    return ProbeResult(task, names, per_attr, mean, best_epoch, curve, budget)


def _to01(y: np.ndarray) -> np.ndarray:
    values = set(np.unique(y).tolist())
    if values <= {0, 1}:
        return y.astype(np.float32)
    if values <= {-1, 1}:
        return (y > 0).astype(np.float32)
    raise ValueError(f"binary probe labels must be 0/1 or -1/1, got values {sorted(values)[:6]}")


def _split_heads(logits: torch.Tensor, classes: list[int]) -> list[torch.Tensor]:
    return list(logits.split(classes, dim=1))


def _loss(out: torch.Tensor, y: torch.Tensor, task: str, classes: list[int] | None) -> torch.Tensor:
    if task == "multiclass":
        return sum(nn.functional.cross_entropy(h, y[:, i]) for i, h in enumerate(_split_heads(out, classes)))
    if task == "binary":
        return nn.functional.binary_cross_entropy_with_logits(out, y)
    return nn.functional.mse_loss(out, y)


@torch.no_grad()
def _evaluate(probe, data, task, classes, names, device) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    probe.eval()
    x, y = data
    out = probe(torch.as_tensor(x, dtype=torch.float32, device=device)).cpu()
    per: dict[str, dict[str, float]] = {}
    if task == "multiclass":
        for i, head in enumerate(_split_heads(out, classes)):
            per[names[i]] = {"ap": _macro_ap(torch.softmax(head, 1).numpy(), y[:, i]),
                             "accuracy": float((head.argmax(1).numpy() == y[:, i]).mean())}
    elif task == "binary":
        prob = torch.sigmoid(out).numpy()
        for i, name in enumerate(names):
            # AP is undefined for an attribute with no positive example in this split
            ap = average_precision_score(y[:, i], prob[:, i]) if y[:, i].any() else float("nan")
            per[name] = {"ap": float(ap), "accuracy": float(((prob[:, i] > 0.5) == (y[:, i] > 0.5)).mean())}
    else:
        pred = out.numpy()
        for i, name in enumerate(names):
            per[name] = {"pearson_r": _pearson(pred[:, i], y[:, i]), "mse": float(((pred[:, i] - y[:, i]) ** 2).mean())}
    metrics = next(iter(per.values())).keys()
    mean = {m: float(np.nanmean([per[n][m] for n in names])) for m in metrics}
    return per, mean


def _macro_ap(prob: np.ndarray, y: np.ndarray) -> float:
    """One-vs-rest AP per class, averaged over the classes present in ``y``."""
    aps = [average_precision_score(y == c, prob[:, c]) for c in range(prob.shape[1]) if (y == c).any()]
    return float(np.mean(aps)) if aps else float("nan")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0

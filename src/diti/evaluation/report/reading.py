"""Reading the results for the page: headline metrics, budgets and protocols in words, chunk matrices."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ...folders.results import Alignment, DisentangleResult, ProbeResult
from .html import short_label

OLD_PROTOCOL = "not recorded (before 2026-12-01: MIG/FactorVAE on test codes, 800/400 votes, GBT on 2,000 rows)"
OLD_BUDGET = "not recorded (before 2026-12-01: 15 epochs)"
METRIC_LABELS = {"accuracy": "accuracy", "ap": "AP", "pearson_r": "Pearson r", "mse": "MSE"}


def budget_short(probe: ProbeResult) -> str:
    b = probe.budget
    if not b:
        return "not recorded"
    if b.get("epochs") is not None:
        return f"{b['epochs']} epochs"
    return f"{b.get('steps', 0):,} steps"


def budget_text(probe: ProbeResult) -> str:
    """The probe's training budget in words (the same for runs probed alike)."""
    b = probe.budget
    if not b:
        return OLD_BUDGET
    if b.get("epochs") is not None:
        return f"{b['epochs']} epochs (fixed, the official protocol)"
    batches = b.get("batches_per_epoch", "?")
    return (f"{b.get('steps', 0):,} optimizer steps ({batches} batch{'' if batches == 1 else 'es'} per epoch), "
            f"validated every {b.get('validate_every_epochs', '?')} epoch(s), early stopping after "
            f"{b.get('patience_validations', '?')} validations without improvement")


def epoch_text(probe: ProbeResult) -> str:
    """Which epoch was reported, of how many run."""
    b = probe.budget
    run = f" of {b['epochs_run']} run" if "epochs_run" in b else ""
    epoch = "?" if probe.best_epoch is None else probe.best_epoch
    return f"epoch {epoch}{run}" + (" (stopped early)" if b.get("stopped_early") else "")


def protocol_name(dis: DisentangleResult) -> str:
    return dis.protocol.get("name", "?") if dis.protocol is not None else "not recorded"


def protocol_text(dis: DisentangleResult) -> str:
    """The sample counts behind the numbers, in words."""
    p = dis.protocol
    if p is None:
        return OLD_PROTOCOL

    def n(key: str) -> str:
        v = p.get(key)
        return f"{v:,}" if isinstance(v, int) else "all" if v is None else str(v)

    cap = "" if p.get("dci_max_train") is None else f" (at most {n('dci_max_train')})"
    return (f"{p.get('name', '?')}: DCI's GBT fitted on {n('dci_train_rows')} train codes{cap}, scored on "
            f"{n('dci_test_rows')} test codes; MIG on {n('mig_rows')} {p.get('mig_split', '?')} codes; FactorVAE "
            f"{n('factor_vae_train_votes')} / {n('factor_vae_eval_votes')} votes of {n('factor_vae_batch')} "
            f"{p.get('factor_vae_split', '?')} codes, variance from {n('factor_vae_variance_rows')} rows; "
            f"{p.get('gbt_seeding', 'GBT seeding not recorded')}")


def factor_values(names: Sequence[str], per: Sequence, factors: Sequence[str]) -> list:
    """``per`` (aligned with ``names``) re-indexed by ``factors`` (None where a factor is absent)."""
    lookup = dict(zip(names, per, strict=False))
    return [lookup.get(f) for f in factors]


def chunk_matrix(dis: DisentangleResult) -> tuple[list[str], np.ndarray] | None:
    """(chunk labels, share of each factor's DCI importance per chunk (G, F)) or None."""
    al = dis.alignment or Alignment()
    share = al.chunk_importance_share
    if not share:
        return None
    labels = al.chunk_labels or (dis.chunk_level.chunk_labels if dis.chunk_level is not None else None)
    if not labels:  # before 2026-12-01: dim ranges only
        labels = [f"dims {lo}-{hi - 1}" for lo, hi in al.chunk_dim_ranges or []]
    m = np.asarray(share, dtype=float)
    if len(labels) != len(m):
        labels = [f"group {i}" for i in range(len(m))]
    return list(labels), m


def top_chunk(dis: DisentangleResult, factors: Sequence[str]) -> list:
    """'chunk 3 (0.62)' for each factor: the chunk holding the largest share of its importance."""
    cm = chunk_matrix(dis)
    names = dis.factors
    if cm is None or len(cm[1]) < 2:
        return [None] * len(factors)
    labels, m = cm
    out = []
    for f in factors:
        if f not in names or names.index(f) >= m.shape[1]:
            out.append(None)
            continue
        col = m[:, names.index(f)]
        out.append(f"{short_label(labels[int(col.argmax())])} ({col.max():.2f})" if col.sum() > 0 else None)
    return out


def union(lists: Iterable[Sequence[str]]) -> list[str]:
    out: list[str] = []
    for names in lists:
        out += [n for n in names if n not in out]
    return out



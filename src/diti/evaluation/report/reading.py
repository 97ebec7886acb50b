"""Reading the results for the page: headline metrics, budgets and protocols in words, chunk matrices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..probe import SELECTION_METRIC
from .html import short_label

OLD_PROTOCOL = "not recorded (before 2026-12-01: MIG/FactorVAE on test codes, 800/400 votes, GBT on 2,000 rows)"
OLD_BUDGET = "not recorded (before 2026-12-01: 15 epochs)"
METRIC_LABELS = {"accuracy": "accuracy", "ap": "AP", "pearson_r": "Pearson r", "mse": "MSE"}


def probe_metric(probe: Mapping) -> str | None:
    """The probe's headline metric: accuracy (multiclass), AP (binary), Pearson r (regression)."""
    mean = probe.get("mean", {})
    metric = SELECTION_METRIC.get(probe.get("task", ""))
    if metric in mean:
        return metric
    return next(iter(mean), None)


def budget_short(probe: Mapping) -> str:
    b = probe.get("budget")
    if not b:
        return "not recorded"
    if b.get("epochs") is not None:
        return f"{b['epochs']} epochs"
    return f"{b.get('steps', 0):,} steps"


def budget_text(probe: Mapping) -> str:
    """The probe's training budget in words (the same for runs probed alike)."""
    b = probe.get("budget")
    if not b:
        return OLD_BUDGET
    if b.get("epochs") is not None:
        return f"{b['epochs']} epochs (fixed, the official protocol)"
    batches = b.get("batches_per_epoch", "?")
    return (f"{b.get('steps', 0):,} optimizer steps ({batches} batch{'' if batches == 1 else 'es'} per epoch), "
            f"validated every {b.get('validate_every_epochs', '?')} epoch(s), early stopping after "
            f"{b.get('patience_validations', '?')} validations without improvement")


def epoch_text(probe: Mapping) -> str:
    """Which epoch was reported, of how many run."""
    b = probe.get("budget") or {}
    run = f" of {b['epochs_run']} run" if "epochs_run" in b else ""
    return f"epoch {probe.get('best_epoch', '?')}{run}" + (" (stopped early)" if b.get("stopped_early") else "")


def protocol_name(dis: Mapping) -> str:
    proto = dis.get("protocol")
    return proto.get("name", "?") if isinstance(proto, Mapping) else "not recorded"


def protocol_text(dis: Mapping) -> str:
    """The sample counts behind the numbers, in words."""
    p = dis.get("protocol")
    if not isinstance(p, Mapping):
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


def chunk_matrix(dis: Mapping) -> tuple[list[str], np.ndarray] | None:
    """(chunk labels, share of each factor's DCI importance per chunk (G, F)) or None."""
    al = dis.get("alignment", {})
    share = al.get("chunk_importance_share")
    if not share:
        return None
    labels = al.get("chunk_labels") or dis.get("chunk_level", {}).get("chunk_labels")
    if not labels:  # before 2026-12-01: dim ranges only
        labels = [f"dims {lo}-{hi - 1}" for lo, hi in al.get("chunk_dim_ranges", [])]
    m = np.asarray(share, dtype=float)
    if len(labels) != len(m):
        labels = [f"group {i}" for i in range(len(m))]
    return list(labels), m


def top_chunk(dis: Mapping, factors: Sequence[str]) -> list:
    """'chunk 3 (0.62)' for each factor: the chunk holding the largest share of its importance."""
    cm = chunk_matrix(dis)
    names = dis.get("factors", [])
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



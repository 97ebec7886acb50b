"""Measured results as Markdown, for the export's model card and the explorer's page."""

from __future__ import annotations

from ..folders.results import DCIScores, DisentangleResult, FactorVAEScores, MIGScores, ProbeResult


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def probe_markdown(probe: ProbeResult | None) -> list[str] | None:
    """The linear-probe table (per attribute and mean), or None if there is no probe or it has no usable rows."""
    if probe is None or not probe.per_attribute:
        return None
    rows = probe.per_attribute
    metrics = list(dict.fromkeys(m for v in rows.values() for m in v))
    out = [f"Linear probes on frozen z (task {probe.task}, test split; `eval/{ProbeResult.FILE}`):", "",
           "| attribute | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in rows.items():
        out.append(f"| {name} | " + " | ".join(_num(values.get(m)) for m in metrics) + " |")
    if probe.mean is not None:
        out.append("| **mean** | " + " | ".join(_num(probe.mean.get(m)) for m in metrics) + " |")
    return out


def disentangle_markdown(result: DisentangleResult | None) -> list[str] | None:
    """DCI / MIG / FactorVAE and the stage-factor alignment, or None without a disentanglement result."""
    if result is None:
        return None
    dci, mig = result.dci or DCIScores(), result.mig or MIGScores()
    fv = result.factor_vae or FactorVAEScores()
    out = [
        f"Disentanglement (`eval/{DisentangleResult.FILE}`): "
        f"DCI disentanglement {_num(dci.disentanglement)}, completeness {_num(dci.completeness)}, "
        f"informativeness {_num(dci.informativeness_test)}; MIG {_num(mig.mig)}; FactorVAE score "
        f"{_num(fv.eval_accuracy)}."
    ]
    table = alignment_table(result)
    if table:
        header, rows = table
        out += ["", "Share of each factor's DCI importance held by each group of dims:", "",
                "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def alignment_table(result: DisentangleResult | None) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of the group x factor importance shares, or None when the result has none."""
    al = result.alignment if result is not None else None
    if al is None:
        return None
    factors, labels, shares = result.factors, al.group_labels, al.group_importance_share
    if not (isinstance(labels, list) and isinstance(shares, list)) or len(labels) != len(shares):
        return None
    if any(not isinstance(r, list) or len(r) != len(factors) for r in shares):
        return None
    rows = [[str(label), *(_num(v) for v in row)] for label, row in zip(labels, shares, strict=True)]
    return ["dims", *map(str, factors)], rows

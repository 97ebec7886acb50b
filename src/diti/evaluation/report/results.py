"""The sections of the page that show results: the headline table, the per-factor tables, where each factor
lives in z, counterfactual fidelity and the attribute loss."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ...folders.results import Alignment, AttributeLossResult, DisentangleResult, FidelityResult, ProbeResult
from .. import figures
from .folders import RunInfo
from .html import (
    Col,
    Figures,
    Group,
    esc,
    figure,
    figure_or_note,
    fmt_value,
    grid_table,
    header_html,
    json_details,
    missing_note,
    note,
    pair,
    tag,
    with_code,
)
from .reading import (
    METRIC_LABELS,
    OLD_PROTOCOL,
    budget_short,
    budget_text,
    chunk_matrix,
    epoch_text,
    factor_values,
    protocol_name,
    protocol_text,
    top_chunk,
    union,
)

# the results with a section of their own (any other result's JSON is shown under 'Other results in eval/')
SHOWN = (ProbeResult, DisentangleResult, FidelityResult, AttributeLossResult)
MAX_MATRIX_COLUMNS = 16  # a group x factor matrix with more groups than this is shown with groups as rows


class AttributeLossSource(NamedTuple):
    """An attribute_loss.json shown in the report: from a run or an extra folder, with its PNG if any."""

    name: str
    result: AttributeLossResult
    raw: object
    png: Path | None


def headline(infos: Sequence[RunInfo]) -> str:
    probes = [i.result(ProbeResult) for i in infos]
    dis = [i.result(DisentangleResult) for i in infos]
    metrics = {p.metric for p in probes if p}
    one_metric = next(iter(metrics)) if len(metrics) == 1 else None

    def probe_cell(p):
        if not p:
            return None
        m = p.metric
        v = (p.mean or {}).get(m)
        return v if one_metric else f"{fmt_value(v)} {METRIC_LABELS.get(m, m)}"

    def get(d, part, key):
        record = getattr(d, part) if d is not None else None
        return getattr(record, key) if record is not None else None

    def chunk_c(d):
        cl = d.chunk_level if d is not None else None
        if cl is None:
            return None
        return "n/a (one group)" if cl.completeness is None else cl.completeness

    probe_title = f"mean {METRIC_LABELS.get(one_metric, one_metric)}" if one_metric else "mean"
    groups = [
        Group("code", [Col("code", [i.code if i.code else "results folder" if i.results_only else None
                                    for i in infos])]),
        Group("linear probe (test)", [Col(probe_title, [probe_cell(p) for p in probes], "max"),
                                      Col("budget", [budget_short(p) if p else None for p in probes])]),
        Group("DCI per dim", [Col("D", [get(d, "dci", "disentanglement") for d in dis], "max"),
                              Col("C", [get(d, "dci", "completeness") for d in dis], "max"),
                              Col("I (test acc)", [get(d, "dci", "informativeness_test") for d in dis], "max")]),
        Group("DCI per chunk", [Col("D", [get(d, "chunk_level", "disentanglement") for d in dis], "max"),
                                Col("C", [chunk_c(d) for d in dis], "max")]),
        Group("MIG", [Col("MIG", [get(d, "mig", "mig") for d in dis], "max")]),
        Group("FactorVAE score", [Col("FactorVAE score", [get(d, "factor_vae", "eval_accuracy") for d in dis], "max")]),
        Group("protocol", [Col("protocol", [protocol_name(d) if d else None for d in dis])]),
    ]
    body = tag("h2", "Results") + tag("div", grid_table("run", [i.name for i in infos], groups), class_="scroll")
    body += note("D, C, I: DCI disentanglement, completeness and informativeness (mean GBT test accuracy); per "
                 "chunk: the same D and C with the importance summed over each chunk's dims. Higher is better "
                 "everywhere; the best run in bold. The rows and votes behind each number: below.")
    # one line per distinct probe budget and protocol, naming the runs it applies to
    probe_texts: dict[str, list[str]] = {}
    dis_texts: dict[str, list[str]] = {}
    epochs: list[str] = []
    for info, p, d in zip(infos, probes, dis, strict=True):
        if p:
            probe_texts.setdefault(f"{p.task} probe, {budget_text(p)}", []).append(info.name)
            epochs.append(f"{info.name}: {epoch_text(p)}")
        if d:
            dis_texts.setdefault(f"disentanglement protocol {protocol_text(d)}", []).append(info.name)
            cl = d.chunk_level
            dis_texts.setdefault(f"chunk level over {len(cl.chunk_labels or [])} groups "
                                 f"({'?' if cl.source is None else cl.source})" if cl is not None
                                 else f"chunk level not recorded: rerun `{info.command(DisentangleResult)}` for it",
                                 []).append(info.name)
    lines = [tag("li", with_code(f"{', '.join(names)}: {text}")) for text, names in probe_texts.items()]
    if epochs:
        lines.append(tag("li", esc("probe epoch chosen on the validation split: " + "; ".join(epochs))))
    lines += [tag("li", with_code(f"{', '.join(names)}: {text}")) for text, names in dis_texts.items()]
    for info in infos:
        lines += [tag("li", with_code(f"{info.name}: {info.missing_text(r)}"), class_="missing")
                  for r in (ProbeResult, DisentangleResult) if r in info.missing_results]
    if lines:
        body += tag("ul", "".join(lines), class_="note")
    return body


def _with_mean(groups: Sequence[Group], means: Mapping[tuple[str, str], object]) -> None:
    """Append the 'mean' row: ``means[group title, column title]`` (None where there is none)."""
    for g in groups:
        for c in g.cols:
            c.values = [*c.values, means.get((g.title, c.title))]


def per_factor(infos: Sequence[RunInfo], al_sources: Sequence[AttributeLossSource], figs: Figures) -> str:
    """Two tables with factors as rows: the linear probe (beside its figure), and DCI / MIG / chunk / DM t."""
    probed = [i for i in infos if i.result(ProbeResult)]
    measured = [i for i in infos if i.result(DisentangleResult)]
    if not probed and not measured:
        return ""
    factors = union([*(i.result(ProbeResult).names for i in probed),
                     *(i.result(DisentangleResult).factors for i in measured)])
    body = tag("h2", "Per factor")
    if probed:
        body += _probe_table(probed, factors, figs)
    if measured:
        body += _factor_table(measured, factors, al_sources)
    return body


def _probe_table(probed: Sequence[RunInfo], factors: Sequence[str], figs: Figures) -> str:
    probes = {i.name: i.result(ProbeResult) for i in probed}
    groups: list[Group] = []
    chance_cols = [Col(i.name, [c.get(f) for f in factors]) for i in probed
                   if (c := i.chance()) and any(f in c for f in factors)]
    if chance_cols and all(c.values == chance_cols[0].values for c in chance_cols):
        chance_cols = [Col("chance", chance_cols[0].values)]
    if chance_cols:
        groups.append(Group("chance", chance_cols))
    # the headline metric of each probe first (accuracy for multiclass), then the others
    metrics = [m for m in union([*([p.metric] for p in probes.values()),
                                 *(p.mean or {} for p in probes.values())]) if m is not None]
    means = {}
    for m in metrics:
        title = f"probe {METRIC_LABELS.get(m, m)}"
        cols = [Col(name, [p.per_attribute.get(f, {}).get(m) for f in factors]) for name, p in probes.items()]
        means.update({(title, name): (p.mean or {}).get(m) for name, p in probes.items()})
        groups.append(Group(title, cols, "min" if m == "mse" else "max"))
    _with_mean(groups, means)
    table_html = grid_table("factor", [*factors, "mean"], groups, [None] * len(factors) + ["mean"])
    shown = next((m for m in metrics if all(m in (p.mean or {}) for p in probes.values())), None)
    png, err = figs.make(figures.plot_probe_comparison, {name: p.to_dict() for name, p in probes.items()},
                         metric=shown)
    body = tag("h3", "Linear probe (test split)")
    body += pair(table_html, figure_or_note(png, err, f"linear probe per factor: {shown}"))
    body += note("A linear layer on the frozen codes, scored on the test split at the epoch chosen on a validation "
                 "split (budgets under 'Results')."
                 + (" Chance: the majority-class share of the test split." if chance_cols else ""))
    for info in probed:
        body += json_details(info.raw[ProbeResult], f"raw {ProbeResult.FILE}: {info.name}")
    return body


def _factor_table(measured: Sequence[RunInfo], factors: Sequence[str],
                  al_sources: Sequence[AttributeLossSource]) -> str:
    gbt, mig_cols, tops, means = [], [], [], {}
    for i in measured:
        d = i.result(DisentangleResult)
        if d.dci is not None and d.dci.per_factor_test:
            gbt.append(Col(i.name, factor_values(d.factors, d.dci.per_factor_test, factors)))
            means["DCI: GBT test accuracy", i.name] = d.dci.informativeness_test
        if d.mig is not None and d.mig.per_factor:
            mig_cols.append(Col(i.name, factor_values(d.factors, d.mig.per_factor, factors)))
            means["MIG", i.name] = d.mig.mig
        tops.append(Col(i.name, top_chunk(d, factors)))
    groups = [Group("DCI: GBT test accuracy", gbt, "max"), Group("MIG", mig_cols, "max"),
              Group("chunk with most importance (share)", [c for c in tops if any(c.values)])]
    lost = []
    for source in al_sources:
        al = source.result
        lost.append(Col(source.name, ["no pair" if f in al.skipped else "never" if f in al.factors
                                      and al.crossing_t.get(f) is None else al.crossing_t.get(f) for f in factors]))
    groups.append(Group("DM loses it at t", lost))
    _with_mean(groups, means)
    table_html = grid_table("factor", [*factors, "mean"], groups, [None] * len(factors) + ["mean"])
    old = [i.name for i in measured
           if i.result(DisentangleResult).dci is None or not i.result(DisentangleResult).dci.per_factor_test]
    body = tag("h3", "Disentanglement per factor") + tag("div", table_html, class_="scroll")
    body += note("DCI: test accuracy of the factor's gradient-boosted trees. MIG: (top-1 - top-2 mutual information "
                 "over dims) / H(factor). Chunk: the chunk (or slice of z) holding the largest share of the "
                 "factor's DCI importance. DM loses it at t: the first t at which Err(x0, y0, t) reaches the "
                 "threshold (section 'Attribute loss'). DiTi's claim: fine factors are lost first by the DM and "
                 "land in early chunks.")
    if old:
        body += note(f"{', '.join(old)}: no per-factor GBT accuracy in disentangle.json (written before "
                     "2026-12-01)")
    return body


def _matrix_table(corner: str, rows: Sequence[str], cols: Sequence[str], m: np.ndarray, title: str) -> str:
    """m (len(cols), len(rows)), e.g. chunks x factors, as a table with ``rows`` as rows and the largest value
    of each row in bold; transposed (chunks as rows, the largest of each column in bold) when there are more
    than MAX_MATRIX_COLUMNS columns, so that k = 64 chunks read down the page instead of across it."""
    if len(cols) > MAX_MATRIX_COLUMNS:
        group = Group(title, [Col(r, [float(v) for v in m[:, j]], best="max") for j, r in enumerate(rows)],
                      shade=True)
        return grid_table("chunk", list(cols), [group])
    group = Group(title, [Col(header_html(c), [float(v) for v in m[g]], html_title=True)
                          for g, c in enumerate(cols)], "max", shade=True)
    return grid_table(corner, rows, [group])


def where(infos: Sequence[RunInfo], figs: Figures) -> str:
    from ..runs import plot_alignment

    measured = [i for i in infos if i.result(DisentangleResult)]
    if not measured:
        return ""
    body = tag("h2", "Where each factor lives in z")
    body += note("Share of each factor's DCI importance held by each chunk (rows sum to 1 over the chunks), and "
                 "per stage the share and the accuracy of a linear probe on that stage's dims alone. DiTi's claim: "
                 "each chunk carries the factors the frozen DM loses in its t-range.")
    for info in measured:
        d = info.result(DisentangleResult)
        factors = d.factors
        body += tag("h3", esc(info.name))
        cl = d.chunk_level
        if cl is not None:
            c, sc = cl.completeness, cl.stage_completeness
            body += note(f"chunk level ({'?' if cl.source is None else cl.source}): D {fmt_value(cl.disentanglement)}, "
                         f"C {'n/a (one group)' if c is None else fmt_value(c)}; stage level: D "
                         f"{fmt_value(cl.stage_disentanglement)}, C "
                         f"{'n/a (one group)' if sc is None else fmt_value(sc)}; protocol {protocol_name(d)}")
        else:
            body += note(f"chunk- and stage-level D / C not recorded; protocol {OLD_PROTOCOL}")
        cm = chunk_matrix(d)
        chunk_html = ""
        if cm is not None and len(cm[1]) > 1 and cm[1].shape[1] == len(factors):  # (one chunk: all 1)
            chunk_html = _matrix_table("factor", factors, cm[0], cm[1], "share of importance per chunk")
        al = d.alignment or Alignment()
        stage_groups = []
        labels = al.group_labels or []
        share, acc = al.group_importance_share, al.group_probe_accuracy
        same_as_chunks = al.group_dim_ranges == al.chunk_dim_ranges
        for title, matrix in (("share of importance per stage", None if same_as_chunks else share),
                              ("probe accuracy from the stage's dims alone", acc)):
            if not matrix:
                continue
            m = np.asarray(matrix, dtype=float)
            if m.shape != (len(labels), len(factors)):
                continue
            stage_groups.append(Group(title, [Col(header_html(lb), [float(v) for v in m[g]], html_title=True)
                                              for g, lb in enumerate(labels)], "max", shade=True))
        stage_html = grid_table("factor", factors, stage_groups) if stage_groups else ""
        png, err = figs.png(info.eval_folder / DisentangleResult.FIGURE,
                            lambda out, d=d, name=info.name: plot_alignment(d, out, name))
        fig = figure_or_note(png, err, f"{info.name}: {DisentangleResult.FIGURE} (per stage)")
        body += pair(chunk_html + stage_html, fig)
        body += json_details(info.raw[DisentangleResult], f"raw {DisentangleResult.FILE}: {info.name}")
    return body


def fidelity(infos: Sequence[RunInfo]) -> str:
    present = [i for i in infos if i.result(FidelityResult)]
    missing = [i for i in infos if FidelityResult in i.missing_results]
    if not present:
        return ""
    body = tag("h2", "Counterfactual fidelity")
    body += note("Each dim group of z is swapped from a source image into a target, the result is decoded and a "
                 "factor classifier trained on real images names its factors. Takes source: P(classified as the "
                 "source's value | source and target differ in the factor); keeps target: the same for the "
                 "target's value. Ceiling: the classifier's accuracy on plain DDIM reconstructions; real images: on "
                 "the targets themselves; pairs: (source, target) pairs that differ in the factor.")
    for info in present:
        f = info.result(FidelityResult)
        factors, labels = f.factor_names, f.group_labels
        body += tag("h3", esc(info.name))
        clf = f.classifier or {}
        text = f"{_known(f.num_pairs)} pairs, {_known(f.num_steps)} DDIM steps, seed {_known(f.seed)}"
        if "mean_test_accuracy" in clf:
            text += f"; factor classifier: mean test accuracy {fmt_value(clf['mean_test_accuracy'])}"
            epochs, rows = clf.get("epochs"), clf.get("num_train")
            if epochs is not None and rows is not None:
                text += f" ({epochs} epoch{'' if epochs == 1 else 's'} on {fmt_value(rows)} images)"
        body += note(text)
        groups = []
        for title, m, best in (("takes source", f.takes_source, "max"), ("keeps target", f.keeps_target, None)):
            if m.ndim == 2 and m.shape == (len(labels), len(factors)):
                groups.append(Group(title, [Col(header_html(lb), _values(m[g]), html_title=True)
                                            for g, lb in enumerate(labels)], best, shade=True))
        for title, v in (("ceiling", f.reconstruction_accuracy), ("real images", f.real_accuracy),
                         ("pairs", f.num_differ)):
            if v.ndim == 1 and len(v) == len(factors):
                groups.append(Group(title, [Col(title, _values(v))], shade=title != "pairs"))
        table_html = grid_table("factor", factors, groups) if groups else ""
        own = info.eval_folder / FidelityResult.FIGURE
        body += pair(table_html, figure(own.read_bytes(), f"{info.name}: {own.name}") if own.is_file() else "")
        body += json_details(info.raw[FidelityResult], f"raw {FidelityResult.FILE}: {info.name}")
    for info in missing:
        body += missing_note(f"{info.name}: {info.missing_text(FidelityResult)}")
    return body


def attribute_loss(sources: Sequence[AttributeLossSource], figs: Figures) -> str:
    if not sources:
        return ""
    factors = union([s.result.order for s in sources])
    groups = []
    for source in sources:
        al = source.result

        def cell(f, table, al=al):
            if f in al.skipped:
                return "no pair"
            return ("never" if table.get(f) is None else table[f]) if f in al.factors else None

        cols = [Col("first t", [cell(f, al.crossing_t) for f in factors]),
                Col("t (interpolated)", [cell(f, al.crossing_t_interp) for f in factors]),
                Col("pairs", [al.num_pairs.get(f) for f in factors])]
        groups.append(Group(source.name, cols) if len(sources) > 1 else Group("", cols))
    if len(sources) == 1:  # one source: plain columns
        groups = [Group(c.title, [c]) for c in groups[0].cols]
    table_html = grid_table("factor (first lost first)", factors, groups)
    figs_html = ""
    for source in sources:
        if source.png is not None and source.png.is_file():
            png, err = source.png.read_bytes(), ""
        else:
            png, err = figs.make(figures.plot_attribute_loss, source.result.to_dict(),
                                 title=f"{source.name}: attribute loss")
        figs_html += figure_or_note(png, err, f"{source.name}: Err(x0, y0, t) per factor")
    thresholds = ", ".join(sorted({fmt_value(s.result.threshold) for s in sources}))
    body = tag("h2", "Attribute loss against time-step (frozen DM)")
    body += note(f"Err(x0, y0, t) for pairs that differ in one factor: 0 while the DM still recovers the factor "
                 f"from x_t, 1/2 once it is lost. First t: the first grid step where Err reaches {thresholds}; "
                 "interpolated: the same point between grid steps. Rows: factors in the order the first source "
                 "loses them.")
    body += pair(table_html, figs_html)
    for source in sources:
        body += json_details(source.raw, f"raw {AttributeLossResult.FILE}: {source.name}")
    return body




def attribute_loss_sources(infos: Sequence[RunInfo], extra_dirs: Sequence[Path]
                           ) -> tuple[list[AttributeLossSource], set[Path]]:
    """The attribute-loss results of the runs and the extra folders; the extra files used."""
    sources, used = [], set()
    for info in infos:
        if info.result(AttributeLossResult):
            sources.append(AttributeLossSource(info.name, info.result(AttributeLossResult),
                                               info.raw[AttributeLossResult],
                                               info.eval_folder / AttributeLossResult.FIGURE))
    for folder in extra_dirs:
        file = folder / AttributeLossResult.FILE
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
            result = AttributeLossResult.from_dict(data)
        except ValueError:
            continue  # shown as JSON (or as invalid JSON) in the extra folder's section
        sources.append(AttributeLossSource(folder.name, result, data, folder / AttributeLossResult.FIGURE))
        used |= {file, folder / AttributeLossResult.FIGURE}
    return sources, used


def _known(value) -> object:
    return "?" if value is None else value


def _values(array: np.ndarray) -> list:
    """A result's numbers as table cells: Python ints and floats, None where NaN (no pair)."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in array.tolist()]



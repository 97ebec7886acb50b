"""The sections of the page about the folders themselves: figures of eval/, the runs' overview and partitions,
training curves, other JSON, the extra folders and what was not found."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...folders import RESULTS, AttributeLossResult, list_checkpoints
from ...folders.layout import CHECKPOINTS, COUNTERFACTUAL_PNG, LOSS_PER_T, METRICS
from .. import figures
from .folders import COUNTERFACTUAL_COMMAND, RunInfo
from .html import (
    MAX_JSON_CHARS,
    Col,
    Figures,
    Group,
    columns,
    esc,
    figure,
    figure_or_note,
    grid_table,
    json_details,
    json_file_block,
    missing_note,
    note,
    pair,
    tag,
    with_code,
)
from .results import SHOWN

# PNGs shown beside the table they explain; every other PNG of RUN/eval/ goes to "Counterfactuals and figures"
SECTION_PNGS = tuple(cls.FIGURE for cls in RESULTS if cls.FIGURE)


def eval_figures(infos: Sequence[RunInfo]) -> str:
    """Counterfactual grids and every other PNG of RUN/eval/, runs side by side (same-named figures)."""
    by_name: dict[str, dict[str, Path]] = {}
    for info in infos:
        for p in info.eval_pngs:
            if p.name not in SECTION_PNGS:
                by_name.setdefault(p.name, {})[info.name] = p
    # runs with evaluations but no counterfactual grid are told how to make one
    expecting = [i for i in infos if i.results and not i.results_only and i.meta.get("kind") != "pretrain"]
    if not by_name and not expecting:
        return ""
    out = [tag("h2", "Counterfactuals and other figures")]
    if COUNTERFACTUAL_PNG not in by_name:
        out += [missing_note(f"{i.name}: no {COUNTERFACTUAL_PNG}: run `{COUNTERFACTUAL_COMMAND.format(run=i.path)}`")
                for i in expecting]
    order = sorted(by_name, key=lambda n: (not n.startswith("counterfactual"), n))
    for file in order:
        per_run = by_name[file]
        cells = []
        for info in infos:
            p = per_run.get(info.name)
            if p is not None:
                cells.append(tag("h3", esc(info.name)) + figure(p.read_bytes(), f"{info.name}: {file}"))
            elif file == COUNTERFACTUAL_PNG and info in expecting:
                cells.append(tag("h3", esc(info.name))
                             + missing_note(f"no {file}: run `{COUNTERFACTUAL_COMMAND.format(run=info.path)}`"))
            else:
                cells.append(tag("h3", esc(info.name)) + note(f"no {file}"))
        out.append(tag("h3", esc(file)) + columns(cells))
    return "".join(out)


def overview(infos: Sequence[RunInfo]) -> str:
    def cfg(info: RunInfo, getter: Callable) -> object:
        try:
            return getter(info.config) if info.config is not None else None
        except AttributeError:
            return None

    def records(info: RunInfo) -> list[dict]:
        file = info.path / METRICS
        return figures._records(file) if file.is_file() else []

    def last_metric(info: RunInfo, key: str) -> object:
        rows = [r for r in records(info) if key in r]
        return rows[-1][key] if rows else None

    def median_speed(info: RunInfo) -> object:
        speeds = [r["img_per_s"] for r in records(info) if isinstance(r.get("img_per_s"), (int, float))]
        return float(np.median(speeds)) if speeds else None

    fields: list[tuple[str, Callable[[RunInfo], object]]] = [
        ("path", lambda i: str(i.path)),
        ("kind", lambda i: "results folder (no run files)" if i.results_only else i.meta.get("kind")),
        ("created", lambda i: i.meta.get("created")),
        ("diti version", lambda i: i.meta.get("diti_version")),
        ("frozen DM", lambda i: cfg(i, lambda c: c.dm)),
        ("data", lambda i: cfg(i, lambda c: c.data.path)),
        ("resolution", lambda i: cfg(i, lambda c: c.data.resolution)),
        ("latent dim d", lambda i: cfg(i, lambda c: c.partition.latent_dim)),
        ("chunks k", lambda i: cfg(i, lambda c: c.partition.k)),
        ("partition mode", lambda i: cfg(i, lambda c: c.partition.mode)),
        ("partition rule", lambda i: cfg(i, lambda c: c.partition.rule + (
            f" ({Path(c.partition.rule_source).name})" if c.partition.rule_source else ""))),
        ("objective", lambda i: cfg(i, lambda c: c.objective.summary())),
        ("decoder init", lambda i: cfg(i, lambda c: c.decoder.init)),
        ("encoder init", lambda i: cfg(i, lambda c: c.encoder.init)),
        ("steps (config)", lambda i: cfg(i, lambda c: c.train.steps)),
        ("batch size", lambda i: cfg(i, lambda c: c.train.batch_size)),
        ("lr", lambda i: cfg(i, lambda c: c.train.lr)),
        ("training precision", lambda i: cfg(i, lambda c: {"no": "float32", "bf16": "bf16 autocast",
                                                            "fp16": "fp16 autocast"}.get(c.train.mixed_precision,
                                                                                           c.train.mixed_precision))),
        ("last logged step", lambda i: last_metric(i, "step")),
        ("last logged loss", lambda i: last_metric(i, "loss")),
        ("median img/s", median_speed),
        ("checkpoints", lambda i: len(list_checkpoints(i.path / CHECKPOINTS))
         if (i.path / CHECKPOINTS).is_dir() else None),
    ]
    rows = [(label, [get(i) for i in infos]) for label, get in fields]
    rows = [(label, values) for label, values in rows if any(v is not None for v in values)]
    groups = [Group(i.name, [Col(i.name, [values[j] for _, values in rows])], text_left=True)
              for j, i in enumerate(infos)]
    table_html = grid_table("", [label for label, _ in rows], groups)
    parts = [tag("h3", esc(f"partition: {i.name}")) + tag("pre", esc(i.partition.format_table()))
             for i in infos if i.partition is not None]
    return tag("h2", "Runs") + pair(table_html, "".join(parts))


def training(infos: Sequence[RunInfo], figs: Figures) -> str:
    plots = (("training loss", METRICS, figures.plot_training_loss),
             ("loss per time-step", LOSS_PER_T, figures.plot_loss_per_t))
    trained = [i for i in infos if any((i.path / file).is_file() for _, file, _ in plots)]
    if not trained:
        return ""
    out = [tag("h2", "Training")]
    for info in trained:
        cells = []
        for title, file, plot in plots:
            if (info.path / file).is_file():
                png, err = figs.make(plot, info.path / file, title=f"{info.name}: {title}")
                cells.append(figure_or_note(png, err, f"{info.name}: {file}"))
            else:
                cells.append(note(f"no {file}"))
        out.append(tag("h3", esc(info.name)) + columns(cells))
    return "".join(out)


def other_json(infos: Sequence[RunInfo]) -> str:
    """The JSON of eval/ that no section shows: results without a section of their own, and other files."""
    def blocks(info: RunInfo) -> list[str]:
        named = [(cls.FILE, json_details(info.raw[cls], f"raw {cls.FILE}")) for cls in info.results if cls not in SHOWN]
        named += [(p.name, json_file_block(p)) for p in info.other_json]
        return [html for _, html in sorted(named, key=lambda item: item[0])]

    present = [(i, b) for i in infos if (b := blocks(i))]
    if not present:
        return ""
    cells = [tag("h3", esc(i.name)) + "".join(b) for i, b in present]
    return tag("h2", "Other results in eval/") + "".join(cells)


def extra_dir(folder: Path, used: set[Path]) -> str:
    out = [tag("h2", esc(f"Extra: {folder}"))]
    if not folder.is_dir():
        return out[0] + note("folder not found")
    pngs = sorted(p for p in folder.glob("*.png") if p not in used)
    texts = sorted(p for p in folder.iterdir() if p.suffix in (".md", ".txt") and p.is_file())
    jsons = sorted(p for p in folder.glob("*.json") if p not in used)
    for p in pngs:
        out.append(figure(p.read_bytes(), p.name))
    for p in texts:
        out.append(tag("h3", esc(p.name)) + tag("pre", esc(p.read_text()[:MAX_JSON_CHARS])))
    out += [json_file_block(p) for p in jsons]
    if used & set(folder.iterdir()):
        out.append(note(f"{AttributeLossResult.FILE} and its figure are shown in the section 'Attribute loss'"))
    elif not (pngs or texts or jsons):
        out.append(note("no PNG, JSON, .md or .txt file in this folder"))
    return "".join(out)


def missing(infos: Sequence[RunInfo]) -> str:
    items = []
    for i in infos:
        parts = [esc(m) for m in i.missing] + [with_code(i.missing_text(r)) for r in i.missing_results]
        if parts:
            items.append(tag("li", esc(f"{i.name}: ") + "; ".join(parts)))
    if not items:
        return ""
    return tag("h2", "Not found") + tag("ul", "".join(items), class_="note")



"""One self-contained HTML page that reads like a results section: ``write_report`` behind ``diti report``.

The page, top to bottom:

1. **Results**: a headline table, one row per run (probe mean, DCI D / C / I per dim, DCI D / C per chunk, MIG,
   FactorVAE score), with the probe budget and the disentanglement protocol that produced each number, and
   for every missing result the command that produces it.
2. **Per factor**: factors as rows, runs x metrics as columns (probe per factor, DCI's per-factor GBT test
   accuracy, MIG per factor, the chunk holding most of the factor's importance, the time-step at which the
   frozen DM loses the factor), beside the probe comparison figure.
3. **Where each factor lives in z**: per run, the factor x chunk share of DCI importance, and per stage the
   share and the probe accuracy from the stage's dims alone, beside ``alignment.png``.
4. **Counterfactual fidelity**, 5. **Attribute loss against t**: each table beside its figure.
6. Counterfactual grids and the other PNGs of ``RUN/eval/``; 7. the runs' overview, partition and training
   curves; 8. other JSON of ``RUN/eval/``, the ``--extra`` folders and what was not found.

Each section ends with the raw JSON it was read from, in a collapsed ``<details>`` block. JSON written before
2026-12-01 (no ``protocol`` / ``budget`` / ``chunk_level``) is shown with what it has, its protocol labelled
as not recorded. A folder holding the JSON itself (``diti disentangle --features ... --out DIR``) is read as a
run without training files.

The page is plain HTML5: figures are base64 data URIs, the CSS is inline, there is no script and nothing
remote, so the file can be mailed or archived alone. All text goes through ``html.escape``. Wide tables
scroll inside their own box; the page itself fits 1400 px.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import ConfigError, DiTiConfig, PretrainConfig
from ..training.checkpoint import list_checkpoints
from ..training.run import read_meta, read_run_config
from . import figures
from .probe import SELECTION_METRIC

EVAL_DIR = "eval"
KNOWN_JSON = ("probe.json", "disentangle.json", "fidelity.json", "attribute_loss.json")
# PNGs shown beside the table they explain; every other PNG of RUN/eval/ goes to "Counterfactuals and figures"
SECTION_PNGS = ("alignment.png", "fidelity.png", "attribute_loss.png")
MAX_JSON_CHARS = 1_000_000  # a JSON file shown verbatim is cut here (the page says so)
MAX_MATRIX_COLUMNS = 16  # a group x factor matrix with more groups than this is shown with groups as rows

# The command that writes each result ({run}: the run folder as given).
COMMANDS = {
    "probe.json": "diti probe {run} --data DIR",
    "disentangle.json": "diti disentangle {run} --data DIR",
    "fidelity.json": "diti fidelity {run} --data DIR",
    "attribute_loss.json": "diti attribute-loss --dm {run} --data DIR --out {run}/eval",
    "counterfactual.png": "diti counterfactual {run} --data DIR",
}
FEATURE_COMMANDS = {  # for a folder of results without a run (codes measured with --features)
    "probe.json": "diti probe --features FILE --test-features FILE --out {run}/probe.json",
    "disentangle.json": "diti disentangle --features FILE --test-features FILE --out {run}",
}
OLD_PROTOCOL = "not recorded (before 2026-12-01: MIG/FactorVAE on test codes, 800/400 votes, GBT on 2,000 rows)"
OLD_BUDGET = "not recorded (before 2026-12-01: 15 epochs)"
METRIC_LABELS = {"accuracy": "accuracy", "ap": "AP", "pearson_r": "Pearson r", "mse": "MSE"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em auto; max-width: 1360px;
       padding: 0 1em; color: #222; font-size: 14px; line-height: 1.35; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; padding-bottom: 0.15em; }
h3 { font-size: 1.02em; margin: 1.2em 0 0.3em; }
p { margin: 0.35em 0; max-width: 1100px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.55em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; font-weight: 600; vertical-align: bottom; white-space: normal; }
th.group { text-align: center; background: #e9eef5; }
td.label, th.label, td.text { text-align: left; }
td.best { font-weight: 700; }
td.na { color: #999; }
tr.mean td { border-top: 2px solid #999; }
.pair { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.pair > .t { flex: 0 1 auto; min-width: 0; max-width: 100%; overflow-x: auto; }
.pair > .f { flex: 1 1 360px; min-width: 300px; max-width: 680px; }
.cols { display: grid; gap: 1em; align-items: start; }
.cols > div { min-width: 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.85em; margin: 0.3em 0; }
details pre { white-space: pre-wrap; word-break: break-all; max-height: 480px; overflow-y: auto; }
details { margin: 0.4em 0; } summary { cursor: pointer; color: #345; }
.note { color: #666; font-size: 0.9em; }
.missing { color: #8a4b00; }
code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; }
figure { margin: 0 0 1em; } figcaption { font-size: 0.85em; color: #555; }
"""


# ----------------------------------------------------------------------------------------------------
# HTML helpers
# ----------------------------------------------------------------------------------------------------
def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def tag(name: str, body: str = "", **attrs: object) -> str:
    """``<name attrs>body</name>``; body is already HTML, attribute values are escaped."""
    text = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return f"<{name}{text}>{body}</{name}>"


def img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{esc(alt)}">'


def figure(png: bytes, caption: str) -> str:
    return tag("figure", img(png, caption) + tag("figcaption", esc(caption)))


def note(text: str, cls: str = "note") -> str:
    return tag("p", esc(text), class_=cls)


def with_code(text: str) -> str:
    """Escaped text in which `backticked` spans become <code>."""
    parts = esc(text).split("`")
    return "".join(tag("code", p) if i % 2 else p for i, p in enumerate(parts))


def missing_note(text: str) -> str:
    return tag("p", with_code(text), class_="note missing")


def pair(table_html: str, figure_html: str) -> str:
    """A table with the figure that explains it beside it (below it when the page is too narrow)."""
    if not figure_html:
        return tag("div", table_html, class_="scroll")
    return tag("div", tag("div", table_html, class_="t") + tag("div", figure_html, class_="f"), class_="pair")


def columns(cells: Sequence[str]) -> str:
    """Side-by-side columns (one per run)."""
    body = "".join(tag("div", c) for c in cells)
    style = f"grid-template-columns: repeat({max(1, len(cells))}, minmax(0, 1fr));"
    return tag("div", body, class_="cols", style=style)


def fmt_value(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a" if math.isnan(v) else str(v)
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.1e}"
        if abs(v) >= 1e4:
            return f"{v:,.0f}"
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"
    return str(v)


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _short(label: str) -> str:
    """'chunk 3: t 0-249, dims 0-3' -> 'chunk 3'."""
    return label.split(":", 1)[0]


def _header_html(label: str) -> str:
    """A group label over a few lines: the name, then its t-range and dims."""
    head, _, rest = label.partition(": ")
    lines = [head, *(re.split(r", (?=dims |no dims)| (?=\()", rest) if rest else [])]
    return "<br>".join(esc(line) for line in lines)


def _shade(v: object) -> str | None:
    """Background for a value in [0, 1] (a share, an accuracy): the matrix reads as a heatmap."""
    x = _number(v)
    if x is None:
        return None
    return f"background: rgba(49, 112, 190, {0.05 + 0.55 * min(1.0, max(0.0, x)):.2f})"


@dataclass
class Col:
    """One column of a table: its header and one value per row (str, number or None)."""

    title: str
    values: list
    best: str | None = None  # 'max' / 'min': bold the best number of this column (runs as rows)
    html_title: bool = False  # the title is already HTML


@dataclass
class Group:
    """Columns under one header cell; ``best`` bolds, row by row, the best number among them (runs as columns)."""

    title: str
    cols: list[Col]
    best: str | None = None
    shade: bool = False  # heatmap backgrounds (values in [0, 1])
    text_left: bool = False  # left-align text cells (paths, names)
    # a group with a single column named like the group shows one header cell
    single: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.single = len(self.cols) == 1 and self.cols[0].title in ("", self.title)


def _target(numbers: list[float], rule: str | None) -> float | None:
    if not rule or len(set(numbers)) < 2:  # nothing to choose between
        return None
    return (max if rule == "max" else min)(numbers)


def grid_table(corner: str, row_labels: Sequence[str], groups: Sequence[Group],
               row_class: Sequence[str | None] | None = None) -> str:
    """A table with row labels and grouped columns (two header rows when a group has several columns)."""
    groups = [g for g in groups if g.cols]
    two_rows = any(not g.single for g in groups)
    span = 2 if two_rows else None
    top = [tag("th", esc(corner), class_="label", rowspan=span)]
    sub = []
    for g in groups:
        if g.single:
            top.append(tag("th", esc(g.title), rowspan=span))
        else:
            top.append(tag("th", esc(g.title), colspan=len(g.cols), class_="group"))
            sub += [tag("th", c.title if c.html_title else esc(c.title)) for c in g.cols]
    lines = [tag("tr", "".join(top))] + ([tag("tr", "".join(sub))] if sub else [])
    col_target = {}
    for gi, g in enumerate(groups):
        for ci, c in enumerate(g.cols):
            col_target[gi, ci] = _target([x for x in map(_number, c.values) if x is not None], c.best)
    for r, label in enumerate(row_labels):
        cells = [tag("td", esc(label), class_="label")]
        for gi, g in enumerate(groups):
            values = [c.values[r] for c in g.cols]
            row_best = _target([x for x in map(_number, values) if x is not None], g.best)
            for ci, v in enumerate(values):
                x = _number(v)
                best = x is not None and (x == row_best or x == col_target[gi, ci])
                cls = "best" if best else "na" if v is None else "text" if g.text_left and x is None else None
                text = f"{x:.3f}" if g.shade and x is not None else fmt_value(v)  # shares: 0.000, not 1e-18
                cells.append(tag("td", esc(text), class_=cls, style=_shade(v) if g.shade else None))
        lines.append(tag("tr", "".join(cells), class_=row_class[r] if row_class else None))
    return tag("table", "".join(lines))


def pretty_json(data: object, indent: int = 0) -> str:
    """JSON with objects indented and each list of numbers (or row of a matrix) on one line."""
    pad = "  " * indent

    def flat(v: object) -> bool:
        return not isinstance(v, (dict, list))

    if isinstance(data, dict):
        if not data:
            return "{}"
        items = [f"{pad}  {json.dumps(str(k))}: {pretty_json(v, indent + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(data, list):
        if all(flat(v) for v in data):
            return json.dumps(data)
        items = [f"{pad}  {json.dumps(v) if isinstance(v, list) and all(map(flat, v)) else pretty_json(v, indent + 1)}"
                 for v in data]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(data)


def json_details(data: object, summary: str) -> str:
    """The raw JSON, collapsed."""
    text = pretty_json(data)
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + f"\n... (cut at {MAX_JSON_CHARS:,} characters)"
    return tag("details", tag("summary", esc(summary)) + tag("pre", esc(text)))


def _json_file_block(path: Path) -> str:
    try:
        return json_details(json.loads(path.read_text()), f"raw {path.name}")
    except json.JSONDecodeError as err:
        return note(f"{path.name}: invalid JSON ({err})")


# ----------------------------------------------------------------------------------------------------
# Reading a run
# ----------------------------------------------------------------------------------------------------
class RunInfo:
    """What one run folder holds.

    ``missing``: files looked for and not found (or unreadable); ``missing_results``: evaluation results not
    found, each with the command that writes it. A folder without meta.json and config.yaml that holds
    results JSON itself (``diti disentangle --features ... --out DIR``) is a results folder: no run files.
    """

    def __init__(self, path: Path, name: str):
        self.path = path
        self.name = name
        self.missing: list[str] = []
        self.missing_results: dict[str, str] = {}
        self.meta: dict = {}
        self.config = None
        self.partition = None
        self.json: dict[str, dict] = {}
        self.eval_pngs: list[Path] = []
        self.other_json: list[Path] = []
        self.results_only = False
        self.eval_folder = path / EVAL_DIR
        self._read()

    def _read(self) -> None:
        own_json = any((self.path / n).is_file() for n in KNOWN_JSON)
        if not (self.path / "meta.json").is_file() and not (self.path / "config.yaml").is_file() and own_json:
            self.results_only, self.eval_folder = True, self.path
        else:
            self._read_run_files()
        folder = self.eval_folder
        for name in KNOWN_JSON:
            file = folder / name
            if not file.is_file():
                continue
            try:
                self.json[name] = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                self.missing.append(f"{file.relative_to(self.path)} (invalid JSON: {err})")
        if folder.is_dir():
            self.eval_pngs = sorted(folder.glob("*.png"))
            self.other_json = sorted(p for p in folder.glob("*.json") if p.name not in KNOWN_JSON)
        for name in self._expected_results():
            if not (folder / name).is_file():  # (an unreadable one is listed in ``missing``)
                self.missing_results[name] = self.command(name)

    def _read_run_files(self) -> None:
        try:
            self.meta = read_meta(self.path)
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as err:
            self.missing.append(f"meta.json ({err})")
        cls = PretrainConfig if self.meta.get("kind") == "pretrain" else DiTiConfig
        if (self.path / "config.yaml").is_file():
            try:
                self.config = read_run_config(self.path, cls)
            except (ConfigError, ValueError, TypeError, FileNotFoundError) as err:
                self.missing.append(f"config.yaml (unreadable: {err})")
        else:
            self.missing.append("config.yaml")
        if isinstance(self.config, DiTiConfig):
            try:
                self.partition = self.config.partition.build(self.config.diffusion.timesteps)
            except ConfigError as err:
                self.missing.append(f"partition ({err})")
        for name in ("metrics.jsonl", "loss_per_t.json"):
            if not (self.path / name).is_file():
                self.missing.append(f"{name} (written by training)")

    def _expected_results(self) -> list[str]:
        """The results this kind of folder should have: a DM (pretrain run) only has an attribute loss."""
        if self.results_only:
            return list(FEATURE_COMMANDS)
        if self.meta.get("kind") == "pretrain":
            return ["attribute_loss.json"]
        return ["probe.json", "disentangle.json", "fidelity.json"]

    def command(self, result: str) -> str:
        table = FEATURE_COMMANDS if self.results_only else COMMANDS
        return table[result].format(run=self.path)

    def missing_text(self, result: str) -> str:
        return f"no {result}: run `{self.command(result)}`"

    @property
    def code(self) -> str | None:
        """'d=16, k=4' from the config; None for a results folder."""
        if self.partition is None:
            return None
        return f"d={self.partition.latent_dim}, k={self.partition.k}"

    def chance(self) -> dict[str, float]:
        """Majority-class share per categorical attribute of the cached test split (RUN/eval/features/)."""
        from ..data import Attributes

        csv = self.eval_folder / "features" / "test.attributes.csv"
        if not csv.is_file():
            return {}
        meta = csv.with_suffix(".json")
        try:
            classes = json.loads(meta.read_text())["classes"] if meta.is_file() else None
            attrs = Attributes.from_csv(csv, classes=classes)
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return {}
        values = np.asarray(attrs.values)
        return {n: float(np.bincount(values[:, i].astype(np.int64)).max() / len(values))
                for i, n in enumerate(attrs.names) if attrs.is_categorical(i) and len(values)}


def _run_names(runs: Sequence[Path]) -> list[str]:
    """Folder names; a name shared by several runs gets its parent folder in front (parent/name)."""
    names = [p.resolve().name or str(p) for p in runs]
    out = []
    for p, n in zip(runs, names, strict=True):
        out.append(f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n)
    if len(set(out)) < len(out):  # still ambiguous: number them
        out = [f"{n} ({i + 1})" for i, n in enumerate(out)]
    return out


class _Figures:
    """Makes figures into a temporary folder and returns their PNG bytes; failures become notes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def make(self, plot: Callable[..., Path], *args, **kwargs) -> tuple[bytes | None, str]:
        self.count += 1
        out = self.folder / f"fig{self.count}.png"
        try:
            return plot(*args, out=out, **kwargs).read_bytes(), ""
        except (ValueError, KeyError, TypeError, IndexError, OSError, json.JSONDecodeError) as err:
            return None, f"could not draw this figure: {type(err).__name__}: {err}"

    def png(self, file: Path, plot: Callable[..., Path] | None, *args, **kwargs) -> tuple[bytes | None, str]:
        """The PNG the evaluation wrote, else one drawn now (``plot``)."""
        if file.is_file():
            return file.read_bytes(), ""
        if plot is None:
            return None, f"no {file.name}"
        return self.make(plot, *args, **kwargs)


def _figure_or_note(png: bytes | None, err: str, caption: str) -> str:
    return figure(png, caption) if png else (note(err) if err else "")


# ----------------------------------------------------------------------------------------------------
# Reading the results
# ----------------------------------------------------------------------------------------------------
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


def _factor_values(names: Sequence[str], per: Sequence, factors: Sequence[str]) -> list:
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
        out.append(f"{_short(labels[int(col.argmax())])} ({col.max():.2f})" if col.sum() > 0 else None)
    return out


def _union(lists: Iterable[Sequence[str]]) -> list[str]:
    out: list[str] = []
    for names in lists:
        out += [n for n in names if n not in out]
    return out


# ----------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------
def _headline(infos: Sequence[RunInfo]) -> str:
    probes = [i.json.get("probe.json") for i in infos]
    dis = [i.json.get("disentangle.json") for i in infos]
    metrics = {probe_metric(p) for p in probes if p}
    one_metric = next(iter(metrics)) if len(metrics) == 1 else None

    def probe_cell(p):
        if not p:
            return None
        m = probe_metric(p)
        v = p.get("mean", {}).get(m)
        return v if one_metric else f"{fmt_value(v)} {METRIC_LABELS.get(m, m)}"

    def get(d, *keys):
        for k in keys:
            if not isinstance(d, Mapping):
                return None
            d = d.get(k)
        return d

    def chunk_c(d):
        cl = get(d, "chunk_level")
        if not isinstance(cl, Mapping):
            return None
        return "n/a (one group)" if cl.get("completeness") is None else cl["completeness"]

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
            probe_texts.setdefault(f"{p.get('task', '?')} probe, {budget_text(p)}", []).append(info.name)
            epochs.append(f"{info.name}: {epoch_text(p)}")
        if d:
            dis_texts.setdefault(f"disentanglement protocol {protocol_text(d)}", []).append(info.name)
            cl = d.get("chunk_level")
            dis_texts.setdefault(f"chunk level over {len(cl.get('chunk_labels', []))} groups "
                                 f"({cl.get('source', '?')})" if isinstance(cl, Mapping)
                                 else f"chunk level not recorded: rerun `{info.command('disentangle.json')}` for it",
                                 []).append(info.name)
    lines = [tag("li", with_code(f"{', '.join(names)}: {text}")) for text, names in probe_texts.items()]
    if epochs:
        lines.append(tag("li", esc("probe epoch chosen on the validation split: " + "; ".join(epochs))))
    lines += [tag("li", with_code(f"{', '.join(names)}: {text}")) for text, names in dis_texts.items()]
    for info in infos:
        lines += [tag("li", with_code(f"{info.name}: {info.missing_text(r)}"), class_="missing")
                  for r in ("probe.json", "disentangle.json") if r in info.missing_results]
    if lines:
        body += tag("ul", "".join(lines), class_="note")
    return body


def _with_mean(groups: Sequence[Group], means: Mapping[tuple[str, str], object]) -> None:
    """Append the 'mean' row: ``means[group title, column title]`` (None where there is none)."""
    for g in groups:
        for c in g.cols:
            c.values = [*c.values, means.get((g.title, c.title))]


def _per_factor(infos: Sequence[RunInfo], al_sources: Sequence[tuple[str, dict, Path | None]],
                figs: _Figures) -> str:
    """Two tables with factors as rows: the linear probe (beside its figure), and DCI / MIG / chunk / DM t."""
    probed = [i for i in infos if "probe.json" in i.json]
    measured = [i for i in infos if "disentangle.json" in i.json]
    if not probed and not measured:
        return ""
    factors = _union([*(i.json["probe.json"].get("names", []) for i in probed),
                      *(i.json["disentangle.json"].get("factors", []) for i in measured)])
    body = tag("h2", "Per factor")
    if probed:
        body += _probe_table(probed, factors, figs)
    if measured:
        body += _factor_table(measured, factors, al_sources)
    return body


def _probe_table(probed: Sequence[RunInfo], factors: Sequence[str], figs: _Figures) -> str:
    probes = {i.name: i.json["probe.json"] for i in probed}
    groups: list[Group] = []
    chance_cols = [Col(i.name, [c.get(f) for f in factors]) for i in probed
                   if (c := i.chance()) and any(f in c for f in factors)]
    if chance_cols and all(c.values == chance_cols[0].values for c in chance_cols):
        chance_cols = [Col("chance", chance_cols[0].values)]
    if chance_cols:
        groups.append(Group("chance", chance_cols))
    # the headline metric of each probe first (accuracy for multiclass), then the others
    metrics = [m for m in _union([*([probe_metric(p)] for p in probes.values()),
                                  *(p.get("mean", {}) for p in probes.values())]) if m is not None]
    means = {}
    for m in metrics:
        title = f"probe {METRIC_LABELS.get(m, m)}"
        cols = [Col(name, [p.get("per_attribute", {}).get(f, {}).get(m) for f in factors])
                for name, p in probes.items()]
        means.update({(title, name): p.get("mean", {}).get(m) for name, p in probes.items()})
        groups.append(Group(title, cols, "min" if m == "mse" else "max"))
    _with_mean(groups, means)
    table_html = grid_table("factor", [*factors, "mean"], groups, [None] * len(factors) + ["mean"])
    shown = next((m for m in metrics if all(m in p.get("mean", {}) for p in probes.values())), None)
    png, err = figs.make(figures.plot_probe_comparison, probes, metric=shown)
    body = tag("h3", "Linear probe (test split)")
    body += pair(table_html, _figure_or_note(png, err, f"linear probe per factor: {shown}"))
    body += note("A linear layer on the frozen codes, scored on the test split at the epoch chosen on a validation "
                 "split (budgets under 'Results')."
                 + (" Chance: the majority-class share of the test split." if chance_cols else ""))
    for name, p in probes.items():
        body += json_details(p, f"raw probe.json: {name}")
    return body


def _factor_table(measured: Sequence[RunInfo], factors: Sequence[str],
                  al_sources: Sequence[tuple[str, dict, Path | None]]) -> str:
    gbt, mig_cols, tops, means = [], [], [], {}
    for i in measured:
        d = i.json["disentangle.json"]
        names = d.get("factors", [])
        if d.get("dci", {}).get("per_factor_test"):
            gbt.append(Col(i.name, _factor_values(names, d["dci"]["per_factor_test"], factors)))
            means["DCI: GBT test accuracy", i.name] = d["dci"].get("informativeness_test")
        if d.get("mig", {}).get("per_factor"):
            mig_cols.append(Col(i.name, _factor_values(names, d["mig"]["per_factor"], factors)))
            means["MIG", i.name] = d["mig"].get("mig")
        tops.append(Col(i.name, top_chunk(d, factors)))
    groups = [Group("DCI: GBT test accuracy", gbt, "max"), Group("MIG", mig_cols, "max"),
              Group("chunk with most importance (share)", [c for c in tops if any(c.values)])]
    lost = []
    for name, data, _ in al_sources:
        crossing, skipped = data.get("crossing_t", {}), data.get("skipped", {})
        lost.append(Col(name, ["no pair" if f in skipped else "never" if f in data.get("factors", [])
                               and crossing.get(f) is None else crossing.get(f) for f in factors]))
    groups.append(Group("DM loses it at t", lost))
    _with_mean(groups, means)
    table_html = grid_table("factor", [*factors, "mean"], groups, [None] * len(factors) + ["mean"])
    old = [i.name for i in measured if not i.json["disentangle.json"].get("dci", {}).get("per_factor_test")]
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
    group = Group(title, [Col(_header_html(c), [float(v) for v in m[g]], html_title=True)
                          for g, c in enumerate(cols)], "max", shade=True)
    return grid_table(corner, rows, [group])


def _where(infos: Sequence[RunInfo], figs: _Figures) -> str:
    from .runs import plot_alignment

    measured = [i for i in infos if "disentangle.json" in i.json]
    if not measured:
        return ""
    body = tag("h2", "Where each factor lives in z")
    body += note("Share of each factor's DCI importance held by each chunk (rows sum to 1 over the chunks), and "
                 "per stage the share and the accuracy of a linear probe on that stage's dims alone. DiTi's claim: "
                 "each chunk carries the factors the frozen DM loses in its t-range.")
    for info in measured:
        d = info.json["disentangle.json"]
        factors = d.get("factors", [])
        body += tag("h3", esc(info.name))
        cl = d.get("chunk_level")
        if isinstance(cl, Mapping):
            c = cl.get("completeness")
            sc = cl.get("stage_completeness")
            body += note(f"chunk level ({cl.get('source', '?')}): D {fmt_value(cl.get('disentanglement'))}, C "
                         f"{'n/a (one group)' if c is None else fmt_value(c)}; stage level: D "
                         f"{fmt_value(cl.get('stage_disentanglement'))}, C "
                         f"{'n/a (one group)' if sc is None else fmt_value(sc)}; protocol {protocol_name(d)}")
        else:
            body += note(f"chunk- and stage-level D / C not recorded; protocol {OLD_PROTOCOL}")
        cm = chunk_matrix(d)
        chunk_html = ""
        if cm is not None and len(cm[1]) > 1 and cm[1].shape[1] == len(factors):  # (one chunk: all 1)
            chunk_html = _matrix_table("factor", factors, cm[0], cm[1], "share of importance per chunk")
        al = d.get("alignment", {})
        stage_groups = []
        labels = al.get("group_labels", [])
        share, acc = al.get("group_importance_share"), al.get("group_probe_accuracy")
        same_as_chunks = al.get("group_dim_ranges") == al.get("chunk_dim_ranges")
        for title, matrix in (("share of importance per stage", None if same_as_chunks else share),
                              ("probe accuracy from the stage's dims alone", acc)):
            if not matrix:
                continue
            m = np.asarray(matrix, dtype=float)
            if m.shape != (len(labels), len(factors)):
                continue
            stage_groups.append(Group(title, [Col(_header_html(lb), [float(v) for v in m[g]], html_title=True)
                                              for g, lb in enumerate(labels)], "max", shade=True))
        stage_html = grid_table("factor", factors, stage_groups) if stage_groups else ""
        png, err = figs.png(info.eval_folder / "alignment.png",
                            lambda out, d=d, name=info.name: plot_alignment(d, out, name))
        fig = _figure_or_note(png, err, f"{info.name}: alignment.png (per stage)")
        body += pair(chunk_html + stage_html, fig)
        body += json_details(d, f"raw disentangle.json: {info.name}")
    return body


def _fidelity(infos: Sequence[RunInfo]) -> str:
    present = [i for i in infos if "fidelity.json" in i.json]
    missing = [i for i in infos if "fidelity.json" in i.missing_results]
    if not present:
        return ""
    body = tag("h2", "Counterfactual fidelity")
    body += note("Each dim group of z is swapped from a source image into a target, the result is decoded and a "
                 "factor classifier trained on real images names its factors. Takes source: P(classified as the "
                 "source's value | source and target differ in the factor); keeps target: the same for the "
                 "target's value. Ceiling: the classifier's accuracy on plain DDIM reconstructions; real images: on "
                 "the targets themselves; pairs: (source, target) pairs that differ in the factor.")
    for info in present:
        f = info.json["fidelity.json"]
        factors, labels = f.get("factor_names", []), f.get("group_labels", [])
        body += tag("h3", esc(info.name))
        clf = f.get("classifier", {})
        text = f"{f.get('num_pairs', '?')} pairs, {f.get('num_steps', '?')} DDIM steps, seed {f.get('seed', '?')}"
        if isinstance(clf, Mapping) and "mean_test_accuracy" in clf:
            text += f"; factor classifier: mean test accuracy {fmt_value(clf['mean_test_accuracy'])}"
            epochs, rows = clf.get("epochs"), clf.get("num_train")
            if epochs is not None and rows is not None:
                text += f" ({epochs} epoch{'' if epochs == 1 else 's'} on {fmt_value(rows)} images)"
        body += note(text)
        groups = []
        for title, key in (("takes source", "takes_source"), ("keeps target", "keeps_target")):
            m = f.get(key) or []
            if len(m) == len(labels) and all(len(r) == len(factors) for r in m):
                groups.append(Group(title, [Col(_header_html(lb), list(m[g]), html_title=True)
                                            for g, lb in enumerate(labels)], "max" if key == "takes_source" else None,
                                    shade=True))
        for title, key in (("ceiling", "reconstruction_accuracy"), ("real images", "real_accuracy"),
                           ("pairs", "num_differ")):
            v = f.get(key)
            if isinstance(v, list) and len(v) == len(factors):
                groups.append(Group(title, [Col(title, list(v))], shade=key != "num_differ"))
        table_html = grid_table("factor", factors, groups) if groups else ""
        own = info.eval_folder / "fidelity.png"
        body += pair(table_html, figure(own.read_bytes(), f"{info.name}: fidelity.png") if own.is_file() else "")
        body += json_details(f, f"raw fidelity.json: {info.name}")
    for info in missing:
        body += missing_note(f"{info.name}: {info.missing_text('fidelity.json')}")
    return body


def _attribute_loss(sources: Sequence[tuple[str, dict, Path | None]], figs: _Figures) -> str:
    if not sources:
        return ""
    first = sources[0][1]
    factors = _union([first.get("order") or first.get("factors", []),
                      *(s[1].get("order") or s[1].get("factors", []) for s in sources[1:])])
    groups = []
    for name, data, _ in sources:
        crossing, interp = data.get("crossing_t", {}), data.get("crossing_t_interp", {})
        skipped, pairs = data.get("skipped", {}), data.get("num_pairs", {})
        measured = data.get("factors", [])

        def cell(f, table, measured=measured, skipped=skipped):
            if f in skipped:
                return "no pair"
            return ("never" if table.get(f) is None else table[f]) if f in measured else None

        cols = [Col("first t", [cell(f, crossing) for f in factors]),
                Col("t (interpolated)", [cell(f, interp) for f in factors]),
                Col("pairs", [pairs.get(f) for f in factors])]
        groups.append(Group(name, cols) if len(sources) > 1 else Group("", cols))
    if len(sources) == 1:  # one source: plain columns
        groups = [Group(c.title, [c]) for c in groups[0].cols]
    table_html = grid_table("factor (first lost first)", factors, groups)
    figs_html = ""
    for name, data, png_path in sources:
        if png_path is not None and png_path.is_file():
            png, err = png_path.read_bytes(), ""
        else:
            png, err = figs.make(figures.plot_attribute_loss, data, title=f"{name}: attribute loss")
        figs_html += _figure_or_note(png, err, f"{name}: Err(x0, y0, t) per factor")
    thresholds = ", ".join(sorted({fmt_value(s[1].get("threshold")) for s in sources}))
    body = tag("h2", "Attribute loss against time-step (frozen DM)")
    body += note(f"Err(x0, y0, t) for pairs that differ in one factor: 0 while the DM still recovers the factor "
                 f"from x_t, 1/2 once it is lost. First t: the first grid step where Err reaches {thresholds}; "
                 "interpolated: the same point between grid steps. Rows: factors in the order the first source "
                 "loses them.")
    body += pair(table_html, figs_html)
    for name, data, _ in sources:
        body += json_details(data, f"raw attribute_loss.json: {name}")
    return body


def _eval_figures(infos: Sequence[RunInfo]) -> str:
    """Counterfactual grids and every other PNG of RUN/eval/, runs side by side (same-named figures)."""
    by_name: dict[str, dict[str, Path]] = {}
    for info in infos:
        for p in info.eval_pngs:
            if p.name not in SECTION_PNGS:
                by_name.setdefault(p.name, {})[info.name] = p
    # runs with evaluations but no counterfactual grid are told how to make one
    expecting = [i for i in infos if i.json and not i.results_only and i.meta.get("kind") != "pretrain"]
    if not by_name and not expecting:
        return ""
    out = [tag("h2", "Counterfactuals and other figures")]
    if "counterfactual.png" not in by_name:
        out += [missing_note(f"{i.name}: no counterfactual.png: run `{i.command('counterfactual.png')}`")
                for i in expecting]
    order = sorted(by_name, key=lambda n: (not n.startswith("counterfactual"), n))
    for file in order:
        per_run = by_name[file]
        cells = []
        for info in infos:
            p = per_run.get(info.name)
            if p is not None:
                cells.append(tag("h3", esc(info.name)) + figure(p.read_bytes(), f"{info.name}: {file}"))
            elif file == "counterfactual.png" and info in expecting:
                cells.append(tag("h3", esc(info.name)) + missing_note(f"no {file}: run `{info.command(file)}`"))
            else:
                cells.append(tag("h3", esc(info.name)) + note(f"no {file}"))
        out.append(tag("h3", esc(file)) + columns(cells))
    return "".join(out)


def _overview(infos: Sequence[RunInfo]) -> str:
    def cfg(info: RunInfo, getter: Callable) -> object:
        try:
            return getter(info.config) if info.config is not None else None
        except AttributeError:
            return None

    def records(info: RunInfo) -> list[dict]:
        file = info.path / "metrics.jsonl"
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
        ("checkpoints", lambda i: len(list_checkpoints(i.path / "checkpoints"))
         if (i.path / "checkpoints").is_dir() else None),
    ]
    rows = [(label, [get(i) for i in infos]) for label, get in fields]
    rows = [(label, values) for label, values in rows if any(v is not None for v in values)]
    groups = [Group(i.name, [Col(i.name, [values[j] for _, values in rows])], text_left=True)
              for j, i in enumerate(infos)]
    table_html = grid_table("", [label for label, _ in rows], groups)
    parts = [tag("h3", esc(f"partition: {i.name}")) + tag("pre", esc(i.partition.format_table()))
             for i in infos if i.partition is not None]
    return tag("h2", "Runs") + pair(table_html, "".join(parts))


def _training(infos: Sequence[RunInfo], figs: _Figures) -> str:
    plots = (("training loss", "metrics.jsonl", figures.plot_training_loss),
             ("loss per time-step", "loss_per_t.json", figures.plot_loss_per_t))
    trained = [i for i in infos if any((i.path / file).is_file() for _, file, _ in plots)]
    if not trained:
        return ""
    out = [tag("h2", "Training")]
    for info in trained:
        cells = []
        for title, file, plot in plots:
            if (info.path / file).is_file():
                png, err = figs.make(plot, info.path / file, title=f"{info.name}: {title}")
                cells.append(_figure_or_note(png, err, f"{info.name}: {file}"))
            else:
                cells.append(note(f"no {file}"))
        out.append(tag("h3", esc(info.name)) + columns(cells))
    return "".join(out)


def _other_json(infos: Sequence[RunInfo]) -> str:
    present = [i for i in infos if i.other_json]
    if not present:
        return ""
    cells = [tag("h3", esc(i.name)) + "".join(_json_file_block(p) for p in i.other_json) for i in present]
    return tag("h2", "Other results in eval/") + "".join(cells)


def _extra_dir(folder: Path, used: set[Path]) -> str:
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
    out += [_json_file_block(p) for p in jsons]
    if used & set(folder.iterdir()):
        out.append(note("attribute_loss.json and its figure are shown in the section 'Attribute loss'"))
    elif not (pngs or texts or jsons):
        out.append(note("no PNG, JSON, .md or .txt file in this folder"))
    return "".join(out)


def _missing(infos: Sequence[RunInfo]) -> str:
    items = []
    for i in infos:
        parts = [esc(m) for m in i.missing] + [with_code(i.missing_text(r)) for r in i.missing_results]
        if parts:
            items.append(tag("li", esc(f"{i.name}: ") + "; ".join(parts)))
    if not items:
        return ""
    return tag("h2", "Not found") + tag("ul", "".join(items), class_="note")


def _attribute_loss_sources(infos: Sequence[RunInfo], extra_dirs: Sequence[Path]
                            ) -> tuple[list[tuple[str, dict, Path | None]], set[Path]]:
    """(name, attribute_loss.json, its PNG) from the runs and the extra folders; the extra files used."""
    sources, used = [], set()
    for info in infos:
        if "attribute_loss.json" in info.json:
            sources.append((info.name, info.json["attribute_loss.json"], info.eval_folder / "attribute_loss.png"))
    for folder in extra_dirs:
        file = folder / "attribute_loss.json"
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError:
            continue  # shown as invalid JSON in the extra folder's section
        sources.append((folder.name, data, folder / "attribute_loss.png"))
        used |= {file, folder / "attribute_loss.png"}
    return sources, used


# ----------------------------------------------------------------------------------------------------
def write_report(
    runs: Iterable[str | Path], out: str | Path, extra_dirs: Iterable[str | Path] = (), title: str | None = None
) -> Path:
    """Write the HTML report of ``runs`` (``diti train`` / ``diti pretrain`` run folders) to ``out``."""
    runs = [Path(r) for r in runs]
    if not runs:
        raise ValueError("write_report needs at least one run folder")
    absent = [str(r) for r in runs if not r.is_dir()]
    if absent:
        raise FileNotFoundError(f"run folder(s) not found: {', '.join(absent)}")
    out = Path(out)
    extra_dirs = [Path(d) for d in extra_dirs]
    infos = [RunInfo(p, n) for p, n in zip(runs, _run_names(runs), strict=True)]
    title = title or "diti report: " + " vs ".join(i.name for i in infos)
    al_sources, used = _attribute_loss_sources(infos, extra_dirs)
    with tempfile.TemporaryDirectory(prefix="diti-report-") as tmp:
        figs = _Figures(Path(tmp))
        sections = [
            _headline(infos),
            _per_factor(infos, al_sources, figs),
            _where(infos, figs),
            _fidelity(infos),
            _attribute_loss(al_sources, figs),
            _eval_figures(infos),
            _overview(infos),
            _training(infos, figs),
            _other_json(infos),
            *(_extra_dir(d, used) for d in extra_dirs),
            _missing(infos),
        ]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    head = '<meta charset="utf-8">' + '<meta name="viewport" content="width=device-width, initial-scale=1">'
    head += tag("title", esc(title)) + tag("style", CSS)
    body = tag("h1", esc(title)) + note(f"written {stamp} by diti {__version__}") + "".join(s for s in sections if s)
    page = "<!DOCTYPE html>\n" + tag("html", tag("head", head) + tag("body", body), lang="en") + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out

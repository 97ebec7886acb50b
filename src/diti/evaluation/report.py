"""One self-contained HTML page summarising one or more runs: ``write_report`` behind ``diti report``.

For each run folder it shows whatever the run has: the overview (meta.json, config.yaml), the training loss,
the per-time-step loss, the partition, and the evaluations in ``RUN/eval/`` (probe.json, disentangle.json,
fidelity.json, attribute_loss.json and every PNG). With several runs each section puts the runs side by side,
a column per run, so that e.g. DiTi vs PDAE reads at a glance. Missing pieces are skipped and listed.

The page is plain HTML5: figures are base64 data URIs, the CSS is inline, there is no script and nothing
remote, so the file can be mailed or archived alone. All text goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import ConfigError, DiTiConfig, PretrainConfig
from ..training.checkpoint import list_checkpoints
from ..training.run import read_meta, read_run_config
from . import figures

EVAL_DIR = "eval"
# Files of RUN/eval/ with their own section (everything else: PNGs in "Figures", JSON in "Other results").
KNOWN_JSON = ("probe.json", "disentangle.json", "fidelity.json", "attribute_loss.json")
MAX_JSON_CHARS = 200_000  # a JSON file shown verbatim is cut here

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1500px;
       padding: 0 1em; color: #222; font-size: 14px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1em; margin: 0.6em 0 0.3em; }
.cols { display: grid; gap: 1em; align-items: start; }
.col { min-width: 0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.label, th.label { text-align: left; }
td.best { font-weight: bold; background: #eef6ee; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.85em; }
.note { color: #777; font-size: 0.9em; }
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


def note(text: str) -> str:
    return tag("p", esc(text), class_="note")


def columns(cells: Sequence[str]) -> str:
    """Side-by-side columns (one per run)."""
    body = "".join(tag("div", c, class_="col") for c in cells)
    return tag("div", body, class_="cols", style=f"grid-template-columns: repeat({max(1, len(cells))}, minmax(0, 1fr));")


def fmt_value(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3):
            return f"{v:.4g}"
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"
    return str(v)


def table(header: Sequence[str], rows: Sequence[Sequence[object]], best: Sequence[str | None] | None = None) -> str:
    """A table whose first column is a label. ``best[i]`` ('max' or 'min') bolds the best number of row i."""
    head = tag("tr", "".join(tag("th", esc(h), class_="label" if j == 0 else None) for j, h in enumerate(header)))
    lines = [head]
    for i, row in enumerate(rows):
        numbers = [v for v in row[1:] if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(v)]
        rule = best[i] if best is not None else None
        # no highlight when there is nothing to choose between (one number, or all equal)
        target = (max if rule == "max" else min)(numbers) if rule and len(set(numbers)) > 1 else None
        cells = [tag("td", esc(row[0]), class_="label")]
        for v in row[1:]:
            cells.append(tag("td", esc(fmt_value(v)), class_="best" if target is not None and v == target else None))
        lines.append(tag("tr", "".join(cells)))
    return tag("table", "".join(lines))


def flatten(data: object, prefix: str = "", max_list: int = 64) -> dict[str, object]:
    """Scalar leaves of nested JSON as {'a.b[2]': value}; long lists and lists of lists are left out."""
    out: dict[str, object] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k), max_list))
    elif isinstance(data, list):
        if len(data) <= max_list and all(not isinstance(v, (list, dict)) for v in data):
            for i, v in enumerate(data):
                out[f"{prefix}[{i}]"] = v
    else:
        out[prefix] = data
    return out


def lower_is_better(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in ("mse", "loss", "error", "lpips", "fid"))


def best_rule(key: str) -> str | None:
    """'max' or 'min' for a score named ``key``; None for counts and sizes (no better or worse)."""
    if any(word in key.lower() for word in ("num_", "count", "epoch", "dims", "size", "seed")):
        return None
    return "min" if lower_is_better(key) else "max"


# ----------------------------------------------------------------------------------------------------
# Reading a run
# ----------------------------------------------------------------------------------------------------
class RunInfo:
    """What one run folder holds; ``missing`` lists what was looked for and not found (or not readable)."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self.name = name
        self.missing: list[str] = []
        self.meta: dict = {}
        self.config = None
        self.partition = None
        self.json: dict[str, dict] = {}
        self.eval_pngs: list[Path] = []
        self.other_json: list[Path] = []
        self._read()

    def _read(self) -> None:
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
                self.missing.append(name)
        folder = self.path / EVAL_DIR
        for name in KNOWN_JSON:
            file = folder / name
            if not file.is_file():
                if folder.is_dir():  # (without eval/ at all, one note below says so)
                    self.missing.append(f"{EVAL_DIR}/{name}")
                continue
            try:
                self.json[name] = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                self.missing.append(f"{EVAL_DIR}/{name} (invalid JSON: {err})")
        if folder.is_dir():
            self.eval_pngs = sorted(folder.glob("*.png"))
            self.other_json = sorted(p for p in folder.glob("*.json") if p.name not in KNOWN_JSON)
        else:
            self.missing.append(f"{EVAL_DIR}/ (no evaluation yet: no probe, disentanglement, fidelity, attribute loss)")


def _run_names(runs: Sequence[Path]) -> list[str]:
    """Folder names; a name shared by several runs gets its parent folder in front (parent/name)."""
    names = [p.name for p in runs]
    out = []
    for p, n in zip(runs, names, strict=True):
        out.append(f"{p.parent.name}/{n}" if names.count(n) > 1 else n)
    if len(set(out)) < len(out):  # still ambiguous: number them
        out = [f"{n} ({i + 1})" for i, n in enumerate(out)]
    return out


# ----------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------
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
        except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError) as err:
            return None, f"could not draw this figure: {type(err).__name__}: {err}"


def _overview(infos: Sequence[RunInfo]) -> str:
    def cfg(info: RunInfo, getter: Callable) -> object:
        try:
            return getter(info.config) if info.config is not None else None
        except AttributeError:
            return None

    def last_metric(info: RunInfo, key: str) -> object:
        file = info.path / "metrics.jsonl"
        if not file.is_file():
            return None
        rows = [r for r in figures._records(file) if key in r]
        return rows[-1][key] if rows else None

    def median_speed(info: RunInfo) -> object:
        file = info.path / "metrics.jsonl"
        speeds = [r["img_per_s"] for r in figures._records(file) if isinstance(r.get("img_per_s"), (int, float))] \
            if file.is_file() else []
        return float(np.median(speeds)) if speeds else None

    fields: list[tuple[str, Callable[[RunInfo], object]]] = [
        ("path", lambda i: str(i.path)),
        ("kind", lambda i: i.meta.get("kind")),
        ("created", lambda i: i.meta.get("created")),
        ("diti version", lambda i: i.meta.get("diti_version")),
        ("frozen DM", lambda i: cfg(i, lambda c: c.dm)),
        ("data", lambda i: cfg(i, lambda c: c.data.path)),
        ("resolution", lambda i: cfg(i, lambda c: c.data.resolution)),
        ("latent dim d", lambda i: cfg(i, lambda c: c.partition.latent_dim)),
        ("chunks k", lambda i: cfg(i, lambda c: c.partition.k)),
        ("partition mode", lambda i: cfg(i, lambda c: c.partition.mode)),
        ("decoder init", lambda i: cfg(i, lambda c: c.decoder.init)),
        ("encoder init", lambda i: cfg(i, lambda c: c.encoder.init)),
        ("steps (config)", lambda i: cfg(i, lambda c: c.train.steps)),
        ("batch size", lambda i: cfg(i, lambda c: c.train.batch_size)),
        ("lr", lambda i: cfg(i, lambda c: c.train.lr)),
        ("last logged step", lambda i: last_metric(i, "step")),
        ("last logged loss", lambda i: last_metric(i, "loss")),
        ("median img/s", median_speed),
        ("checkpoints", lambda i: len(list_checkpoints(i.path / "checkpoints"))
         if (i.path / "checkpoints").is_dir() else 0),
    ]
    rows = [[label, *(get(i) for i in infos)] for label, get in fields]
    rows = [r for r in rows if any(v is not None for v in r[1:])]
    return tag("h2", "Runs") + table(["", *(i.name for i in infos)], rows)


def _training(infos: Sequence[RunInfo], figs: _Figures) -> str:
    out = []
    for title, file, plot in (("Training loss", "metrics.jsonl", figures.plot_training_loss),
                              ("Training loss per time-step", "loss_per_t.json", figures.plot_loss_per_t)):
        if not any((i.path / file).is_file() for i in infos):
            continue
        cells = []
        for info in infos:
            cell = tag("h3", esc(info.name))
            if (info.path / file).is_file():
                png, err = figs.make(plot, info.path / file, title=f"{info.name}: {title.lower()}")
                cell += figure(png, f"{info.name}: {file}") if png else note(err)
            else:
                cell += note(f"no {file}")
            cells.append(cell)
        out.append(tag("h2", esc(title)) + columns(cells))
    return "".join(out)


def _partition(infos: Sequence[RunInfo]) -> str:
    if not any(i.partition is not None for i in infos):
        return ""
    cells = []
    for info in infos:
        body = tag("pre", esc(info.partition.format_table())) if info.partition is not None else note("no partition")
        cells.append(tag("h3", esc(info.name)) + body)
    return tag("h2", "Partition of z over time-steps") + columns(cells)


def _probe(infos: Sequence[RunInfo], figs: _Figures) -> str:
    """One table per metric (a column per run, the best run in bold) and the grouped-bar comparison."""
    probes = {i.name: i.json["probe.json"] for i in infos if "probe.json" in i.json}
    if not probes:
        return ""
    runs = list(probes)
    metrics: list[str] = []
    names: list[str] = []
    for p in probes.values():
        metrics += [m for m in p.get("mean", {}) if m not in metrics]
        names += [n for n in p.get("names", []) if n not in names]
    body = tag("h2", "Linear probe (test split)")
    body += note("task: " + ", ".join(f"{r}: {probes[r].get('task', '?')}" for r in runs)
                 + "; epoch chosen on the validation split: "
                 + ", ".join(f"{r}: {probes[r].get('best_epoch', '?')}" for r in runs))
    tables = []
    for m in metrics:
        rows = [[n, *(probes[r].get("per_attribute", {}).get(n, {}).get(m) for r in runs)] for n in names]
        rows.append(["mean", *(probes[r].get("mean", {}).get(m) for r in runs)])
        tables.append(tag("h3", esc(m)) + table(["attribute", *runs], rows, [best_rule(m)] * len(rows)))
    body += columns(tables)
    png, err = figs.make(figures.plot_probe_comparison, probes)
    return body + (figure(png, "probe comparison (first metric)") if png else note(err))


def _json_table(infos: Sequence[RunInfo], file: str, title: str, lead: str = "") -> str:
    present = [i for i in infos if file in i.json]
    if not present:
        return ""
    flat = {i.name: flatten(i.json[file]) for i in present}
    keys: list[str] = []
    for f in flat.values():
        keys += [k for k in f if k not in keys]
    rows = [[k, *(flat[i.name].get(k) for i in present)] for k in keys]
    best = [best_rule(k) if all(
        isinstance(flat[i.name].get(k), (int, float)) for i in present) else None for k in keys]
    return tag("h2", esc(title)) + (note(lead) if lead else "") + table(["", *(i.name for i in present)], rows, best)


def _attribute_loss(infos: Sequence[RunInfo], figs: _Figures) -> str:
    present = [i for i in infos if "attribute_loss.json" in i.json]
    if not present:
        return ""
    results = {i.name: i.json["attribute_loss.json"] for i in present}
    factors: list[str] = []
    for r in results.values():
        factors += [f for f in r.get("order") or r.get("factors", []) if f not in factors]
    def crossing(r: dict, f: str) -> object:
        if f not in r.get("factors", []):
            return None  # not measured for this run (or skipped: no pair)
        t = r.get("crossing_t", {}).get(f)
        return "never" if t is None else t

    rows = [[f, *(crossing(r, f) for r in results.values())] for f in factors]
    rows.append(["order (first lost first)", *(", ".join(r.get("order", [])) for r in results.values())])
    thresholds = {r.get("threshold") for r in results.values()}
    body = tag("h2", "Attribute loss vs time-step (frozen DM)")
    body += note("first time-step t at which Err(x0, y0, t) reaches the threshold "
                 f"({', '.join(str(t) for t in thresholds)}); fine attributes should be lost first")
    body += table(["factor", *results], rows)
    cells = []
    for info in present:
        own = info.path / EVAL_DIR / "attribute_loss.png"
        if own.is_file():
            png, err = own.read_bytes(), ""
        else:
            png, err = figs.make(figures.plot_attribute_loss, results[info.name], title=f"{info.name}: attribute loss")
        cells.append(tag("h3", esc(info.name)) + (figure(png, f"{info.name}: attribute loss") if png else note(err)))
    return body + columns(cells)


def _eval_figures(infos: Sequence[RunInfo]) -> str:
    """Every PNG in RUN/eval/, a row per file name and a column per run (same-named figures side by side)."""
    used = {"attribute_loss.png"}
    by_name: dict[str, dict[str, Path]] = {}
    for info in infos:
        for p in info.eval_pngs:
            if p.name not in used:
                by_name.setdefault(p.name, {})[info.name] = p
    if not by_name:
        return ""
    out = [tag("h2", "Evaluation figures")]
    for file, per_run in by_name.items():
        cells = []
        for info in infos:
            p = per_run.get(info.name)
            cells.append(tag("h3", esc(info.name)) + (figure(p.read_bytes(), f"{info.name}: {file}") if p
                                                      else note(f"no {file}")))
        out.append(tag("h3", esc(file)) + columns(cells))
    return "".join(out)


def _json_block(path: Path) -> str:
    try:
        text = json.dumps(json.loads(path.read_text()), indent=2)
    except json.JSONDecodeError as err:
        return note(f"{path.name}: invalid JSON ({err})")
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + f"\n... (cut at {MAX_JSON_CHARS} characters)"
    return tag("details", tag("summary", esc(path.name)) + tag("pre", esc(text)))


def _other_json(infos: Sequence[RunInfo]) -> str:
    present = [i for i in infos if i.other_json]
    if not present:
        return ""
    cells = [tag("h3", esc(i.name)) + "".join(_json_block(p) for p in i.other_json) for i in present]
    return tag("h2", "Other results in eval/") + columns(cells)


def _extra_dir(folder: Path) -> str:
    out = [tag("h2", esc(f"Extra: {folder}"))]
    if not folder.is_dir():
        return out[0] + note("folder not found")
    pngs = sorted(folder.glob("*.png"))
    texts = sorted(p for p in folder.iterdir() if p.suffix in (".md", ".txt") and p.is_file())
    jsons = sorted(folder.glob("*.json"))
    for p in pngs:
        out.append(figure(p.read_bytes(), p.name))
    for p in texts:
        out.append(tag("h3", esc(p.name)) + tag("pre", esc(p.read_text()[:MAX_JSON_CHARS])))
    out += [_json_block(p) for p in jsons]
    if not (pngs or texts or jsons):
        out.append(note("no PNG, JSON, .md or .txt file in this folder"))
    return "".join(out)


def _missing(infos: Sequence[RunInfo]) -> str:
    items = [tag("li", esc(f"{i.name}: " + "; ".join(i.missing))) for i in infos if i.missing]
    if not items:
        return ""
    return tag("h2", "Not found") + tag("ul", "".join(items), class_="note")


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
    infos = [RunInfo(p, n) for p, n in zip(runs, _run_names(runs), strict=True)]
    title = title or "diti report: " + " vs ".join(i.name for i in infos)
    with tempfile.TemporaryDirectory(prefix="diti-report-") as tmp:
        figs = _Figures(Path(tmp))
        sections = [
            _overview(infos),
            _training(infos, figs),
            _partition(infos),
            _probe(infos, figs),
            _json_table(infos, "disentangle.json", "Disentanglement",
                        "DCI, MIG and FactorVAE scores on the known factors (higher is better)"),
            _json_table(infos, "fidelity.json", "Fidelity"),
            _attribute_loss(infos, figs),
            _eval_figures(infos),
            _other_json(infos),
            *(_extra_dir(Path(d)) for d in extra_dirs),
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

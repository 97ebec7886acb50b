"""HTML building blocks of the report: escaping, tags, tables with grouped columns, figures, raw JSON.

All text goes through ``html.escape``; figures are base64 data URIs; there is no script and nothing remote.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_JSON_CHARS = 1_000_000  # a JSON file shown verbatim is cut here (the page says so)

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


def number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def short_label(label: str) -> str:
    """'chunk 3: t 0-249, dims 0-3' -> 'chunk 3'."""
    return label.split(":", 1)[0]


def header_html(label: str) -> str:
    """A group label over a few lines: the name, then its t-range and dims."""
    head, _, rest = label.partition(": ")
    lines = [head, *(re.split(r", (?=dims |no dims)| (?=\()", rest) if rest else [])]
    return "<br>".join(esc(line) for line in lines)


def _shade(v: object) -> str | None:
    """Background for a value in [0, 1] (a share, an accuracy): the matrix reads as a heatmap."""
    x = number(v)
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
            col_target[gi, ci] = _target([x for x in map(number, c.values) if x is not None], c.best)
    for r, label in enumerate(row_labels):
        cells = [tag("td", esc(label), class_="label")]
        for gi, g in enumerate(groups):
            values = [c.values[r] for c in g.cols]
            row_best = _target([x for x in map(number, values) if x is not None], g.best)
            for ci, v in enumerate(values):
                x = number(v)
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


def json_file_block(path: Path) -> str:
    try:
        return json_details(json.loads(path.read_text()), f"raw {path.name}")
    except json.JSONDecodeError as err:
        return note(f"{path.name}: invalid JSON ({err})")



class Figures:
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


def figure_or_note(png: bytes | None, err: str, caption: str) -> str:
    return figure(png, caption) if png else (note(err) if err else "")


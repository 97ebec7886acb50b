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

import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from ... import __version__
from .files import eval_figures, extra_dir, missing, other_json, overview, training
from .folders import RunInfo, run_names
from .html import CSS, Figures, esc, note, tag
from .results import attribute_loss, attribute_loss_sources, fidelity, headline, per_factor, where

__all__ = ["write_report"]


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
    infos = [RunInfo(p, n) for p, n in zip(runs, run_names(runs), strict=True)]
    title = title or "diti report: " + " vs ".join(i.name for i in infos)
    al_sources, used = attribute_loss_sources(infos, extra_dirs)
    with tempfile.TemporaryDirectory(prefix="diti-report-") as tmp:
        figs = Figures(Path(tmp))
        sections = [
            headline(infos),
            per_factor(infos, al_sources, figs),
            where(infos, figs),
            fidelity(infos),
            attribute_loss(al_sources, figs),
            eval_figures(infos),
            overview(infos),
            training(infos, figs),
            other_json(infos),
            *(extra_dir(d, used) for d in extra_dirs),
            missing(infos),
        ]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    head = '<meta charset="utf-8">' + '<meta name="viewport" content="width=device-width, initial-scale=1">'
    head += tag("title", esc(title)) + tag("style", CSS)
    body = tag("h1", esc(title)) + note(f"written {stamp} by diti {__version__}") + "".join(s for s in sections if s)
    page = "<!DOCTYPE html>\n" + tag("html", tag("head", head) + tag("body", body), lang="en") + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out

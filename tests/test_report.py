"""The HTML report and the figures it embeds, on run folders written by hand (no training).

The evaluation JSON comes from the functions that write it in the pipeline (``linear_probe``,
``disentangle_features``, ``AttributeLossResult``, ``FidelityResult``) on small synthetic codes, so the report
is tested on the real schemas; one test writes the schema of files made before 2026-12-01.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diti.config import DiTiConfig, build_config
from diti.data import Attributes
from diti.evaluation import figures
from diti.evaluation.attribute_loss import AttributeLossResult
from diti.evaluation.features import save_features
from diti.evaluation.fidelity import FidelityResult
from diti.evaluation.probe import linear_probe
from diti.evaluation.report import write_report
from diti.evaluation.report.html import fmt_value
from diti.evaluation.report.reading import OLD_PROTOCOL
from diti.evaluation.report.results import _matrix_table
from diti.evaluation.runs import disentangle_features
from diti.folders import write_run_files
from diti.partition import Partition

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
NAMES = ["background_color", "shape", "texture"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


class PageParser(HTMLParser):
    """Checks nesting and records the page's tables (cell texts and classes), images, details blocks and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.imgs: list[dict] = []
        self.text: list[str] = []
        self.doctype = None
        self.heading = ""  # the last h2/h3 text
        self.tables: list[dict] = []  # {"heading", "rows": [[(text, class, "td" or "th"), ...]]}
        self.details: list[dict] = []  # {"summary", "pre"}
        self._cell: list[str] | None = None
        self._cell_class = None
        self._in_heading = False
        self._summary: list[str] | None = None
        self._pre: list[str] | None = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, name, attrs):
        attrs = dict(attrs)
        if name == "img":
            self.imgs.append(attrs)
        if name in ("h2", "h3"):
            self._in_heading, self.heading = True, ""
        if name == "table":
            self.tables.append({"heading": self.heading, "rows": []})
        if name == "tr":
            self.tables[-1]["rows"].append([])
        if name in ("td", "th"):
            self._cell, self._cell_class = [], attrs.get("class")
        if name == "details":
            self.details.append({"summary": "", "pre": ""})
        if name == "summary":
            self._summary = []
        if name == "pre" and "details" in self.stack:
            self._pre = []
        if name == "br" and self._cell is not None:
            self._cell.append(" ")
        if name not in VOID:
            self.stack.append(name)

    def handle_endtag(self, name):
        if not self.stack or self.stack[-1] != name:
            self.problems.append(f"</{name}> closes {self.stack[-1] if self.stack else 'nothing'}")
            return
        self.stack.pop()
        if name in ("h2", "h3"):
            self._in_heading = False
        if name in ("td", "th"):
            self.tables[-1]["rows"][-1].append(("".join(self._cell), self._cell_class, name))
            self._cell = None
        if name == "summary":
            self.details[-1]["summary"], self._summary = "".join(self._summary), None
        if name == "pre" and self._pre is not None:
            self.details[-1]["pre"], self._pre = "".join(self._pre), None

    def handle_data(self, data):
        self.text.append(data)
        for part in (self._cell, self._summary, self._pre):
            if part is not None:
                part.append(data)
        if self._in_heading:
            self.heading += data

    def table(self, heading: str) -> list[list[tuple[str, str | None]]]:
        """The rows of the first table under the heading that starts with ``heading``."""
        found = [t["rows"] for t in self.tables if t["heading"].startswith(heading)]
        assert found, f"no table under a heading {heading!r}: {[t['heading'] for t in self.tables]}"
        return found[0]


def _parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    parser.close()
    assert not parser.problems, parser.problems[:5]
    assert not parser.stack, f"unclosed: {parser.stack}"
    return parser


def _body_rows(rows):
    """The rows below the header (a header row holds th cells only)."""
    return [r for r in rows if r and r[0][2] == "td"]


# ----------------------------------------------------------------------------------------------------
# Synthetic results, written by the pipeline's own functions
# ----------------------------------------------------------------------------------------------------
def _codes(rng, factors: np.ndarray, mixed: bool) -> np.ndarray:
    """d = 8 codes: chunk i (dims 2i, 2i+1) holds factor i (chunk 3: noise); ``mixed`` rotates all dims."""
    z = rng.normal(0, 0.3, (len(factors), 8))
    for i in range(factors.shape[1]):
        z[:, 2 * i: 2 * i + 2] += factors[:, i:i + 1]
    if mixed:
        z = z @ np.linalg.qr(rng.normal(size=(8, 8)))[0]
    return z.astype(np.float32)


@pytest.fixture(scope="module")
def results():
    """probe.json and disentangle.json of a DiTi-like code (one factor per chunk) and a mixed PDAE-like one."""
    rng = np.random.default_rng(0)
    f_tr, f_te = rng.integers(0, 2, (120, 3)), rng.integers(0, 2, (60, 3))  # binary: one tree per GBT stage
    a_tr, a_te = Attributes(NAMES, f_tr), Attributes(NAMES, f_te)
    out = {}
    for name, k, mixed in (("diti-k4", 4, False), ("pdae", 1, True)):
        z_tr, z_te = _codes(rng, f_tr, mixed), _codes(rng, f_te, mixed)
        probe = linear_probe((z_tr, f_tr), (z_te, f_te), "multiclass", names=NAMES, steps=1000)
        ref = Partition(8, 4, 1000) if k == 1 else None
        dis = disentangle_features((z_tr, a_tr), (z_te, a_te), Partition(8, k, 1000), protocol="fast",
                                   reference_partition=ref, max_groups=4, progress=False, n_jobs=1, steps=1000)
        out[name] = {"probe": probe.to_dict(), "disentangle": dis, "test_attributes": a_te}
    return out


def _attribute_loss() -> dict:
    return AttributeLossResult([0, 500, 999], NAMES, {n: [0.0, 0.1 * (i + 1), 0.5] for i, n in enumerate(NAMES)},
                               {n: [0.0, 0.02, 0.02] for n in NAMES}, dict.fromkeys(NAMES, 8), 0.25, 2, 0).to_dict()


def _fidelity() -> dict:
    g = 4
    labels = [f"chunk {i}: t {250 * i}-{250 * i + 249}, dims {2 * i}-{2 * i + 1}" for i in range(g)]
    return FidelityResult(NAMES, labels,
                          [(2 * i, 2 * i + 2) for i in range(g)], [(250 * i, 250 * i + 249) for i in range(g)],
                          np.eye(g, 3) * 0.8, 1 - np.eye(g, 3) * 0.8, np.array([5, 6, 7]), np.array([0.9, 0.8, 0.7]),
                          np.array([1.0, 0.95, 0.9]), 8, 5, 0).to_dict()


def _make_run(root: Path, name: str, k: int, result: dict | None = None, old_schema: bool = False) -> Path:
    run = root / name
    cfg = build_config(DiTiConfig, "shapes-quick", overrides=[f"partition.k={k}", "partition.latent_dim=8",
                                                              "dm=/somewhere/dm"])
    write_run_files(run, "diti", cfg)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(10, 310, 10):
            f.write(json.dumps({"step": step, "images": step * 32, "loss": 1.0 / step, "lr": 1e-3,
                                "img_per_s": 400.0 + step}) + "\n")
        f.write('{"step": 31')  # a half-written line (a run still training) must not break the report
    counts = np.random.default_rng(0).integers(0, 20, size=1000)
    mean = [None if c == 0 else 0.1 + t / 1000 for t, c in enumerate(counts)]
    (run / "loss_per_t.json").write_text(json.dumps({"t": list(range(1000)), "mean_loss": mean,
                                                     "count": counts.tolist()}))
    if result is None:
        return run
    ev = run / "eval"
    ev.mkdir()
    probe, dis = json.loads(json.dumps(result["probe"])), json.loads(json.dumps(result["disentangle"]))
    if old_schema:  # what diti wrote before 2026-12-01
        probe.pop("budget")
        for key in ("protocol", "chunk_level"):
            dis.pop(key)
        for key in ("per_factor_train", "per_factor_test", "num_train", "num_test"):
            dis["dci"].pop(key)
        dis["alignment"].pop("chunk_labels")
    (ev / "probe.json").write_text(json.dumps(probe, indent=2))
    (ev / "disentangle.json").write_text(json.dumps(dis, indent=2))
    (ev / "fidelity.json").write_text(json.dumps({**_fidelity(), "classifier": {"mean_test_accuracy": 0.93}}))
    (ev / "attribute_loss.json").write_text(json.dumps(_attribute_loss()))
    save_features(ev / "features" / "test.npy", np.zeros((60, 8), np.float32), result["test_attributes"])
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(ev / "counterfactual.png")
    return run


# ----------------------------------------------------------------------------------------------------
def test_report_reads_like_a_results_section(tmp_path, results):
    diti = _make_run(tmp_path, "diti-k4", 4, results["diti-k4"])
    pdae = _make_run(tmp_path, "pdae", 1, results["pdae"])
    extra = tmp_path / "summary"
    extra.mkdir()
    (extra / "summary.json").write_text(json.dumps({"note": "<b>escaped</b>"}))
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(extra / "overview.png")

    out = write_report([diti, pdae], tmp_path / "report" / "index.html", extra_dirs=[extra])
    text = out.read_text()
    page = _parse(text)
    assert text.startswith("<!DOCTYPE html>") and page.doctype.lower() == "doctype html"
    assert '<html lang="en">' in text and '<meta charset="utf-8">' in text
    assert "<script" not in text.lower() and 'src="http' not in text and "href=" not in text
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.imgs)
    body = "".join(page.text)
    assert "could not draw" not in body
    # per run: training loss, loss per t, alignment (drawn: no alignment.png), attribute loss (drawn), the
    # counterfactual grid; the probe comparison; the extra folder's PNG
    assert len(page.imgs) == 2 * 5 + 1 + 1
    # no flattened JSON keys anywhere (the old report's `mig.per_factor[0]`, `alignment.group_labels[3]`)
    assert not re.search(r"[A-Za-z_]\[\d+\]", text) and "mig.per_factor" not in body

    # the headline table comes first: one row per run, the protocol named
    assert page.tables[0]["heading"] == "Results"
    rows = {r[0][0]: [c[0] for c in r[1:]] for r in page.tables[0]["rows"] if r[0][0] in ("diti-k4", "pdae")}
    assert list(rows) == ["diti-k4", "pdae"]
    for name in rows:
        probe, dis = results[name]["probe"], results[name]["disentangle"]
        expected = [probe["mean"]["accuracy"], dis["dci"]["disentanglement"], dis["dci"]["completeness"],
                    dis["dci"]["informativeness_test"], dis["chunk_level"]["disentanglement"],
                    dis["chunk_level"]["completeness"], dis["mig"]["mig"], dis["factor_vae"]["eval_accuracy"]]
        assert [fmt_value(v) for v in expected] == [rows[name][i] for i in (1, 3, 4, 5, 6, 7, 8, 9)], name
        assert rows[name][2] == "1,000 steps" and rows[name][10] == "fast"
        assert rows[name][0] == ("d=8, k=4" if name == "diti-k4" else "d=8, k=1")
    # one factor per chunk beats the rotated code on chunk-level D, and the better run is in bold
    d_chunk = {r[0][0]: r[7] for r in page.tables[0]["rows"] if r[0][0] in rows}
    assert float(d_chunk["diti-k4"][0]) > float(d_chunk["pdae"][0]) and d_chunk["diti-k4"][1] == "best"
    assert "disentanglement protocol fast: DCI's GBT fitted on 120 train codes (at most 2,000)" in body
    assert "votes" in body and "GradientBoostingClassifier(random_state=0) for every factor" in body
    assert "multiclass probe, 1,000 optimizer steps" in body

    # per-factor tables: factors as rows (then the mean), runs x metrics as columns
    probe_rows = _body_rows(page.table("Linear probe"))
    assert [r[0][0] for r in probe_rows] == [*NAMES, "mean"]
    header = [c[0] for c in page.table("Linear probe")[1]]
    assert header == ["diti-k4", "pdae", "diti-k4", "pdae"]  # accuracy, then AP (chance: one column)
    first = probe_rows[0]
    chance = np.bincount(results["diti-k4"]["test_attributes"].values[:, 0]).max() / 60
    assert first[1][0] == fmt_value(float(chance))
    assert first[2][0] == fmt_value(results["diti-k4"]["probe"]["per_attribute"][NAMES[0]]["accuracy"])
    factor_rows = _body_rows(page.table("Disentanglement per factor"))
    assert [r[0][0] for r in factor_rows] == [*NAMES, "mean"]
    for j, name in enumerate(NAMES):
        dis = results["diti-k4"]["disentangle"]
        assert factor_rows[j][1][0] == fmt_value(dis["dci"]["per_factor_test"][j])  # GBT test accuracy
        assert factor_rows[j][3][0] == fmt_value(dis["mig"]["per_factor"][j])
        assert factor_rows[j][5][0].startswith(f"chunk {j} (")  # factor j lives in chunk j
        assert factor_rows[j][-1][0] == str(_attribute_loss()["crossing_t"][name])  # per run: the DM's t
    # the factor x chunk share table: factors as rows, a column per chunk, rows summing to 1
    chunks = _body_rows(page.table("diti-k4"))  # the first table under the run's heading
    assert [r[0][0] for r in chunks] == NAMES and all(len(r) == 5 for r in chunks)
    assert all(abs(sum(float(c[0]) for c in r[1:]) - 1) < 0.01 for r in chunks)
    fidelity = [t["rows"] for t in page.tables if any(c[0] == "takes source" for c in t["rows"][0])]
    assert len(fidelity) == 2  # one per run
    takes = np.asarray(_fidelity()["takes_source"])  # (groups, factors)
    for j, row in enumerate(_body_rows(fidelity[0])):
        assert row[0][0] == NAMES[j] and [c[0] for c in row[1:5]] == [f"{v:.3f}" for v in takes[:, j]]
    for expected in ("counterfactual.png", "partition: diti-k4", "d=8, k=4, T=1000", "<b>escaped</b>",
                     "Attribute loss against time-step", "Training"):
        assert expected in body, expected
    assert "<b>escaped</b>" not in text  # the extra JSON's text is escaped

    # the raw JSON of each file, collapsed, at the end of its section: identical to the file
    raw = {d["summary"]: json.loads(d["pre"]) for d in page.details}
    for name, run in (("diti-k4", diti), ("pdae", pdae)):
        for file in ("probe.json", "disentangle.json", "fidelity.json", "attribute_loss.json"):
            assert raw[f"raw {file}: {name}"] == json.loads((run / "eval" / file).read_text()), (name, file)
    assert raw["raw summary.json"] == {"note": "<b>escaped</b>"}


def test_missing_results_name_their_command(tmp_path, results):
    bare = _make_run(tmp_path, "bare", 4)
    (bare / "loss_per_t.json").unlink()
    probed = _make_run(tmp_path, "probed", 4, results["diti-k4"])
    for file in ("disentangle.json", "fidelity.json", "counterfactual.png"):
        (probed / "eval" / file).unlink()
    out = write_report([bare, probed], tmp_path / "r.html", title="A & B")
    text = out.read_text()
    page = _parse(text)
    assert "A &amp; B" in text
    body = "".join(page.text)
    for run, result, command in ((bare, "probe.json", "diti probe {} --data DIR"),
                                 (bare, "disentangle.json", "diti disentangle {} --data DIR"),
                                 (probed, "disentangle.json", "diti disentangle {} --data DIR"),
                                 (probed, "fidelity.json", "diti fidelity {} --data DIR"),
                                 (probed, "counterfactual.png", "diti counterfactual {} --data DIR")):
        assert f"no {result}: run {command.format(run)}" in body, (run.name, result)
        assert f"<code>{command.format(run)}</code>" in text
    rows = {r[0][0]: [c[0] for c in r[1:]] for r in page.tables[0]["rows"]}
    assert rows["bare"][1:] == ["–"] * 10 and rows["probed"][3:10] == ["–"] * 7
    assert "Not found" in body and "loss_per_t.json" in body
    with pytest.raises(FileNotFoundError):
        write_report([tmp_path / "nope"], tmp_path / "x.html")


def test_old_schema_still_renders(tmp_path, results):
    """disentangle.json and probe.json written before 2026-12-01: what is there, the protocol not recorded."""
    old = _make_run(tmp_path, "old", 4, results["diti-k4"], old_schema=True)
    page = _parse(write_report([old], tmp_path / "r.html").read_text())
    body = "".join(page.text)
    row = [c[0] for c in page.tables[0]["rows"][-1]]
    dis = results["diti-k4"]["disentangle"]
    assert row[0] == "old" and row[-1] == "not recorded" and row[3] == "not recorded"
    assert row[4] == fmt_value(dis["dci"]["disentanglement"]) and row[9] == fmt_value(dis["mig"]["mig"])
    assert row[7:9] == ["–", "–"]  # no chunk-level D / C in the old file
    assert OLD_PROTOCOL in body and "not recorded (before 2026-12-01: 15 epochs)" in body
    assert "chunk level not recorded: rerun diti disentangle" in body
    factor_rows = _body_rows(page.table("Disentanglement per factor"))
    assert [r[0][0] for r in factor_rows] == [*NAMES, "mean"]  # MIG per factor and chunks are still there
    assert factor_rows[0][2][0].startswith("dims 0-1 (")  # old chunks are named by their dims


def test_results_folder_without_a_run(tmp_path, results):
    """`diti disentangle --features ... --out DIR` writes a folder of results: the report reads it as a run."""
    folder = tmp_path / "codes-eval"
    folder.mkdir()
    (folder / "disentangle.json").write_text(json.dumps(results["pdae"]["disentangle"]))
    page = _parse(write_report([folder], tmp_path / "r.html").read_text())
    body = "".join(page.text)
    row = [c[0] for c in page.tables[0]["rows"][-1]]
    assert row[:2] == ["codes-eval", "results folder"] and row[-1] == "fast"
    assert f"no probe.json: run diti probe --features FILE --test-features FILE --out {folder}/probe.json" in body
    assert "meta.json" not in body and "Training" not in [t["heading"] for t in page.tables]


def test_report_fits_1400_px_in_a_browser(tmp_path, results):
    """Headless chromium at 1400 px: the page does not scroll sideways (wide tables scroll in their own box),
    every image decodes, and no request leaves the file."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: `apt-get install chromium` (Debian) to run the browser test")
    sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    runs = [_make_run(tmp_path, "diti-k4", 4, results["diti-k4"]), _make_run(tmp_path, "pdae", 1, results["pdae"])]
    for i in range(4):  # results folders (no training figures to draw): a per-factor table of 6 x 3 columns
        folder = tmp_path / f"codes-of-another-model-{i}"
        folder.mkdir()
        for file in ("probe.json", "disentangle.json"):
            (folder / file).write_text((runs[i % 2] / "eval" / file).read_text())
        Image.fromarray(np.zeros((40, 400, 3), dtype=np.uint8)).save(folder / "alignment.png")
        runs.append(folder)
    out = write_report(runs, tmp_path / "r.html")
    requests = []
    with sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.as_uri())
            scroll, client = page.evaluate("[document.documentElement.scrollWidth, "
                                           "document.documentElement.clientWidth]")
            # the widest table is wider than the page: it scrolls inside its box
            widest = page.evaluate("Math.max(...Array.from(document.querySelectorAll('table'), t => t.scrollWidth))")
            broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || !i.naturalWidth).length")
        finally:
            browser.close()
    assert widest > client and scroll <= client <= 1400, (widest, scroll, client)
    assert broken == 0
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def test_many_chunks_read_down_the_page():
    """k > 16 chunks: the factor x chunk share table is transposed (a row per chunk, a column per factor)."""
    labels = [f"chunk {i}: t {50 * i}-{50 * i + 49}, dims {i}-{i}" for i in range(20)]
    share = np.random.default_rng(0).dirichlet(np.ones(20), size=3).T  # (chunks, factors)
    page = _parse(_matrix_table("factor", NAMES, labels, share, "share"))
    rows = _body_rows(page.tables[0]["rows"])
    assert [r[0][0] for r in rows] == labels and [c[0] for c in page.tables[0]["rows"][1]] == NAMES
    for j in range(3):  # the chunk holding most of each factor is in bold
        bold = [i for i, r in enumerate(rows) if r[j + 1][1] == "best"]
        assert bold == [int(share[:, j].argmax())]
    few = _parse(_matrix_table("factor", NAMES, labels[:4], share[:4], "share"))
    assert [r[0][0] for r in _body_rows(few.tables[0]["rows"])] == NAMES


def test_figures(tmp_path):
    heat = figures.plot_heatmap([[0.1, float("nan")], [0.3, 0.9]], ["chunk 0", "chunk 1"], ["a", "b"],
                                tmp_path / "h.png", title="alignment")
    assert Image.open(heat).format == "PNG"
    with pytest.raises(ValueError, match="does not match"):
        figures.plot_heatmap([[1.0, 2.0]], ["r"], ["a"], tmp_path / "bad.png")
    res = AttributeLossResult([0, 10], ["a"], {"a": [0.0, 0.4]}, {"a": [0.0, 0.1]}, {"a": 2}, 0.25, 1, 0)
    assert figures.plot_attribute_loss(res.to_dict(), tmp_path / "al.png").is_file()
    probe = {"task": "multiclass", "names": NAMES, "mean": {"accuracy": 0.8, "ap": 0.7},
             "per_attribute": {n: {"accuracy": 0.8, "ap": 0.7} for n in NAMES}}
    assert figures.plot_probe_comparison({"DiTi": probe, "PDAE": probe}, tmp_path / "p.png", metric="ap").is_file()
    with pytest.raises(ValueError, match="no rows"):
        figures.plot_training_loss([], tmp_path / "t.png")

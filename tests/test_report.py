"""The HTML report and the figures it embeds, on run folders written by hand (no training)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from diti.config import DiTiConfig, build_config
from diti.evaluation import figures
from diti.evaluation.attribute_loss import AttributeLossResult
from diti.evaluation.report import write_report
from diti.training.run import write_run_files

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
NAMES = ["background_color", "shape", "texture"]


class StrictParser(HTMLParser):
    """Records problems: a non-void tag closed out of order or left open."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.imgs: list[dict] = []
        self.text: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, name, attrs):
        if name == "img":
            self.imgs.append(dict(attrs))
        if name not in VOID:
            self.stack.append(name)

    def handle_startendtag(self, name, attrs):
        self.handle_starttag(name, attrs)
        if name not in VOID:
            self.stack.pop()

    def handle_endtag(self, name):
        if not self.stack or self.stack[-1] != name:
            self.problems.append(f"</{name}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(text)
    parser.close()
    assert not parser.problems, parser.problems[:5]
    assert not parser.stack, f"unclosed: {parser.stack}"
    return parser


def _probe(acc: list[float]) -> dict:
    return {"task": "multiclass", "names": NAMES,
            "per_attribute": {n: {"accuracy": a, "ap": a - 0.1} for n, a in zip(NAMES, acc, strict=True)},
            "mean": {"accuracy": float(np.mean(acc)), "ap": float(np.mean(acc)) - 0.1}, "best_epoch": 7,
            "valid_curve": [0.5, 0.6]}


def _make_run(root, name: str, k: int, acc: list[float], with_eval: bool = True):
    run = root / name
    cfg = build_config(DiTiConfig, "shapes-quick", overrides=[f"partition.k={k}", "dm=/somewhere/dm"])
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
    if with_eval:
        ev = run / "eval"
        ev.mkdir()
        (ev / "probe.json").write_text(json.dumps(_probe(acc)))
        (ev / "disentangle.json").write_text(json.dumps({
            "dci": {"disentanglement": 0.4321, "completeness": 0.5, "informativeness_train": 0.9,
                    "informativeness_test": 0.8},
            "mig": {"mig": 0.1234, "per_factor": [0.1, 0.2, 0.07]},
            "factor_vae": {"train_accuracy": 0.7, "eval_accuracy": 0.65, "num_active_dims": 16},
            "alignment": {"matrix": [[0.1, 0.2], [0.3, 0.4]], "score": 0.33}}))
        res = AttributeLossResult([0, 500, 999], NAMES, {n: [0.0, 0.1 * (i + 1), 0.5] for i, n in enumerate(NAMES)},
                                  {n: [0.0, 0.02, 0.02] for n in NAMES}, dict.fromkeys(NAMES, 8), 0.25, 2, 0)
        (ev / "attribute_loss.json").write_text(json.dumps(res.to_dict()))
        Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(ev / "counterfactual_grid.png")
    return run


def test_report_two_runs(tmp_path):
    diti = _make_run(tmp_path, "diti-k4", 4, [0.9876, 0.8765, 0.5432])
    pdae = _make_run(tmp_path, "pdae", 1, [0.9123, 0.8234, 0.6345])
    extra = tmp_path / "summary"
    extra.mkdir()
    (extra / "summary.json").write_text(json.dumps({"note": "<b>escaped</b>"}))
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(extra / "overview.png")

    out = write_report([diti, pdae], tmp_path / "report" / "index.html", extra_dirs=[extra])
    text = out.read_text()
    parser = _parse(text)
    assert text.startswith("<!DOCTYPE html>") and parser.doctype.lower() == "doctype html"
    assert '<html lang="en">' in text and '<meta charset="utf-8">' in text
    assert "<script" not in text.lower() and 'src="http' not in text and "href=" not in text
    # 2 x (training loss, loss per t, attribute loss, counterfactual grid) + probe comparison + extra PNG
    assert len(parser.imgs) == 10
    assert all(i["src"].startswith("data:image/png;base64,") for i in parser.imgs)
    assert text.count('<img src="data:image/png;base64,') == 10
    body = "".join(parser.text)
    for expected in ("diti-k4", "pdae", "0.9876", "0.6345", "0.4321", "0.1234", "counterfactual_grid.png",
                     "d=16, k=4", "d=16, k=1", "<b>escaped</b>"):
        assert expected in body, expected
    assert "<b>escaped</b>" not in text  # the extra JSON's text is escaped


def test_report_skips_missing_pieces(tmp_path):
    bare = _make_run(tmp_path, "bare", 4, [0.5] * 3, with_eval=False)
    (bare / "loss_per_t.json").unlink()
    out = write_report([bare], tmp_path / "r.html", title="A & B")
    text = out.read_text()
    parser = _parse(text)
    assert "A &amp; B" in text
    assert len(parser.imgs) == 1  # the training loss only
    body = "".join(parser.text)
    assert "Not found" in body and "loss_per_t.json" in body and "eval/ (no evaluation yet" in body
    with pytest.raises(FileNotFoundError):
        write_report([tmp_path / "nope"], tmp_path / "x.html")


def test_figures(tmp_path):
    heat = figures.plot_heatmap([[0.1, float("nan")], [0.3, 0.9]], ["chunk 0", "chunk 1"], ["a", "b"],
                                tmp_path / "h.png", title="alignment")
    assert Image.open(heat).format == "PNG"
    with pytest.raises(ValueError, match="does not match"):
        figures.plot_heatmap([[1.0, 2.0]], ["r"], ["a"], tmp_path / "bad.png")
    res = AttributeLossResult([0, 10], ["a"], {"a": [0.0, 0.4]}, {"a": [0.0, 0.1]}, {"a": 2}, 0.25, 1, 0)
    assert figures.plot_attribute_loss(res.to_dict(), tmp_path / "al.png").is_file()
    probes = {"DiTi": _probe([0.9, 0.8, 0.7]), "PDAE": _probe([0.8, 0.8, 0.6])}
    assert figures.plot_probe_comparison(probes, tmp_path / "p.png", metric="ap").is_file()
    with pytest.raises(ValueError, match="no rows"):
        figures.plot_training_loss([], tmp_path / "t.png")

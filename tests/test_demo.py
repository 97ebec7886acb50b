"""The demo pipeline end to end, shrunk (16 px, tiny models, a few steps)."""

import json
import time

import pytest

from diti.config import DiTiConfig, build_config
from diti.demo import METHODS, _in_processes, run_demo, training_progress


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """One quick demo run, DiTi and PDAE one after the other (shared by the tests below)."""
    tmp_path = tmp_path_factory.mktemp("sequential")
    return tmp_path, run_demo(tmp_path / "demo", quick=True, steps=4, processes=1)


@pytest.mark.slow
def test_quick_demo_writes_summary(sequential):
    tmp_path, summary = sequential
    assert (tmp_path / "demo" / "report.html").read_text().startswith("<!DOCTYPE html>")
    text = summary.read_text()
    data = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(data["methods"]) == {"DiTi", "PDAE"}
    names = data["methods"]["DiTi"]["probe"]["names"]
    # shapes version 2: eight factors, coarse to fine
    assert names[0] == "background_color" and names[-2:] == ["texture", "grain"]
    for method in ("DiTi", "PDAE"):
        acc = [data["methods"][method]["probe"]["per_attribute"][n]["accuracy"] for n in names]
        assert all(0.0 <= a <= 1.0 for a in acc)
    # DiTi (k=4): one alignment row per chunk; PDAE: dim slices
    assert len(data["methods"]["DiTi"]["disentangle"]["alignment"]["group_labels"]) == 4
    for method in ("DiTi", "PDAE"):
        assert set(data["methods"][method]["disentangle"]["dci"]) >= {"disentanglement", "completeness"}
        assert data["methods"][method]["disentangle"]["protocol"]["name"] == "fast"
        # PDAE's chunk-level metrics use DiTi's chunks
        assert len(data["methods"][method]["disentangle"]["chunk_level"]["chunk_labels"]) == 4
        assert data["methods"][method]["fidelity"]["takes_source"]
        assert (tmp_path / "demo" / method.lower() / "eval" / "counterfactual.png").is_file()
    assert "## DiTi: which chunk of z carries each factor" in text and "## PDAE: which chunk" not in text
    assert "| texture |" in text and "Elapsed time per stage" in text and "attribute loss" in text
    assert "Protocol `fast`" in text and "DCI disentanglement over chunks" in text
    assert "{" not in text  # every placeholder was formatted
    assert set(data["elapsed_s"]) >= {"data", "dm", "train DiTi", "train PDAE", "encode + probe",
                                      "disentanglement", "counterfactuals", "fidelity", "attribute loss", "total"}


@pytest.mark.slow
def test_the_demo_in_two_processes_gives_the_same_numbers(sequential, tmp_path):
    """DiTi and PDAE trained and evaluated side by side (two processes) give the sequential run's numbers."""
    run_demo(tmp_path / "par", quick=True, steps=4, processes=2)
    seq, par = (json.loads((d / "summary.json").read_text()) for d in (sequential[0] / "demo", tmp_path / "par"))
    assert "train DiTi + PDAE (2 processes)" in par["elapsed_s"] and "train DiTi" in seq["elapsed_s"]
    for method in ("DiTi", "PDAE"):
        a, b = seq["methods"][method], par["methods"][method]
        assert a["probe"]["mean"] == b["probe"]["mean"]
        assert a["disentangle"]["dci"] == b["disentangle"]["dci"] and a["disentangle"]["mig"] == b["disentangle"]["mig"]
        assert a["fidelity"]["takes_source"] == b["fidelity"]["takes_source"]


def _log_steps(run, *steps):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.1}) + "\n" for s in steps))


def test_two_process_training_prints_where_each_run_stands(tmp_path):
    """The two-process demo's processes print nothing: the parent's line reads each run's steps from its folder,
    those of DiTi's partition-rule PDAE run first, and it is printed while the processes run."""
    configs = {m: build_config(DiTiConfig, "shapes2-bench", overrides=[*o, "train.steps=1200"])
               for m, o in METHODS.items()}
    runs = {m: tmp_path / m.lower() for m in METHODS}
    assert training_progress(runs, configs) == "   steps: DiTi partition rule's PDAE run 0/500, PDAE 0/1200"
    _log_steps(runs["DiTi"] / "rule-source" / "pdae", 50, 200)
    _log_steps(runs["PDAE"], 50, 100, 300)
    assert training_progress(runs, configs) == "   steps: DiTi partition rule's PDAE run 200/500, PDAE 300/1200"
    (runs["DiTi"] / "rule-source" / "removed_loss.json").write_text("{}")
    _log_steps(runs["DiTi"], 50)
    assert training_progress(runs, configs) == "   steps: DiTi 50/1200, PDAE 300/1200"
    calls = []
    assert _in_processes([(time.sleep, 1.0)], 2, report=lambda: calls.append(1), every=0.05) == [None]
    assert calls  # reported while the process ran

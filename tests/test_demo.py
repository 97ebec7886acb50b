"""The demo pipeline end to end, shrunk (16 px, tiny models, a few steps)."""

import json

import pytest

from diti.demo import run_demo


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

"""The demo pipeline end to end, shrunk (16 px, tiny models, a few steps)."""

import json

import pytest

from diti.demo import run_demo


@pytest.mark.slow
def test_quick_demo_writes_summary(tmp_path):
    summary = run_demo(tmp_path / "demo", quick=True, steps=4)
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

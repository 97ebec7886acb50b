"""The demo pipeline end to end, shrunk (16 px, tiny models, a few steps)."""

import json

import pytest

from diti.cli.demo import run_demo


@pytest.mark.slow
def test_quick_demo_writes_summary(tmp_path):
    summary = run_demo(tmp_path / "demo", quick=True, steps=4)
    text = summary.read_text()
    data = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(data["methods"]) == {"DiTi", "PDAE"}
    names = data["methods"]["DiTi"]["probe"]["names"]
    assert names[0] == "background_color" and names[-1] == "texture"
    for method in ("DiTi", "PDAE"):
        acc = [data["methods"][method]["probe"]["per_attribute"][n]["accuracy"] for n in names]
        assert all(0.0 <= a <= 1.0 for a in acc)
    chunk = data["methods"]["DiTi"]["chunk_probe"]
    assert len(chunk["accuracy"]) == 4 and set(chunk["best_chunk"]) == set(names)
    assert "chunk_probe" not in data["methods"]["PDAE"]  # k = 1 has a single chunk
    assert "| texture |" in text and "Elapsed time per stage" in text
    assert set(data["elapsed_s"]) >= {"data", "dm", "train DiTi", "train PDAE", "encode", "probe", "total"}

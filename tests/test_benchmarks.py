"""The benchmark scripts run in their --quick mode and print/write the expected format."""

import json
import runpy
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_train_step_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "train_step.py"))["main"]
    rows = main(["--quick", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "DiTi / DDPM step time" in out and "img/s" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["machine"]["torch"] and data["rows"] == json.loads(json.dumps(rows))
    row = rows[0]
    for name in ("ddpm", "diti"):
        assert row[name]["median_s"] > 0 and row[name]["q1_s"] <= row[name]["q3_s"]
    assert row["ratio_diti_over_ddpm"] == row["diti"]["median_s"] / row["ddpm"]["median_s"]


def test_encode_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "encode.py"))["main"]
    rows = main(["--quick", "--out", str(tmp_path / "r.json")])
    assert "img/s" in capsys.readouterr().out
    assert rows[0]["images"] == 64 and rows[0]["img_per_s"] > 0
    assert json.loads((tmp_path / "r.json").read_text())[0]["size"] == "16px-quick"


def test_quality_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "quality.py"))["main"]
    results = main(["--quick", "--variants", "pdae,diti-k4-sg,pixel-pca,random-encoder", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "### Summary" in out and "| diti-k4-sg |" in out and "| pixel-pca |" in out
    assert set(results["rows"]) == {"pdae/seed0", "diti-k4-sg/seed0", "pixel-pca/seed0", "random-encoder/seed0"}
    row = results["rows"]["diti-k4-sg/seed0"]
    assert 0 <= row["probe_mean"] <= 1 and row["fidelity_takes_source"] and row["steps"] == 4
    assert "fidelity_takes_source" not in results["rows"]["pixel-pca/seed0"]
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["machine"]["torch"] and saved["command"].startswith("python benchmarks/quality.py")
    assert (tmp_path / "quality.md").read_text().startswith("Mean ± std over seeds [0]")


def test_explore_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "explore.py"))["main"]
    result = main(["--quick", "--threads", "1", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert "edit with cached inversions:" in out and "first edit (two inversions):" in out and "goal" in out
    assert result["resolution"] == 16 and result["steps"] == 5 and len(result["cached_edit"]["times_s"]) == 2
    for name in ("first_edit", "cached_edit"):
        assert 0 < result[name]["min_s"] <= result[name]["median_s"] <= result[name]["max_s"]
    # a first edit inverts two images and decodes; a cached one only decodes
    assert result["first_edit"]["median_s"] > result["cached_edit"]["median_s"]
    assert json.loads((tmp_path / "r.json").read_text())["machine"]["threads"] == 1

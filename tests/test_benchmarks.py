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


def test_curves_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "curves.py"))["main"]
    out = main(["--quick", "--variants", "pdae,diti-k8-sg,pixel-pca", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert "### At the last point" in text and "| diti-k8-sg |" in text and "| pixel-pca |" in text
    results = tmp_path / "results"
    files = sorted(p.relative_to(results).as_posix() for p in results.glob("*/seed*/step*.json"))
    assert files == ["diti-k8-sg/seed0/step000002.json", "diti-k8-sg/seed0/step000004.json",
                     "pdae/seed0/step000002.json", "pdae/seed0/step000004.json", "pixel-pca/seed0/step000000.json"]
    first, last = (json.loads((results / f"pdae/seed0/step00000{s}.json").read_text()) for s in (2, 4))
    # MIG, FactorVAE and the probe at every point; DCI (and its chunk level) only at the last point in quick mode
    assert set(first["metrics"]) == {"probe_mean", "mig", "factor_vae"} and first["dci"] is None
    assert {"dci_d", "dci_c", "dci_i", "chunk_d", "chunk_c"} <= set(last["metrics"])
    assert last["images"] == 4 * 16 and last["train_seconds"] >= first["train_seconds"] > 0
    assert last["protocol"]["name"] == "fast" and len(last["probe"]) == 8  # shapes version 2: 8 factors
    # PDAE's chunk-level metrics use the DiTi variant's chunks
    assert last["chunk_level"]["source"] == "chunks of the reference partition"
    assert len(last["chunk_level"]["chunk_importance"]) == 4
    assert {Path(f).name for f in out["figures"]} >= {"probe_mean.png", "dci_d.png", "chunk_d.png",
                                                      "probe_per_factor.png"}
    # a second call reuses every finished point
    again = main(["--quick", "--variants", "pdae", "--out", str(tmp_path)])
    assert len(again["table"]["pdae"][4]) == 1


def test_dm_check_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "dm_check.py"))["main"]
    result = main(["--quick", "--out", str(tmp_path / "r.json")])
    assert "DDIM steps: MSE" in capsys.readouterr().out
    assert result["images"] == 4 and result["mse"] > 0 and len(result["sha256"]) == 64
    assert json.loads((tmp_path / "r.json").read_text())["psnr_db"] == result["psnr_db"]

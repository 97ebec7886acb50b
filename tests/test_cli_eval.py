"""CLI smoke tests of the evaluation suite on a tiny run (random 16 px DM, 4 training steps)."""

import json
import re

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from diti.cli.main import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_probe_from_run_and_from_files(tiny_run, shapes16, tmp_path):
    out = invoke("probe", tiny_run, "--data", shapes16)
    assert "texture" in out and "chosen on the validation split" in out
    probe = json.loads((tiny_run / "eval" / "probe.json").read_text())
    assert probe["task"] == "multiclass" and set(probe["mean"]) == {"ap", "accuracy"}
    feats = tiny_run / "eval" / "features"
    out = invoke("probe", "--features", feats / "train.npy", "--test-features", feats / "test.npy",
                 "--columns", "shape,texture", "--out", tmp_path / "p.json")
    assert json.loads((tmp_path / "p.json").read_text())["names"] == ["shape", "texture"]


def test_disentangle(tiny_run, shapes16):
    out = invoke("disentangle", tiny_run, "--data", shapes16, "--max-train", 100, "--jobs", 1)
    # one line per stage, in the order they run (on stderr, which the runner mixes into the output)
    stages = [r"loading .*run", r"(encoding the train split \(256 images\)|codes of the train split: cached)",
              r"(encoding the test split \(64 images\)|codes of the test split: cached)", "MIG on 256 codes",
              "FactorVAE score", r"DCI: one gradient-boosted classifier per factor \(\d+\) on 100 codes",
              r"probes of each dim group", "writing disentangle.json and alignment.png", "DCI disentanglement"]
    found = [re.search(stage, out) for stage in stages]
    assert all(found) and [m.start() for m in found] == sorted(m.start() for m in found), out
    assert "DCI disentanglement" in out and "MIG" in out and "FactorVAE" in out and "chunk level" in out
    result = json.loads((tiny_run / "eval" / "disentangle.json").read_text())
    assert result["protocol"]["name"] == "custom" and result["protocol"]["dci_train_rows"] == 100
    shares = result["alignment"]["chunk_importance_share"]
    assert len(shares) == 4 and all(abs(sum(col) - 1) < 1e-6 for col in zip(*shares, strict=True))
    chunk = result["chunk_level"]
    assert chunk["source"] == "the partition's chunks" and len(chunk["chunk_importance"]) == 4
    assert 0 <= chunk["disentanglement"] <= result["dci"]["disentanglement"] + 1e-9
    assert (tiny_run / "eval" / "alignment.png").is_file()


def test_disentangle_from_saved_features(tiny_run, shapes16, tmp_path):
    invoke("encode", tiny_run, "--data", shapes16, "--split", "train", "--out", tmp_path / "train.npy")
    invoke("encode", tiny_run, "--data", shapes16, "--split", "test", "--out", tmp_path / "test.npy")
    out = invoke("disentangle", "--features", tmp_path / "train.npy", "--test-features", tmp_path / "test.npy",
                 "--protocol", "fast", "--partition", tiny_run, "--out", tmp_path / "eval", "--jobs", 1)
    assert "protocol fast" in out
    saved = json.loads((tmp_path / "eval" / "disentangle.json").read_text())
    from_run = json.loads((tiny_run / "eval" / "disentangle.json").read_text())
    assert saved["protocol"]["name"] == "fast" and saved["chunk_level"]["chunk_dim_ranges"] == \
        from_run["chunk_level"]["chunk_dim_ranges"]
    # the same codes without a partition: one chunk (k = 1), grouped like the run given as reference
    invoke("disentangle", "--features", tmp_path / "train.npy", "--test-features", tmp_path / "test.npy",
           "--protocol", "fast", "--reference", tiny_run, "--out", tmp_path / "ref", "--jobs", 1)
    ref = json.loads((tmp_path / "ref" / "disentangle.json").read_text())
    assert ref["chunk_level"]["source"] == "chunks of the reference partition"
    assert ref["chunk_level"]["chunk_dim_ranges"] == saved["chunk_level"]["chunk_dim_ranges"]
    assert ref["chunk_level"]["chunk_importance"] == saved["chunk_level"]["chunk_importance"]
    bad = runner.invoke(app, ["disentangle", "--features", str(tmp_path / "train.npy"), "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--test-features" in bad.output
    bad = runner.invoke(app, ["disentangle", "--features", str(tmp_path / "train.npy"), "--test-features",
                              str(tmp_path / "test.npy"), "--out", str(tmp_path), "--protocol", "quick"])
    assert bad.exit_code == 2 and "unknown disentanglement protocol" in bad.output


def test_counterfactual_and_manipulate(tiny_run, shapes16, tmp_path):
    invoke("counterfactual", tiny_run, "--data", shapes16, "--steps", 5, "--pairs", 2)
    with Image.open(tiny_run / "eval" / "counterfactual.png") as im:
        assert im.width > 5 * 16 and im.height > 8 * 16  # 2 pairs x 4 chunk rows, 7 columns
    invoke("counterfactual", tiny_run, "--data", shapes16, "--steps", 5, "--a", 0, "--b", 1, "--stages", 0,
           "--mode", "swap", "--x-t", "slerp", "--out", tmp_path / "swap.png")
    assert (tmp_path / "swap.png").is_file()
    invoke("counterfactual", tiny_run, "--data", shapes16, "--steps", 5, "--a", 0, "--b", 1, "--stages", 0,
           "--clip-x0", "--out", tmp_path / "clipped.png")
    assert (tmp_path / "clipped.png").is_file()
    out = invoke("manipulate", tiny_run, "--data", shapes16, "--attribute", "shape", "--target-class", 1,
                 "--d-prime", 4, "--steps", 5, "--images", "0,1")
    assert "ProbMask on 4 dims" in out and (tiny_run / "eval" / "manipulate-shape.png").is_file()
    assert json.loads((tiny_run / "eval" / "manipulate-shape.json").read_text())["decoding"]["clip_x0"] is False
    invoke("manipulate", tiny_run, "--data", shapes16, "--attribute", "shape", "--target-class", 1,
           "--d-prime", 4, "--steps", 5, "--images", "0", "--clip-x0", "--out", tmp_path / "m.png")
    assert json.loads((tmp_path / "m.json").read_text())["decoding"] == {"ddim_steps": 5, "clip_x0": True}


def test_fidelity(tiny_run, shapes16):
    out = invoke("fidelity", tiny_run, "--data", shapes16, "--pairs", 8, "--steps", 5, "--classifier-epochs", 1)
    assert "takes source" in out.lower() or "takes_source" in out
    result = json.loads((tiny_run / "eval" / "fidelity.json").read_text())
    assert len(result["takes_source"]) == len(result["group_labels"])
    assert (tiny_run / "eval" / "fidelity.png").is_file() and result["clip_x0"] is False
    invoke("fidelity", tiny_run, "--data", shapes16, "--pairs", 4, "--steps", 3, "--clip-x0")
    assert json.loads((tiny_run / "eval" / "fidelity.json").read_text())["clip_x0"] is True


def test_evaluation_errors(tiny_run, shapes16):
    result = runner.invoke(app, ["manipulate", str(tiny_run), "--data", str(shapes16), "--attribute", "colour"])
    assert result.exit_code == 2 and "attribute 'colour' not found" in result.output
    result = runner.invoke(app, ["counterfactual", str(tiny_run), "--data", str(shapes16), "--a", "0"])
    assert result.exit_code == 2 and "give both --a and --b" in result.output
    result = runner.invoke(app, ["counterfactual", str(tiny_run), "--data", str(shapes16), "--chunks", "9"])
    assert result.exit_code == 2 and "out of range" in result.output


def test_attribute_loss_and_report(tiny_run, shapes16, tmp_path):
    out = invoke("attribute-loss", "--dm", tiny_run, "--data", shapes16, "--pairs", 4, "--out", tiny_run / "eval")
    assert "cross t" in out
    result = json.loads((tiny_run / "eval" / "attribute_loss.json").read_text())
    assert result["timesteps"][0] == 0 and len(result["timesteps"]) == 20
    invoke("probe", tiny_run, "--data", shapes16)
    out = invoke("report", tiny_run, tiny_run, "--out", tmp_path / "r.html", "--title", "two runs")
    html = (tmp_path / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert "<script" not in html and 'src="http' not in html
    invoke("report", tiny_run)
    assert (tiny_run / "report.html").is_file()
    result = runner.invoke(app, ["report", str(tiny_run), str(tiny_run)])
    assert result.exit_code == 2 and "--out is required" in result.output


def test_evaluation_refuses_splits_that_are_the_same_images(tiny_run, tmp_path):
    """A plain image folder opens the whole folder for every split: a probe would be tested on its training set."""
    plain = tmp_path / "plain"
    plain.mkdir()
    rows = ["file,shape"]
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(plain / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (plain / "attributes.csv").write_text("\n".join(rows) + "\n")
    for command in ("probe", "disentangle"):
        result = runner.invoke(app, [command, str(tiny_run), "--data", str(plain)])
        assert result.exit_code == 2 and "same 6 images" in result.output, result.output

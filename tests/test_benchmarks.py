"""The benchmark scripts run in their --quick mode and print/write the expected format."""

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest

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
    # FLOPs of one step each (forward + backward): DiTi adds the encoder and the decoder's copy to DDPM's work
    assert row["diti"]["flops"] > 0 and row["ddpm"]["flops"] > 0
    assert row["flop_ratio_diti_over_ddpm"] == row["diti"]["flops"] / row["ddpm"]["flops"]
    assert "FLOPs per step" in out


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
    out = main(["--quick", "--variants", "pdae,diti-k8-sg,pixel-pca,supervised", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert "### At the last point" in text and "| diti-k8-sg |" in text and "| pixel-pca |" in text
    assert "| supervised |" in text
    # images and steps to 95 % of PDAE's last point: PDAE reaches its own, 16 images per quick step
    reach_rows = text.split("### Reaching 95 %")[1].split("###")[0].splitlines()
    assert "| variant | seeds reaching | images | steps | train minutes |" in reach_rows
    cells = next(r for r in reach_rows if r.startswith("| pdae |")).split("|")
    images, steps = (float(c.replace(",", "")) for c in cells[3:5])
    assert steps > 0 and abs(images - 16 * steps) <= 8.5  # both cells rounded to integers
    results = tmp_path / "results"
    files = sorted(p.relative_to(results).as_posix() for p in results.glob("*/seed*/step*.json"))
    assert files == ["diti-k8-sg/seed0/step000002.json", "diti-k8-sg/seed0/step000004.json",
                     "pdae/seed0/step000002.json", "pdae/seed0/step000004.json", "pixel-pca/seed0/step000000.json",
                     "supervised/seed0/step000000.json"]
    supervised = json.loads((results / "supervised/seed0/step000000.json").read_text())
    assert len(supervised["probe"]) == 8 and supervised["metrics"]["dci_d"] >= 0
    first, last = (json.loads((results / f"pdae/seed0/step00000{s}.json").read_text()) for s in (2, 4))
    # MIG, FactorVAE and the probe at every point; DCI (and its chunk level) only at the last point in quick mode
    assert set(first["metrics"]) == {"probe_mean", "mig", "factor_vae"} and first["dci"] is None
    assert {"dci_d", "dci_c", "dci_i", "chunk_d", "chunk_c"} <= set(last["metrics"])
    assert last["images"] == 4 * 16 and last["train_seconds"] >= first["train_seconds"] > 0
    assert last["protocol"]["name"] == "fast" and len(last["probe"]) == 8  # shapes version 2: 8 factors
    assert last["precision"] == "no" and [s for s, _ in last["losses"]] == [2, 4]  # each segment logs its end
    # PDAE's chunk-level metrics use the DiTi variant's chunks
    assert last["chunk_level"]["source"] == "chunks of the reference partition"
    assert len(last["chunk_level"]["chunk_importance"]) == 4
    assert {Path(f).name for f in out["figures"]} >= {"probe_mean.png", "dci_d.png", "chunk_d.png",
                                                      "probe_per_factor.png"}
    # a second call reuses every finished point
    again = main(["--quick", "--variants", "pdae", "--out", str(tmp_path)])
    assert len(again["table"]["pdae"][4]) == 1
    # fidelity at the last point, for a run kept and for a run whose folder is gone (retrained to its last point)
    shutil.rmtree(tmp_path / "diti-k8-sg" / "seed0")
    main(["--quick", "--variants", "pdae,diti-k8-sg,pixel-pca", "--out", str(tmp_path), "--fidelity", "--peers"])
    for v in ("pdae", "diti-k8-sg"):
        fid = json.loads((results / v / "seed0" / "fidelity.json").read_text())
        assert fid["step"] == 4 and fid["num_pairs"] == 6 and len(fid["group_labels"]) >= 2
    for v in ("pdae", "diti-k8-sg", "pixel-pca"):  # the peers' protocol: k = 4 chunks, one PCA dim each
        peers = json.loads((results / v / "seed0" / "peers.json").read_text())
        assert peers["protocol"]["chunk_reduction"]["method"] == "pca"
        assert len(peers["protocol"]["chunk_reduction"]["chunks"]) == 4 and 0 <= peers["metrics"]["dci_d"] <= 1
    peers_table = (results / "curves.md").read_text().split("### The peers' protocol")[1].split("###")[0]
    images = json.loads((results / "pdae" / "seed0" / "peers.json").read_text())["images"]
    assert f"| pdae | 1 | {images:,} | " in peers_table and images == last["images"]  # at the last point
    assert "reference_t_ranges" in json.loads((results / "pdae/seed0/fidelity.json").read_text())
    # with the DM's crossings: each factor's chunk against the t where the DM loses it (a rank correlation)
    crossings = {name: 100.0 * i for i, name in enumerate(last["probe"])}
    (tmp_path / "al.json").write_text(json.dumps({"crossing_t_interp": crossings}))
    main(["--plot-only", "--results", str(results), "--attribute-loss", str(tmp_path / "al.json")])
    table = (results / "curves.md").read_text().split("time-step at which the DM loses it?")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| diti-k8-sg |")]
    mean = rows[0].split("|")[3].strip()
    assert len(rows) == 1 and (mean == "–" or -1 <= float(mean) <= 1)
    held = (results / "curves.md").read_text().split("### Held and in place")[1].split("###")[0]
    rows = [line for line in held.splitlines() if line.startswith("| diti-k8-sg |")]
    assert len(rows) == 1 and rows[0].split("|")[3].strip() in ("yes", "no") and " of " in rows[0], held
    fidelity = (results / "curves.md").read_text().split("### Counterfactual fidelity")[1]
    rows = [line for line in fidelity.splitlines() if line.startswith(("| pdae |", "| diti-k8-sg |"))]
    assert len(rows) == 8 and all(0 <= float(r.split("|")[7]) <= 1 for r in rows if r.split("|")[7].strip() != "–")
    # a screen past the curve: PDAE's points at 2 and 4 on seeds 1 and 2 too, and a point at 8 on seed 0 only.
    # The last point stays the last one the three seeds reached; the screen gets its own table
    for step in (2, 4):
        row = json.loads((results / f"pdae/seed0/step00000{step}.json").read_text())
        for seed in (1, 2):
            (results / f"pdae/seed{seed}").mkdir(exist_ok=True)
            (results / f"pdae/seed{seed}/step00000{step}.json").write_text(json.dumps({**row, "seed": seed}))
    row = json.loads((results / "pdae/seed0/step000004.json").read_text())
    (results / "pdae/seed0/step000008.json").write_text(json.dumps({**row, "step": 8, "images": 2 * row["images"]}))
    main(["--plot-only", "--results", str(results)])
    text = (results / "curves.md").read_text()
    at_last = text.split("### At the last point")[1].split("###")[0]
    assert f"| pdae | {row['images']:,} | 3 | " in at_last
    screen = text.split("### Beyond the last point")[1].split("###")[0]
    assert [r.split("|")[1:4] for r in screen.splitlines() if r.startswith("| pdae")] == [
        [" pdae ", f" {2 * row['images']:,} ", " 0 "]]
    assert "Beyond the last point" not in text.split("### Reaching 95 %")[1]
    # the fast mode's curves: trained under bf16 autocast, in their own folders
    bf16 = main(["--quick", "--precision", "bf16", "--variants", "pdae", "--points", "2", "--out", str(tmp_path / "b")])
    point = bf16["table"]["pdae"][2][0]
    assert point["precision"] == "bf16" and "train.mixed_precision=bf16" in point["overrides"]
    assert (tmp_path / "b" / "results" / "pdae" / "seed0" / "step000002.json").is_file()
    assert point["data"] == {"version": 2, "resolution": 16}
    # another data version: only with a tag (its own folders) and, in full mode, a DM trained on that data
    with pytest.raises(SystemExit):
        main(["--quick", "--data-version", "1", "--variants", "pdae", "--out", str(tmp_path / "v1")])
    v1 = main(["--quick", "--data-version", "1", "--tag", "v1", "--variants", "pdae", "--points", "2",
               "--out", str(tmp_path / "v1")])
    point = v1["table"]["pdae"][2][0]
    assert point["data"] == {"version": 1, "resolution": 16} and len(point["probe"]) != 8


def test_dm_check_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "dm_check.py"))["main"]
    result = main(["--quick", "--out", str(tmp_path / "r.json")])
    assert "DDIM steps: MSE" in capsys.readouterr().out
    assert result["images"] == 4 and result["mse"] > 0 and len(result["sha256"]) == 64
    assert json.loads((tmp_path / "r.json").read_text())["psnr_db"] == result["psnr_db"]
def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process trees from /proc")
def test_quality_workers_end_when_the_parent_gets_sigterm(tmp_path, random_dm):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "quality.py"), "--quick", "--jobs", "2", "--variants", "pdae,diti-k4-sg",
         "--dm", str(random_dm), "--out", str(tmp_path / "q")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline, workers = time.time() + 120, set()
    while time.time() < deadline and proc.poll() is None:
        workers = {c for c in _children(proc.pid)
                   if b"multiprocessing" in Path(f"/proc/{c}/cmdline").read_bytes()} if _alive(proc.pid) else set()
        if len(workers) >= 2:
            break
        time.sleep(0.1)
    assert len(workers) >= 2, "the pool never started"
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:  # do not leave them running if the test fails
        os.kill(w, signal.SIGKILL)
    assert not left, "pool workers outlived the SIGTERM'd parent"
    assert code == 128 + signal.SIGTERM


def test_data_loading_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "data_loading.py"))["main"]
    result = main(["--quick", "--out", str(tmp_path / "d.json")])
    assert "img/s per worker" in capsys.readouterr().out
    assert set(result["rows"]) == {"jpeg-folder", "lmdb"}
    for rows in result["rows"].values():
        assert [r["workers"] for r in rows] == [0, 1] and all(r["img_per_s"] > 0 for r in rows)
    assert json.loads((tmp_path / "d.json").read_text())["batch"] == 16


def test_gpu_check_quick_writes_every_documented_field(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "gpu_check.py"))["main"]
    result = main(["--quick", "--out", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text()) == json.loads(json.dumps(result))
    assert result["errors"] == [] and result["mode"] == "quick" and "gpu_check (quick)" in capsys.readouterr().out
    assert {"device", "torch", "diffusers", "accelerate", "cpu_cores", "tf32_matmul"} <= set(result["machine"])
    variants = result["steps"]["variants"]
    assert list(variants) == ["fp32", "bf16", "bf16+channels_last", "fp32+channels_last", "bf16+compile"]
    assert "skipped" in variants["bf16+compile"]
    for name in ("fp32", "bf16", "bf16+channels_last", "fp32+channels_last"):
        for model in ("ddpm", "diti"):
            row = variants[name][model]
            assert row["q1_s"] <= row["median_s"] <= row["q3_s"] and row["img_per_s"] > 0
            assert row["first_step_s"] > 0 and row["loss_fixed_batch"] > 0
        assert variants[name]["ratio_diti_over_ddpm"] > 0
    # every variant's first step is on the same weights and batch: fp32 and channels_last agree closely
    for model in ("ddpm", "diti"):
        fp32 = variants["fp32"][model]["loss_fixed_batch"]
        assert abs(variants["fp32+channels_last"][model]["loss_fixed_batch"] - fp32) < 1e-4 * fp32
        prec = result["precision"][model]
        assert prec["fp32_loss"] == fp32 and prec["bf16"]["abs_diff"] == abs(prec["bf16"]["loss"] - fp32)
    assert [r["workers"] for r in result["data_loader"]["rows"]] == [0, 1]
    # the batches the workers had ready at start are not timed; at least 8 per worker are
    assert [(r["skipped_batches"], r["timed_batches"]) for r in result["data_loader"]["rows"]] == [(1, 2), (4, 8)]
    run = result["training_run"]
    assert run["ok"] and all(run["checks"].values()) and run["checkpoints"][-1] == "step-00000004"
    assert run["histogram_count"] == 4 * run["batch"] and run["logged_steps"] == [1, 2, 3, 4]
    # the resumed run equals an uninterrupted one: weights, EMA, optimizer moments and step counters
    restored = run["restored"]
    assert restored["tolerance"] == 0.0 and restored["optimizer_steps_equal"] and restored["within_tolerance"]
    assert all(restored[n]["max_abs_diff"] == 0.0 and restored[n]["ratio"] == 0.0 for n in ("model", "ema", "optimizer"))
    assert result["machine"]["dev_shm_GiB"] is None or result["machine"]["dev_shm_GiB"] > 0
    assert {"elapsed_s", "budget_s", "command", "date"} <= set(result)


def test_gpu_check_resume_comparison_catches_a_lost_state(tmp_path, random_dm, shapes16, monkeypatch):
    """A resume that restores the weights but not the optimizer moments is caught by the check's ratio."""
    from conftest import quick_cfg
    from diti.training.jobs import train_diti
    from diti.training.trainer import Trainer

    compare = runpy.run_path(str(BENCH / "gpu_check.py"))["compare_runs"]

    def cfg(steps):
        return quick_cfg(random_dm, shapes16, f"train.steps={steps}", "train.checkpoint_every=2",
                         "train.keep_checkpoints=10")

    full = train_diti(cfg(6), tmp_path / "full")
    good = train_diti(cfg(2), tmp_path / "good")
    train_diti(cfg(6), good, resume=True)
    assert compare(good, full, 2, 6, "cpu")["within_tolerance"]
    original = Trainer.resume

    def resume_without_the_optimizer(self):
        fresh = self.optimizer.state_dict()
        resumed = original(self)
        self.optimizer.load_state_dict(fresh)  # the moments and step counters of a new optimizer
        return resumed

    monkeypatch.setattr(Trainer, "resume", resume_without_the_optimizer)
    lost = train_diti(cfg(2), tmp_path / "lost")
    train_diti(cfg(6), lost, resume=True)
    result = compare(lost, full, 2, 6, "cuda")  # even the GPU's tolerance catches it
    assert not result["within_tolerance"] and not result["optimizer_steps_equal"]
    assert result["model"]["ratio"] > result["tolerance"]


def test_gpu_check_skips_what_the_budget_does_not_allow(tmp_path):
    import time

    script = runpy.run_path(str(BENCH / "gpu_check.py"))
    result = script["main"](["--quick", "--budget-s", "0", "--out", str(tmp_path / "g.json")])
    assert all("skipped" in v for v in result["steps"]["variants"].values()) and len(result["steps"]["variants"]) == 5
    assert "skipped" in result["data_loader"] and "skipped" in result["training_run"]
    assert result["errors"] == []
    # a section running past the budget is cut where it is (a long torch.compile included)
    start = time.perf_counter()
    with pytest.raises(script["BudgetExceeded"]):
        with script["_deadline"](0.2):
            time.sleep(5)
    assert time.perf_counter() - start < 2


def test_curves_reach_interpolates_in_log_images():
    reach = runpy.run_path(str(BENCH / "curves.py"))["reach"]

    def point(step, value, seconds):
        return {"seed": 0, "step": step, "images": step * 64, "train_seconds": seconds,
                "metrics": {"probe_mean": value}}

    steps = {250: [point(250, 0.6, 100.0)], 500: [point(500, 0.7, 200.0)], 1000: [point(1000, 0.8, 400.0)]}
    images, seconds = reach(steps, 0, 0.75)  # halfway from 500 to 1000 steps in log(images)
    assert abs(images - 64 * (500 * 1000) ** 0.5) < 1e-6 and abs(seconds - 300.0) < 1e-9
    assert reach(steps, 0, 0.5) == (250 * 64, 100.0)  # reached at the first point
    assert reach(steps, 0, 0.9) is None and reach(steps, 1, 0.5) is None


def test_curves_placement_of_held_factors_on_a_hand_made_point():
    placement = runpy.run_path(str(BENCH / "curves.py"))["placement"]
    factors = ["grain", "colour", "position"]
    crossings = {"grain": 60.0, "colour": 300.0, "position": 620.0}  # chunks 0, 2, 4 of the balanced k = 8 grid
    share = np.zeros((8, 3))
    share[1, 0] = share[5, 1] = share[4, 2] = 1.0  # grain next to its chunk, colour 3 off, position in its own
    row = {"alignment": {"chunk_importance_share": share.tolist()},
           "probe": {"grain": 0.95, "colour": 0.99, "position": 0.5}}
    assert placement(row, crossings, factors) == (["grain", "colour"], ["grain"])  # position is not held
    assert placement(row, crossings, factors, wanted=["colour"]) == (["colour"], [])
    # the point's own partition sets the chunks' t-ranges: with chunk 5 starting at t = 300, colour is at home
    row["partition"] = [{"t_first": t} for t in (0, 50, 100, 150, 200, 300, 700, 900)]
    assert placement(row, crossings, factors) == (["grain", "colour"], ["grain", "colour"])


def test_draws_cost_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "draws_cost.py"))["main"]
    result = main(["--quick", "--out", str(tmp_path / "r.json")])
    assert "ms/draw" in capsys.readouterr().out
    assert [r["draws"] for r in result["rows"]] == [1, 2] and result["rows"][0]["vs_first"] == 1.0
    assert json.loads((tmp_path / "r.json").read_text())["rows"][1]["median_s"] > 0

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


def test_gpu_check_keeps_the_repeats_a_budget_cut(tmp_path):
    """A variant whose repeats run past the budget keeps what it measured and says it was cut."""
    script = runpy.run_path(str(BENCH / "gpu_check.py"))
    import torch

    settings = dict(script["SETTINGS"]["quick"], repeats=100_000)
    check = script["Check"](tmp_path / "g.json", 21.5, "quick", [])  # a variant needs ~20 s left to start
    section = script["steps_section"](check, settings, torch.device("cpu"), ["fp32"])
    row = section["variants"]["fp32"]
    assert row.get("cut_by_budget") is True
    for model in ("ddpm", "diti"):
        assert 0 < row[model]["repeats"] < 100_000 and row[model]["median_s"] > 0


def test_train_step_modes_quick(tmp_path, capsys):
    main = runpy.run_path(str(BENCH / "train_step.py"))["main"]
    rows = main(["--quick", "--modes", "bf16,channels_last,bf16+dm_bf16,compile", "--out", str(tmp_path / "m.json")])
    modes = rows[0]["modes"]
    assert list(modes) == ["fp32", "bf16", "channels_last", "bf16+dm_bf16"]  # fp32 added, compile left out in quick
    for name in ("ddpm", "diti"):
        assert modes["fp32"][name]["speedup_over_fp32"] == 1.0 and modes["fp32"][name]["loss_diff_vs_fp32"] == 0.0
        assert modes["bf16"][name]["median_s"] > 0 and modes["bf16"][name]["loss_diff_vs_fp32"] != 0.0
        # channels_last changes the memory layout, not the arithmetic
        assert abs(modes["channels_last"][name]["loss_diff_vs_fp32"]) < 1e-4 * modes["fp32"][name]["loss_fixed_batch"]
    assert "skipped" in modes["bf16+dm_bf16"]["ddpm"] and modes["bf16+dm_bf16"]["diti"]["median_s"] > 0
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["rows"][0]["modes"]["bf16"]["diti"]["median_s"] == modes["bf16"]["diti"]["median_s"]
    assert "speed-up" in capsys.readouterr().out


def test_precision_quick(tmp_path):
    main = runpy.run_path(str(BENCH / "precision.py"))["main"]
    result = main(["--quick", "--variants", "pdae", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert [(r["precision"], [s for s, _ in r["losses"]]) for r in result["runs"]] == [
        ("fp32", [1, 2, 3, 4]), ("bf16", [1, 2, 3, 4])]
    fixed = result["fixed_batch"][0]
    assert fixed["fp32"] > 0 and fixed["abs_diff"] == fixed["bf16"] - fixed["fp32"] and fixed["abs_diff"] != 0
    assert (tmp_path / "out" / "loss_first_steps.png").is_file()
    assert json.loads((tmp_path / "out" / "precision.json").read_text())["runs"][1]["precision"] == "bf16"


def test_the_supervised_bound_learns_the_labels(shapes16):
    """The encoder trained with the labels fits them: its summed cross-entropy falls well below the start."""
    import torch

    from diti.data import open_dataset
    from diti.models.encoder import Encoder

    train = runpy.run_path(str(BENCH / "curves.py"))["supervised_train"]
    torch.manual_seed(0)
    encoder = Encoder(16, 16, 3, [16, 32], [], 8)
    losses = train(encoder, open_dataset(shapes16, "train"), steps=60, batch=32, seed=0, lr=3e-3)
    assert len(losses) == 60 and sum(losses[-10:]) < 0.7 * sum(losses[:10])


def test_curves_quick_label_free_partition(tmp_path):
    """diti-rl-sg: a short PDAE run per seed, its removed-loss curve, and the DiTi run on the partition it gives."""
    main = runpy.run_path(str(BENCH / "curves.py"))["main"]
    out = main(["--quick", "--variants", "diti-rl-sg", "--points", "2", "--dci-points", "0", "--out", str(tmp_path)])
    point = out["table"]["diti-rl-sg"][2][0]
    assert "partition.rule=removed_loss" in point["overrides"]
    source = tmp_path / "rl-source" / "seed0" / "removed_loss.json"
    curve = json.loads(source.read_text())
    assert curve["pdae_steps"] == 4 and len(curve["removed_loss"]) == 1000
    assert sum(row["dims"] for row in point["partition"]) == 16 and len(point["partition"]) == 4
    # a finished variant trains nothing again, not even the short PDAE run of its rule
    shutil.rmtree(tmp_path / "rl-source")
    main(["--quick", "--variants", "diti-rl-sg", "--points", "2", "--dci-points", "0", "--out", str(tmp_path)])
    assert not (tmp_path / "rl-source").exists()


def test_compare_curves_flags_a_difference_beyond_the_seeds_spread(tmp_path, capsys):
    """Two constructed sets of points: the probe mean moves by 0.001 (within), DCI-D by 0.1 (outside)."""
    script = runpy.run_path(str(BENCH / "compare_curves.py"))
    diff, tol, ok = script["within"]([0.70, 0.72, 0.74], [0.71, 0.73, 0.75])
    # s = 0.02 on both sides, n = 3: tolerance 2 sqrt(2 x 0.0004 / 3) = 0.03266
    assert diff == pytest.approx(0.01) and tol == pytest.approx(2 * (2 * 0.0004 / 3) ** 0.5) and ok
    for name, shift in (("a", 0.0), ("b", 1.0)):
        for seed, noise in enumerate((-0.01, 0.0, 0.01)):
            path = tmp_path / name / "pdae" / f"seed{seed}" / "step000100.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps({
                "variant": "pdae", "seed": seed, "step": 100, "images": 6400,
                "metrics": {"probe_mean": 0.7 + noise + 0.001 * shift, "dci_d": 0.3 + noise + 0.1 * shift},
                "probe": {"colour": 0.9 + noise, "shape": 0.5 + 0.2 * shift}}))
    rows = script["main"](["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--variants", "pdae",
                           "--out", str(tmp_path / "eq")])
    verdict = {r["metric"]: r["within"] for r in rows}
    assert verdict == {"probe_mean": True, "dci_d": False}
    text = (tmp_path / "eq" / "equivalence.md").read_text()
    assert "| pdae | 6,400 | shape | 0.500 ± 0.000 | 0.700 ± 0.000 | +0.200 | **no** |" in text
    assert (tmp_path / "eq" / "equivalence.png").is_file()


def test_curves_variant_list_shows_paths_from_the_checkout_on():
    portable = runpy.run_path(str(BENCH / "curves.py"))["portable"]
    ov = ['partition.rule_source="/work/wt-sweep/src/diti/assets/dm-shapes2-16/attribute_loss.json"',
          'partition.rule_source="/home/a/wt/runs/bench-curves-fast/rl-source/seed0/removed_loss.json"',
          'dm="/data/my-dm"', "partition.k=8"]
    assert portable(ov) == ['partition.rule_source="src/diti/assets/dm-shapes2-16/attribute_loss.json"',
                            'partition.rule_source="runs/bench-curves-fast/rl-source/seed0/removed_loss.json"',
                            'dm="/data/my-dm"', "partition.k=8"]


def test_curves_rank_correlation_over_all_or_held_factors_on_a_hand_made_point():
    rank_correlation = runpy.run_path(str(BENCH / "curves.py"))["rank_correlation"]
    factors = ["grain", "texture", "colour", "position"]
    crossings = {"grain": 60.0, "texture": 170.0, "colour": 300.0, "position": 620.0}
    share = np.zeros((8, 4))
    share[6, 0] = share[5, 1] = share[0, 2] = share[2, 3] = 1.0  # two chance-level factors in late chunks
    row = {"alignment": {"chunk_importance_share": share.tolist()},
           "probe": {"grain": 0.5, "texture": 0.35, "colour": 0.99, "position": 1.0}}
    # all four: chunks 6, 5, 0, 2 against rising crossings, ranks 4, 3, 1, 2: rho = 1 - 6 * 18 / 60 = -0.8
    assert abs(rank_correlation(row, crossings, factors) - (-0.8)) < 1e-12
    assert rank_correlation(row, crossings, factors, held=0.9) is None  # only 2 held
    row["probe"]["texture"] = 0.95  # now held: texture (chunk 5), colour (0), position (2): ranks 3, 1, 2
    assert abs(rank_correlation(row, crossings, factors, held=0.9) - (-0.5)) < 1e-12
    share[:, 1] = 0.0
    share[1, 1] = 1.0  # texture in chunk 1: chunks 1, 0, 2 against rising crossings, ranks 2, 1, 3
    row["alignment"]["chunk_importance_share"] = share.tolist()
    assert abs(rank_correlation(row, crossings, factors, held=0.9) - 0.5) < 1e-12


def test_curves_fidelity_lines_average_by_group_and_name_each_seeds_dims():
    fidelity_lines = runpy.run_path(str(BENCH / "curves.py"))["fidelity_lines"]
    crossings = {"grain": 60.0, "colour": 300.0}

    def result(split: int, hit: float) -> dict:  # two stages, t 0-499 and 500-999, split at dim `split` of 4
        return {"factor_names": ["grain", "colour"],
                "group_labels": [f"stage 0: t 0-499, dims 0-{split - 1}", f"stage 1: t 500-999, dims {split}-3",
                                 "all dims"],
                "group_dim_ranges": [[0, split], [split, 4], [0, 4]],
                "group_t_ranges": [[0, 499], [500, 999], [0, 999]],
                "takes_source": [[hit, 0.0], [0.0, 0.0], [1.0, 1.0]],
                "keeps_target": [[1.0, 0.75], [1.0, 1.0], [0.0, 0.0]],
                "num_differ": [10, 10], "reconstruction_accuracy": [1.0, 0.9], "real_accuracy": [1.0, 1.0],
                "num_pairs": 4, "num_steps": 2, "seed": 0, "images": 64_000 if split == 3 else 32_000}

    rows = [line for line in fidelity_lines({"diti-rl-sg": [result(1, 0.2), result(3, 0.4)]}, crossings)
            if line.startswith("| diti-rl-sg")]
    assert len(rows) == 2  # the all-dims group is left out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # stage 0 holds grain and colour (both crossings in 0-499): hit = mean(hit, 0) per seed = 0.1 and 0.2,
    # mean ± sample std 0.150 ± 0.071; no other factor: no leakage; 1 - reconstruction 0.05 on both seeds
    # the seeds were evaluated at different points: both named
    assert cells[1:6] == ["2", "32,000 / 64,000", "stage 0: t 0-499, dims 0-0; stage 0: t 0-499, dims 0-2", "0-499",
                          "grain, colour"]
    assert cells[6] == "0.150 ± 0.071" and cells[7] == "–" and cells[8] == "0.050 ± 0.000"
    same = [line for line in fidelity_lines({"diti-k8-sg": [result(2, 0.2), result(2, 0.2)]}, crossings)
            if line.startswith("| diti-k8-sg")]
    assert "| stage 0: t 0-499, dims 0-1 |" in same[0]  # equal dims: one label
    short = result(2, 0.2)
    for key in ("group_labels", "group_dim_ranges", "group_t_ranges", "takes_source", "keeps_target"):
        short[key] = short[key][1:]
    with pytest.raises(ValueError, match="different numbers of dim groups"):
        fidelity_lines({"x": [result(2, 0.2), short]}, crossings)

"""The benchmark scripts run in their --quick mode and print/write the expected format."""

import json
import runpy
from pathlib import Path

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

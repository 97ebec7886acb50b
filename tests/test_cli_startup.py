"""`diti --help` and every command's help start without the heavy libraries (checked in sys.modules of a fresh
interpreter, not with a clock): torch, diffusers, scikit-learn and gradio are imported by the commands that use
them, when they run."""

import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "diffusers", "sklearn", "gradio", "accelerate", "matplotlib")

# Runs in a fresh interpreter: `diti --help`, then the help of every command and sub-command, then reports which
# of HEAVY were imported, and what each help printed.
PROBE = """
import contextlib, io, json, sys
from typer.main import get_command
from diti.cli.main import app

root = get_command(app)
def paths(group, prefix):
    for name, cmd in group.commands.items():
        yield prefix + [name]
        if hasattr(cmd, "commands"):  # a sub-group (typer may bring its own click)
            yield from paths(cmd, prefix + [name])
printed = {}
for args in [[]] + list(paths(root, [])):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = root.main(args + ["--help"], prog_name="diti", standalone_mode=False)
    printed[" ".join(args) or "diti"] = (code, out.getvalue())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"printed": printed, "heavy": heavy}))
"""


def test_help_imports_no_torch_diffusers_sklearn_or_gradio():
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    printed = report["printed"]
    # the help of every command was printed (so the check covers them), and nothing failed
    assert {"diti", "data", "data shapes", "train", "disentangle", "explore", "demo"} <= set(printed)
    assert all(code == 0 and "Usage:" in text for code, text in printed.values()), printed
    assert "Options" in printed["disentangle"][1] and "--protocol" in printed["disentangle"][1]
    assert report["heavy"] == [], f"`diti --help` imported {sorted({m.split('.')[0] for m in report['heavy']})}"

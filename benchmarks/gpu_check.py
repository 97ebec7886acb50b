"""One-call GPU check: step throughput, precision, data loading and a resumed training run, in one JSON.

Run on a machine with one CUDA GPU, from the repository root; nothing is downloaded. With diti installed
(``pip install -e .``)::

    python benchmarks/gpu_check.py --out gpu_check.json          # under 8 minutes on one H200
    python benchmarks/gpu_check.py --quick --out q.json          # CPU, seconds (the test suite)

On a lent machine that has torch, accelerate and the rest but not diffusers (the project's device tool: its
working tree arrives without an install, and ``$OUT`` is the folder that comes back), carry diffusers as a wheel
in ``.whl/`` and put both the wheel folder and ``src`` on the path, in this one command (docs/gpu.md)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src && df -h /dev/shm && nvidia-smi -L && \
      PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json

(``PYTHONPATH=src`` alone would drop the wheel folder; ``--out`` must be under ``$OUT`` to come back.)

It needs torch with CUDA, diffusers, accelerate, safetensors, numpy, Pillow, PyYAML and tqdm importable
(a machine without diffusers can take it as a wheel: ``pip install --no-deps diffusers-*.whl``); a missing
one ends the script at once with its name. Every section is timed against ``--budget-s`` (default 420 s)
and skipped, with the reason in the JSON, when the budget would run out; a section that fails records its
error and the others still run. The JSON is rewritten after every section, so a killed run leaves what it
measured. Exit status 1 if any section failed.

Sections and the JSON fields they write:

- ``machine``: ``device`` (cuda/cpu), ``gpu`` (name), ``gpu_memory_GiB``, ``cuda``, ``cudnn``, ``torch``,
  ``diffusers``, ``accelerate``, ``python``, ``cpu_cores``, ``tf32_matmul`` / ``tf32_cudnn`` (torch's TF32
  switches, left at their defaults: "fp32" below is torch's default float32, cuDNN convolutions may use
  TF32), ``dev_shm_GiB`` (size of /dev/shm, where loader workers hand batches over: 8 workers x prefetch 4 x
  a 64-px batch of 128 need ~400 MB there).
- ``steps``: training-step throughput of a plain DDPM step and of a DiTi step on the same UNet, at the
  CelebA64 preset size (the ``64px-celeba64`` size of benchmarks/train_step.py: a UNet of the official
  CelebA64 DM's shape, ~35M parameters, 64 px, preset ``celeba64-diti64``: d = 512, k = 64, official
  encoder), global batch ``batch`` (128). ``variants`` maps ``fp32``, ``bf16``, ``bf16+channels_last``,
  ``fp32+channels_last`` and ``bf16+compile`` (torch.compile, default mode) to
  ``{"ddpm": M, "diti": M, "ratio_diti_over_ddpm"}`` with M = ``median_s``, ``q1_s``, ``q3_s`` (step time
  over ``repeats`` interleaved steps), ``img_per_s`` (batch / median), ``peak_mem_MiB``
  (torch.cuda.max_memory_allocated during the model's warm-up steps, both models of the variant resident),
  ``first_step_s`` (the first step, compilation included) and ``loss_fixed_batch`` (the loss of that first
  step: every variant starts from the same weights on the same batch). A variant or model that could not
  run has ``error``; one left out has ``skipped`` with the reason; a variant whose repeats the budget cut
  keeps the repeats it measured (``repeats`` says how many) and has ``cut_by_budget``.
- ``precision``: per model, ``fp32_loss``, and for ``bf16`` and ``bf16+compile`` the loss on the same
  batch and weights, ``abs_diff`` and ``rel_diff`` against fp32.
- ``data_loader``: the training loader (benchmarks/data_loading.py) on a synthetic folder of 64-px JPEGs
  (``images``, quality 95), batch ``batch``, each batch copied to the device; ``rows``: per worker count
  (0, 4, 8) ``workers``, ``img_per_s``, ``img_per_s_per_worker``, ``first_batch_s``, ``skipped_batches`` (the
  batches the workers had ready at start, W x prefetch 4, untimed) and ``timed_batches`` (at least 8 x W).
- ``training_run``: ``diti train`` at the CelebA64 preset size (random DM of that shape, the JPEG folder,
  bf16, default workers) for ``resume_at`` (100) steps, then resumed to ``steps`` (200): ``checkpoints``
  (step folders kept), ``logged_steps``, ``final_loss``, ``img_per_s_median`` (from metrics.jsonl),
  ``first_part_s`` / ``resumed_part_s`` (wall time of each call), ``histogram_count`` (time-steps counted
  in loss_per_t.json, must be steps x batch), ``uninterrupted_s`` and ``restored``: the same steps run again
  in one call, and the resumed run's final model, EMA and optimizer state compared with it (per file
  ``max_abs_diff`` and ``ratio`` = ||resumed - uninterrupted|| / ||uninterrupted - its state at resume_at||;
  ``optimizer_steps_equal``; ``tolerance``: 0 on the CPU, where the two are bit-identical, 0.05 on CUDA,
  whose kernels do not fix the order of sums; a resume that lost a state gives a ratio near 1), ``ok`` and
  ``checks`` (each check by name, true/false).
- ``errors``: ``[{"section", "error", "traceback"}]``; ``elapsed_s``, ``budget_s``, ``mode``, ``command``,
  ``date``.

- ``settings``: the settings the sections ran with (SETTINGS below, after ``--setting`` overrides).

``--quick`` runs the same sections on the CPU at the ``16px-quick`` size (batch 4, 2 repeats, 32 images,
workers 0 and 1, a 4-step run resumed at step 2) and skips ``bf16+compile`` (tracing takes ~30 s on CPU).
``--setting KEY=JSON`` overrides one setting, e.g. the full mode's code paths on a CPU at a small size:
``--setting device='"cpu"' --setting size='"16px-quick"' --setting batch=4 ...``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import runpy
import signal
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import date
from pathlib import Path

BENCH = Path(__file__).resolve().parent
NEEDED = ("torch", "diffusers", "accelerate", "safetensors", "numpy", "PIL", "yaml", "tqdm", "diti")

SETTINGS = {
    "full": dict(size="64px-celeba64", batch=128, repeats=20, warmup=3, device="cuda", loader_images=2048,
                 loader_workers=(0, 4, 8), loader_batches=8, train_steps=200, resume_at=100, checkpoint_every=50,
                 log_every=25, train_images=2048, mixed_precision="bf16", compile=True),
    "quick": dict(size="16px-quick", batch=4, repeats=2, warmup=1, device="cpu", loader_images=32,
                  loader_workers=(0, 1), loader_batches=2, train_steps=4, resume_at=2, checkpoint_every=2,
                  log_every=1, train_images=32, mixed_precision="no", compile=False),
}
# name -> (autocast bf16, torch.compile, channels_last); compile last: the slowest to start and the likeliest
# to be cut by the budget
VARIANTS = {
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16+channels_last": (True, False, True),
    "fp32+channels_last": (False, False, True),
    "bf16+compile": (True, True, False),
}


class BudgetExceeded(Exception):
    """The time budget ran out inside a section (raised by SIGALRM, so even a long compile is cut)."""


@contextmanager
def _deadline(seconds: float):
    """Raise BudgetExceeded in this (main) thread after ``seconds``; a no-op where SIGALRM does not exist."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise BudgetExceeded("stopped at the time budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _budget_exceeded(err: BaseException | None) -> bool:
    """Whether ``err`` is, or was raised because of, BudgetExceeded."""
    while err is not None:
        if isinstance(err, BudgetExceeded) or "BudgetExceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


class Check:
    """The results dict, written to ``out`` after every section; each section's time against the budget."""

    def __init__(self, out: Path | None, budget_s: float, mode: str, argv: list[str]):
        self.out, self.budget_s, self.start = out, budget_s, time.perf_counter()
        self.result: dict = {"mode": mode, "budget_s": budget_s, "errors": [], "date": date.today().isoformat(),
                             "command": " ".join(["python", "benchmarks/gpu_check.py", *argv])}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def section(self, name: str, fn, *args, need_s: float = 0.0):
        if self.left() < need_s:
            self.result[name] = {"skipped": f"time budget: {self.left():.0f} s left, ~{need_s:.0f} s needed"}
        else:
            try:
                with _deadline(self.left()):
                    self.result[name] = fn(*args)
            except BudgetExceeded as err:
                self.result[name] = {"skipped": str(err)}
            except Exception as err:  # a failed section must not lose the others: record it and go on
                self.error(name, err)
                self.result[name] = {"error": f"{type(err).__name__}: {err}"}
        self.save()
        return self.result[name]

    def error(self, section: str, err: Exception) -> None:
        self.result["errors"].append({"section": section, "error": f"{type(err).__name__}: {err}",
                                      "traceback": traceback.format_exc()[-2000:]})

    def save(self) -> None:
        self.result["elapsed_s"] = time.perf_counter() - self.start
        if self.out is not None:
            self.out.write_text(json.dumps(self.result, indent=2))


# ----------------------------------------------------------------------------------------------------
def machine(device) -> dict:
    import accelerate
    import diffusers
    import torch

    info = {"device": device.type, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version(),
            "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "dev_shm_GiB": _shm_gib()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_GiB=props.total_memory / 2**30, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def _shm_gib() -> float | None:
    """Size of /dev/shm, where DataLoader workers hand batches over (8 workers x prefetch 4 x a 64-px batch of
    128 need ~400 MB there); None where it does not exist."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_frsize * st.f_blocks / 2**30


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_step(module, params, x0, device, bf16: bool):
    """A training step on the fixed images x0 with fresh t and noise drawn on the device; returns the loss."""
    import torch

    opt = torch.optim.Adam(params, lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(t=None, noise=None):
        t = torch.randint(0, 1000, (x0.shape[0],), device=device, generator=gen) if t is None else t
        noise = torch.randn(x0.shape, device=device, generator=gen) if noise is None else noise
        with autocast:
            out = module(x0, t, noise)
        out.mean.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.mean.detach()

    return step


def measure_variant(check: Check, s: dict, name: str, device) -> dict:
    """DDPM and DiTi step times of one variant, interleaved (see the module docstring)."""
    import torch

    bf16, compile_, channels_last = VARIANTS[name]
    if compile_ and not s["compile"]:
        return {"skipped": "torch.compile is not run in --quick (tracing takes ~30 s on CPU)"}
    step_bench = runpy.run_path(str(BENCH / "train_step.py"))
    resolution, ddpm, diti = step_bench["build"](s["size"], device)
    torch.nn.init.normal_(diti.decoder.conv_out.weight, std=0.02)  # G != 0, so the DiTi loss uses the decoder
    gen = torch.Generator().manual_seed(1)
    x0 = (torch.rand(s["batch"], 3, resolution, resolution, generator=gen) * 2 - 1).to(device)
    t0 = torch.randint(0, 1000, (s["batch"],), generator=gen).to(device)
    noise0 = torch.randn(x0.shape, generator=gen).to(device)
    if channels_last:
        x0, noise0 = (v.contiguous(memory_format=torch.channels_last) for v in (x0, noise0))
    out, steps = {}, {}
    for model_name, module, params in (("ddpm", ddpm, list(ddpm.parameters())),
                                       ("diti", diti, diti.trainable_parameters())):
        if check.left() < (90 if compile_ else 10):
            out[model_name] = {"skipped": f"time budget: {check.left():.0f} s left"}
            continue
        try:
            if channels_last:
                module.to(memory_format=torch.channels_last)
            run = torch.compile(module) if compile_ else module
            step = _make_step(run, params, x0, device, bf16)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            loss = float(step(t0, noise0))  # the first step: same weights and batch in every variant
            first = time.perf_counter() - start
            for _ in range(s["warmup"]):
                step()
            _sync(device)
            out[model_name] = {"first_step_s": first, "loss_fixed_batch": loss}
            if device.type == "cuda":
                out[model_name]["peak_mem_MiB"] = torch.cuda.max_memory_allocated(device) / 2**20
            steps[model_name] = step
        except Exception as err:
            if _budget_exceeded(err):  # torch.compile re-raises it wrapped in its own error
                out[model_name] = {"skipped": "stopped at the time budget"}
                break
            check.error(f"steps/{name}/{model_name}", err)
            out[model_name] = {"error": f"{type(err).__name__}: {err}"}
    for model_name in ("ddpm", "diti"):
        out.setdefault(model_name, {"skipped": "stopped at the time budget"})
    times: dict[str, list[float]] = {k: [] for k in steps}
    try:
        for _ in range(s["repeats"]):
            for model_name, step in steps.items():  # interleaved, so machine noise hits both alike
                _sync(device)
                start = time.perf_counter()
                step()
                _sync(device)
                times[model_name].append(time.perf_counter() - start)
    except BudgetExceeded:  # keep the repeats measured so far, and say that the budget cut them
        out["cut_by_budget"] = True
        times = {k: ts for k, ts in times.items() if ts}
    for model_name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[model_name].update(median_s=statistics.median(ts), q1_s=q[0], q3_s=q[2],
                               img_per_s=s["batch"] / statistics.median(ts), repeats=len(ts))
    if all("median_s" in out.get(m, {}) for m in ("ddpm", "diti")):
        out["ratio_diti_over_ddpm"] = out["diti"]["median_s"] / out["ddpm"]["median_s"]
    del steps, ddpm, diti
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def steps_section(check: Check, s: dict, device, names) -> dict:
    """Measure the variants ``names`` into result["steps"]["variants"], each cut at the time budget."""
    section = check.result.setdefault("steps", {"size": s["size"], "batch": s["batch"], "repeats": s["repeats"],
                                                "warmup": s["warmup"], "variants": {}})
    for name in names:
        need = 150 if VARIANTS[name][1] else 20
        if check.left() < need:
            section["variants"][name] = {"skipped": f"time budget: {check.left():.0f} s left, ~{need} s needed"}
        else:
            try:
                with _deadline(check.left()):
                    section["variants"][name] = measure_variant(check, s, name, device)
            except BudgetExceeded as err:
                section["variants"][name] = {"skipped": str(err)}
            except Exception as err:
                check.error(f"steps/{name}", err)
                section["variants"][name] = {"error": f"{type(err).__name__}: {err}"}
        check.save()
    section["variants"] = {n: section["variants"][n] for n in VARIANTS if n in section["variants"]}
    return section


def precision_section(steps: dict) -> dict:
    out = {}
    variants = steps.get("variants", {})
    for model in ("ddpm", "diti"):
        ref = variants.get("fp32", {}).get(model, {}).get("loss_fixed_batch")
        if ref is None:
            out[model] = {"skipped": "no fp32 loss"}
            continue
        row = {"fp32_loss": ref}
        for name in ("bf16", "bf16+compile"):
            loss = variants.get(name, {}).get(model, {}).get("loss_fixed_batch")
            if loss is not None:
                row[name] = {"loss": loss, "abs_diff": abs(loss - ref), "rel_diff": abs(loss - ref) / abs(ref)}
        out[model] = row
    return out


def data_loader_section(s: dict, device, tmp: Path) -> dict:
    loading = runpy.run_path(str(BENCH / "data_loading.py"))
    root = loading["write_jpeg_folder"](tmp / "jpeg64", s["loader_images"], (64, 64))
    dataset = loading["open_synthetic"]("jpeg-folder", root, 64, None)
    rows = [loading["loader_throughput"](dataset, s["batch"] if s["batch"] >= 16 else 16, w, s["loader_batches"],
                                         str(device)) for w in s["loader_workers"]]
    return {"format": "jpeg-folder", "image_px": 64, "jpeg_quality": 95, "images": s["loader_images"],
            "batch": s["batch"] if s["batch"] >= 16 else 16, "device": device.type, "rows": rows}


def training_run_section(s: dict, device, tmp: Path) -> dict:
    from diti.config import DiTiConfig, build_config
    from diti.diffusion.schedule import NoiseSchedule
    from diti.folders import latest_checkpoint, list_checkpoints
    from diti.models.dm import build_unet, save_dm
    from diti.training.jobs import train_diti

    step_bench = runpy.run_path(str(BENCH / "train_step.py"))
    resolution, unet_cfg, preset = step_bench["SIZES"][s["size"]]
    loading = runpy.run_path(str(BENCH / "data_loading.py"))
    data = loading["write_jpeg_folder"](tmp / f"data{resolution}", s["train_images"], (resolution, resolution))
    import torch

    torch.manual_seed(0)
    dm = save_dm(build_unet(unet_cfg, resolution), tmp / "dm", NoiseSchedule())
    run = tmp / "run"

    def cfg(steps: int):
        return build_config(DiTiConfig, preset, overrides=[
            f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}", f"train.steps={steps}",
            f"train.checkpoint_every={s['checkpoint_every']}", f"train.log_every={s['log_every']}",
            "train.progress=false", f"train.device={device.type}", "train.keep_checkpoints=100",
            f"train.mixed_precision={json.dumps(s['mixed_precision'])}",
            "data.hflip=true"])

    start = time.perf_counter()
    train_diti(cfg(s["resume_at"]), run)
    first = time.perf_counter() - start
    stopped_at = latest_checkpoint(run / "checkpoints")
    start = time.perf_counter()
    train_diti(cfg(s["train_steps"]), run, resume=True)
    resumed = time.perf_counter() - start
    start = time.perf_counter()
    full = train_diti(cfg(s["train_steps"]), tmp / "uninterrupted")  # the same steps in one call
    uninterrupted = time.perf_counter() - start
    restored = compare_runs(run, full, s["resume_at"], s["train_steps"], device.type)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows]
    batch = cfg(s["train_steps"]).train.batch_size
    count = sum(json.loads((run / "loss_per_t.json").read_text())["count"])
    kept = [p.name for p in list_checkpoints(run / "checkpoints")]
    state = json.loads((run / "checkpoints" / f"step-{s['train_steps']:08d}" / "state.json").read_text())
    checks = {
        "reached_final_step": state["step"] == s["train_steps"],
        "first_part_checkpointed_its_last_step": stopped_at is not None
        and stopped_at.name == f"step-{s['resume_at']:08d}",
        "log_continues_without_repeats": logged == sorted(set(logged)) and logged[-1] == s["train_steps"]
        and any(step > s["resume_at"] for step in logged),
        "histogram_counts_every_sample": count == s["train_steps"] * batch,
        "losses_finite": all(isinstance(r["loss"], float) and r["loss"] == r["loss"] for r in rows),
        "optimizer_steps_equal_uninterrupted": restored["optimizer_steps_equal"],
        "state_equals_uninterrupted": restored["within_tolerance"],
    }
    speeds = [r["img_per_s"] for r in rows if r["step"] > s["log_every"]] or [r["img_per_s"] for r in rows]
    return {"size": s["size"], "preset": preset, "batch": batch, "steps": s["train_steps"], "resume_at": s["resume_at"],
            "mixed_precision": s["mixed_precision"], "checkpoints": kept, "logged_steps": logged,
            "final_loss": rows[-1]["loss"], "img_per_s_median": statistics.median(speeds),
            "first_part_s": first, "resumed_part_s": resumed, "uninterrupted_s": uninterrupted,
            "histogram_count": count, "restored": restored, "ok": all(checks.values()), "checks": checks}


# A resumed run on a GPU is not bit-identical to an uninterrupted one (cuDNN and atomics do not fix the order of
# floating-point sums), so there the check is relative: the distance between the resumed and the uninterrupted
# run's final state, over the distance the uninterrupted run travelled after the resume point. A resume that
# lost the model, EMA or optimizer state gives a ratio near 1 or above; an exact resume gives 0 (the CPU).
RESUME_TOLERANCE = {"cpu": 0.0, "cuda": 0.05}


def compare_runs(resumed: Path, full: Path, resume_at: int, steps: int, device_type: str) -> dict:
    """Final model, EMA and optimizer state of a resumed run against an uninterrupted run of the same steps:
    per file ``max_abs_diff`` and ``ratio`` (||resumed - full|| / ||full - full at resume_at||, over all
    tensors); ``optimizer_steps_equal`` (Adam's step counters, all equal to ``steps``); ``tolerance`` (the
    largest ratio allowed on this device type) and ``within_tolerance``."""
    from safetensors.torch import load_file

    def ckpt(run: Path, step: int) -> Path:
        return run / "checkpoints" / f"step-{step:08d}"

    tolerance = RESUME_TOLERANCE.get(device_type, RESUME_TOLERANCE["cuda"])
    out: dict = {"tolerance": tolerance}
    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(ckpt(r, steps) / f"{name}.safetensors") for r in (resumed, full))
        start = load_file(ckpt(full, resume_at) / f"{name}.safetensors")
        keys = [k for k in b if not k.endswith(".step")]
        diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys) ** 0.5
        moved = sum(float((b[k].double() - start[k].double()).pow(2).sum()) for k in keys) ** 0.5
        out[name] = {"max_abs_diff": max(float((a[k] - b[k]).abs().max()) for k in keys),
                     "ratio": diff / moved if moved > 0 else float(diff > 0), "same_tensors": a.keys() == b.keys()}
        if name == "optimizer":
            counters = [{k: float(v) for k, v in d.items() if k.endswith(".step")} for d in (a, b)]
            out["optimizer_steps_equal"] = counters[0] == counters[1] and set(counters[1].values()) == {float(steps)}
    out["within_tolerance"] = all(out[n]["same_tensors"] and out[n]["ratio"] <= tolerance
                                  for n in ("model", "ema", "optimizer"))
    return out


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (rewritten after every section)")
    p.add_argument("--quick", action="store_true", help="CPU, tiny sizes, seconds (the test suite)")
    p.add_argument("--budget-s", type=float, default=420.0, help="time budget for all sections")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=JSON",
                   help=f"override one setting of the mode, e.g. device=\"cpu\" or batch=32; keys: {sorted(SETTINGS['full'])}")
    args = p.parse_args(argv)
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        p.error(f"missing Python packages: {', '.join(missing)} (diti's dependencies; see the docstring)")
    import torch

    s = dict(SETTINGS["quick" if args.quick else "full"])
    for item in args.setting:
        key, _, value = item.partition("=")
        if key not in s:
            p.error(f"unknown setting {key!r}; known: {sorted(s)}")
        try:
            s[key] = json.loads(value)
        except json.JSONDecodeError:
            p.error(f"--setting {item!r}: the value must be JSON (strings in double quotes)")
    if s["size"] not in runpy.run_path(str(BENCH / "train_step.py"))["SIZES"]:
        p.error(f"unknown size {s['size']!r}")
    if s["device"] == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device visible (torch.cuda.is_available() is False); use --quick on a CPU")
    device = torch.device(s["device"])
    check = Check(args.out, args.budget_s, "quick" if args.quick else "full", argv)
    check.result["settings"] = s
    check.section("machine", machine, device)
    eager = [n for n, (_, compiled, _) in VARIANTS.items() if not compiled]
    compiled = [n for n in VARIANTS if n not in eager]
    with tempfile.TemporaryDirectory() as tmp:
        # the compiled variant last: its compilation is the slowest part and the one the budget may cut
        steps_section(check, s, device, eager)
        check.section("data_loader", data_loader_section, s, device, Path(tmp), need_s=20)
        check.section("training_run", training_run_section, s, device, Path(tmp), need_s=60 if not args.quick else 0)
        steps_section(check, s, device, compiled)
        check.section("precision", precision_section, check.result["steps"])
    check.save()
    print(summary(check.result))
    if check.result["errors"]:
        raise SystemExit(1)
    return check.result


def summary(result: dict) -> str:
    lines = [f"gpu_check ({result['mode']}): {result['elapsed_s']:.0f} s, "
             f"{result.get('machine', {}).get('gpu', result.get('machine', {}).get('device', '?'))}"]
    for name, v in result.get("steps", {}).get("variants", {}).items():
        cells = []
        for m in ("ddpm", "diti"):
            r = v.get(m, {})
            cells.append(f"{m} {r['img_per_s']:.0f} img/s" if "img_per_s" in r else f"{m} {r.get('skipped') or r.get('error') or '-'}")
        ratio = f", DiTi/DDPM {v['ratio_diti_over_ddpm']:.2f}" if "ratio_diti_over_ddpm" in v else ""
        lines.append(f"  {name:<20} " + "; ".join(cells) + ratio if "skipped" not in v else f"  {name:<20} {v['skipped']}")
    for row in result.get("data_loader", {}).get("rows", []):
        lines.append(f"  loader, {row['workers']} workers: {row['img_per_s']:.0f} img/s")
    run = result.get("training_run", {})
    if "ok" in run:
        lines.append(f"  training run {run['steps']} steps (resumed at {run['resume_at']}): ok={run['ok']}, "
                     f"{run['img_per_s_median']:.0f} img/s")
    lines += [f"  error in {e['section']}: {e['error']}" for e in result.get("errors", [])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Scale-out on CPU: 2 processes (gloo) = 1 process with the same global batch; accumulation, bf16,
channels_last and torch.compile run through the same trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import quick_cfg
from diti.training.jobs import train_diti


def final_weights(run, steps):
    return load_file(run / f"checkpoints/step-{steps:08d}/model.safetensors")


def assert_close_weights(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, worst
    return worst


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, random_dm, shapes16):
    """torchrun --nproc_per_node 2 (gloo) with global batch 16 = one process with batch 16.

    Equal up to float summation order: the gradient is averaged by all-reduce instead of in one mean.
    """
    args = ["-m", "diti", "train", "--preset", "shapes-quick", "--dm", str(random_dm), "--data", str(shapes16),
            "--steps", "4", "-s", "train.batch_size=16", "-s", "train.progress=false", "-s", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    res = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_close_weights(final_weights(tmp_path / "one", 4), final_weights(tmp_path / "two", 4), atol=1e-5)
    meta = json.loads((tmp_path / "two" / "loss_per_t.json").read_text())
    assert sum(meta["count"]) == 4 * 16  # per-t histogram gathered from both processes


def test_gradient_accumulation_matches_the_full_batch(tmp_path, random_dm, shapes16):
    a = train_diti(quick_cfg(random_dm, shapes16, "train.steps=3"), tmp_path / "a")
    b = train_diti(quick_cfg(random_dm, shapes16, "train.steps=3", "train.grad_accum_steps=4"), tmp_path / "b")
    assert_close_weights(final_weights(a, 3), final_weights(b, 3), atol=1e-5)


def test_bf16_and_channels_last_on_cpu(tmp_path, random_dm, shapes16):
    ref = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2"), tmp_path / "ref")
    cl = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.channels_last=true"), tmp_path / "cl")
    assert_close_weights(final_weights(ref, 2), final_weights(cl, 2), atol=1e-4)
    bf = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.mixed_precision=bf16"), tmp_path / "bf")
    rows = [json.loads(x) for x in (bf / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # master weights stay float32 under autocast
    assert all(v.dtype == torch.float32 for v in final_weights(bf, 2).values())


def test_fp16_on_cpu_is_refused(random_dm, shapes16):
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        quick_cfg(random_dm, shapes16, "train.device=cpu", "train.mixed_precision=fp16")


@pytest.mark.slow
def test_compile_flag(tmp_path, random_dm, shapes16):
    ref = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2"), tmp_path / "ref")
    comp = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.compile=true"), tmp_path / "c")
    assert_close_weights(final_weights(ref, 2), final_weights(comp, 2), atol=1e-4)
    # checkpoints hold plain (uncompiled) names
    assert not any("_orig_mod" in k for k in final_weights(comp, 2))

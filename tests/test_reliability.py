"""Reliability: SIGKILL + resume is exact, bad input is refused with a message naming it, nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from conftest import quick_cfg
from diti.config import DiTiConfig, build_config
from diti.diffusion.schedule import NoiseSchedule
from diti.errors import CheckpointSaveError
from diti.folders import checkpoints as ckpt_module
from diti.folders import latest_checkpoint, list_checkpoints, load_diti_run
from diti.models.dm import load_dm, save_dm
from diti.partition import Partition, chunk_first_timesteps
from diti.training.jobs import train_diti


def snapshot(ckpt_dir):
    """{file: bytes} of every checkpoint file, to show nothing was touched."""
    return {p.relative_to(ckpt_dir): p.read_bytes() for p in sorted(ckpt_dir.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, random_dm, shapes16):
    """A training process killed with SIGKILL mid-run and resumed ends with the same weights as an
    uninterrupted run of the same seed (CPU)."""
    steps = 120
    base = [sys.executable, "-m", "diti", "train", "--preset", "shapes-quick", "--dm", str(random_dm),
            "--data", str(shapes16), "--steps", str(steps), "-s", "train.checkpoint_every=10",
            "-s", "train.progress=false", "-s", "train.keep_checkpoints=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*base, "--out", str(tmp_path / "full")], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = latest_checkpoint(killed / "checkpoints")
        if latest is not None and latest.name >= "step-00000030":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = latest_checkpoint(killed / "checkpoints").name
    assert stopped_at < f"step-{steps:08d}", "the run finished before it could be killed"
    subprocess.run([*base, "--out", str(killed), "--resume"], check=True, env=env, capture_output=True)

    final = f"checkpoints/step-{steps:08d}"
    for name in ("model", "ema", "optimizer"):
        a = load_file(tmp_path / "full" / final / f"{name}.safetensors")
        b = load_file(killed / final / f"{name}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), (name, stopped_at)
    # the log was truncated to the checkpoint and continued: one line per logged step, no duplicates
    steps_logged = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == sorted(set(steps_logged))


def test_no_space_left_leaves_no_corrupt_checkpoint(tmp_path, random_dm, shapes16, monkeypatch):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.checkpoint_every=2"), tmp_path / "run")
    before = snapshot(run / "checkpoints")
    calls = {"n": 0}
    original = ckpt_module.save_file

    def full_disk(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # fail in the middle of a checkpoint, after one file was written
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt_module, "save_file", full_disk)
    with pytest.raises(CheckpointSaveError, match=r"step 4 .*No space left on device.*step-00000002.* is intact"):
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=4", "train.checkpoint_every=2"), run, resume=True)
    assert snapshot(run / "checkpoints") == before  # no new folder, no .tmp left, pointer unchanged
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000002"]
    load_diti_run(run)  # still loadable


def test_incompatible_run_version_is_refused(tmp_path, random_dm, shapes16):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=1"), tmp_path / "run")
    meta = json.loads((run / "meta.json").read_text())
    meta.update(run_format=99, diti_version="9.0")
    (run / "meta.json").write_text(json.dumps(meta))
    before = snapshot(run / "checkpoints")
    with pytest.raises(ValueError, match=r"written by diti 9.0 with run format 99"):
        load_diti_run(run)
    with pytest.raises(ValueError, match=r"run format 99"):
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=2"), run, resume=True)
    assert snapshot(run / "checkpoints") == before


def test_dm_that_does_not_fit_the_data(tmp_path, shapes16):
    from diti.config import UNetConfig
    from diti.models.dm import build_unet

    cfg = UNetConfig(block_out_channels=[16, 32], attention_levels=[], norm_num_groups=8)
    dm32 = save_dm(build_unet(cfg, 32), tmp_path / "dm32", NoiseSchedule())
    with pytest.raises(ValueError, match=r"the data \(3 channels, 16px\) does not fit the DM \(3 channels, 32px\)"):
        train_diti(quick_cfg(dm32, shapes16, "train.steps=1", "data.resolution=16"), tmp_path / "run")
    gray = build_unet(cfg, 16)
    gray.register_to_config(in_channels=1, out_channels=1)
    gray.conv_in = torch.nn.Conv2d(1, 16, 3, padding=1)
    gray.conv_out = torch.nn.Conv2d(16, 1, 3, padding=1)
    dm1 = save_dm(gray, tmp_path / "dm1", NoiseSchedule())
    with pytest.raises(ValueError, match=r"does not fit the DM \(1 channels, 16px\)"):
        train_diti(quick_cfg(dm1, shapes16, "train.steps=1"), tmp_path / "run1")


def test_dm_with_a_different_schedule_is_refused(tmp_path, tiny_unet):
    dm = save_dm(tiny_unet, tmp_path / "dm", NoiseSchedule(1000, 1e-4, 0.012))
    with pytest.raises(ValueError, match=r"beta_end=0.012 \(ours 0.02\)"):
        load_dm(dm, NoiseSchedule())


class _Exploit:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_a_dm_is_refused(tmp_path, tiny_unet):
    """A DM folder whose .bin weights carry a pickled object that would run code is refused."""
    folder = tmp_path / "evil"
    tiny_unet.save_pretrained(folder, safe_serialization=False)
    marker = tmp_path / "pwned"
    state = dict(torch.load(folder / "diffusion_pytorch_model.bin", weights_only=True))
    state["payload"] = _Exploit(str(marker))
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|pickle|global"):
        load_dm(folder)
    assert not marker.exists()


def test_configs_are_data_not_code(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        build_config(DiTiConfig, file=f)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------------------------------
@st.composite
def partitions(draw):
    timesteps = draw(st.sampled_from([10, 100, 1000]))
    k = draw(st.integers(1, min(timesteps, 64)))
    if draw(st.booleans()):
        d = draw(st.integers(k, 256))
        return Partition(d, k, timesteps)
    m = draw(st.integers(1, min(k, 5)))
    # stage boundaries just after chunk starts, so that every stage holds at least one chunk's first step
    firsts = chunk_first_timesteps(k, timesteps)
    cuts = sorted(draw(st.sets(st.sampled_from(firsts[1:]), min_size=m - 1, max_size=m - 1))) if k > 1 else []
    stages = [*cuts, timesteps]
    dims = draw(st.lists(st.integers(1, 64), min_size=len(stages), max_size=len(stages)))
    return Partition(sum(dims), k, timesteps, stages, dims)


@settings(max_examples=150, deadline=None)
@given(partitions())
def test_partition_properties(p):
    ends, starts = p.chunk_end_dims, p.chunk_start_dims
    # chunks tile [0, d) exactly, in order
    assert starts[0] == 0 and ends[-1] == p.latent_dim
    assert all(a <= b for a, b in zip(starts, ends, strict=True)) and starts[1:] == ends[:-1]
    # every stage ends at cumsum(dims)
    for (lo, hi), j in zip(p.stage_dim_ranges, range(p.num_stages), strict=True):
        chunks = [c for c in range(p.k) if p.stage_of_chunk[c] == j]
        assert chunks and starts[chunks[0]] == lo and ends[chunks[-1]] == hi
    cum, prev, cur = p.masks()
    # masks are cumulative in t; stop_grad's masks split the used dims into earlier chunks and the current one
    assert torch.all(cum[1:] >= cum[:-1])
    assert torch.equal(prev + cur, cum) and torch.all(prev * cur == 0)
    assert torch.all(cum[-1] == 1)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 128), st.sampled_from([10, 1000]))
def test_k1_equals_pdae(d, timesteps):
    p = Partition(d, 1, timesteps)
    z = torch.randn(3, d)
    t = torch.randint(0, timesteps, (3,))
    assert torch.equal(p.apply(z, t, "base"), z) and torch.equal(p.apply(z, t, "stop_grad"), z)


# ---------------------------------------------------------------------------------------------------
# Bad input through the command line: one line naming the problem (exit 2), existing checkpoints intact.
@pytest.fixture
def folder_run(tmp_path, random_dm, shapes16):
    """A 2-step run on an image-folder copy of the shapes data (PNG files + attributes.csv)."""
    from PIL import Image
    from typer.testing import CliRunner

    from diti.cli.main import app
    from diti.data import open_dataset

    data = tmp_path / "folder"
    data.mkdir()
    ds = open_dataset(shapes16, "train")
    images = ds.images(list(range(24)))
    rows = ["file," + ",".join(ds.attributes.names)]
    for i, im in enumerate(images):
        Image.fromarray(im).save(data / f"{i:03d}.png")
        rows.append(f"{i:03d}.png," + ",".join(str(v) for v in ds.attributes.values[i]))
    (data / "attributes.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    args = ["train", "--preset", "shapes-quick", "--dm", str(random_dm), "--data", str(data), "--out", str(run),
            "--steps", "2", "-s", "train.batch_size=8", "-s", "train.progress=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return run, data


def _corrupt(data):
    (data / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")


def _truncate(data):
    raw = (data / "007.png").read_bytes()
    (data / "007.png").write_bytes(raw[: len(raw) // 2])


def _drop_attribute_row(data):
    lines = (data / "attributes.csv").read_text().splitlines()
    (data / "attributes.csv").write_text("\n".join(line for line in lines if not line.startswith("003.png")) + "\n")


def _old_run_format(run):
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "run_format": 0, "diti_version": "0.0.1"}))


@pytest.mark.parametrize(
    "damage, extra, message",
    [
        (_corrupt, [], r"cannot read image .*005\.png"),
        (_truncate, [], r"cannot read image .*007\.png"),
        (_drop_attribute_row, [], r"003\.png"),
        (None, ["-s", "train.lr_rate=1"], r"unknown config key 'train.lr_rate'"),
        (None, ["-s", "train.lr=fast"], r"train.lr: expected a number"),
        (None, ["-s", "partition.k=0"], r"k must be in \[1, timesteps=1000\], got k=0"),
        (None, ["-s", "partition.k=17"], r"k <= latent_dim"),
        (None, ["-s", "data.resolution=32"], r"data.resolution differ from its config.yaml"),
        ("meta", [], r"written by diti 0.0.1 with run format 0"),
    ],
    ids=["corrupt-image", "truncated-image", "missing-attribute-row", "unknown-key", "wrong-type",
         "k-zero", "k-above-d", "wrong-resolution", "old-run-format"],
)
def test_bad_input_on_resume_names_the_problem_and_keeps_checkpoints(folder_run, damage, extra, message):
    from typer.testing import CliRunner

    from diti.cli.main import app

    run, data = folder_run
    before = snapshot(run / "checkpoints")
    if damage == "meta":
        _old_run_format(run)
    elif damage is not None:
        damage(data)
    result = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", "4", *extra])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output), result.output
    assert "Traceback" not in result.output
    assert snapshot(run / "checkpoints") == before


def test_grayscale_rgba_and_16bit_images_are_converted(tmp_path, random_dm):
    """Not errors: such images are converted to RGB (alpha composited on white, 16 bit scaled to 8)."""
    from PIL import Image
    from typer.testing import CliRunner

    from diti.cli.main import app

    data = tmp_path / "mixed"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8), "L").save(data / f"g{i}.png")
        Image.fromarray(rng.integers(0, 255, (20, 20, 4), dtype=np.uint8), "RGBA").save(data / f"a{i}.png")
        Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(data / f"w{i}.png")
    result = CliRunner().invoke(app, ["train", "--preset", "shapes-quick", "--dm", str(random_dm), "--data", str(data),
                                      "--out", str(tmp_path / "run"), "--steps", "2", "-s", "train.batch_size=4",
                                      "-s", "train.progress=false", "-s", "data.resolution=16"])
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000002"


def test_resume_past_a_corrupt_image_with_skip_unreadable(folder_run, caplog):
    """The corrupt file that stopped the run is skipped on resume, with a warning naming it."""
    import logging

    from typer.testing import CliRunner

    from diti.cli.main import app

    run, data = folder_run
    _corrupt(data)
    args = ["train", "--out", str(run), "--resume", "--steps", "4"]
    stopped = CliRunner().invoke(app, args)
    assert stopped.exit_code == 2 and "005.png" in stopped.output and "data.skip_unreadable=true" in stopped.output
    with caplog.at_level(logging.WARNING, logger="diti.data.datasets"):
        result = CliRunner().invoke(app, [*args, "-s", "data.skip_unreadable=true"])
    assert result.exit_code == 0, result.output
    assert latest_checkpoint(run / "checkpoints").name == "step-00000004"
    assert any("005.png" in r.getMessage() and "skip_unreadable" in r.getMessage() for r in caplog.records)

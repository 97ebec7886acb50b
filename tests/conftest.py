"""Shared fixtures: tiny shapes data and a tiny DM trained once per session (nothing is downloaded)."""

from __future__ import annotations

import json

import pytest
import torch

from diti.config import PretrainConfig, UNetConfig, build_config
from diti.data import generate_shapes
from diti.models.dm import build_unet
from diti.training.jobs import pretrain

QUICK_UNET = UNetConfig(block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8, attention_head_dim=8)


# Test tensors are tiny: one intra-op thread avoids OpenMP synchronisation that costs more than it saves
# (and that stalls badly when the machine's 2 cores are shared).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shapes16(tmp_path_factory):
    """256 train / 64 test shapes images at 16 px."""
    return generate_shapes(tmp_path_factory.mktemp("shapes16"), resolution=16, n_train=256, n_test=64, seed=0,
                           progress=False)


@pytest.fixture(scope="session")
def trained_dm(tmp_path_factory, shapes16):
    """A tiny DDPM trained for 300 steps on shapes16 (~20 s): good enough for DDIM round trips."""
    out = tmp_path_factory.mktemp("dm") / "run"
    cfg = build_config(PretrainConfig, "shapes-quick", overrides=[
        f"data.path={json.dumps(str(shapes16))}", "train.steps=300", "train.batch_size=32",
        "train.checkpoint_every=300", "train.progress=false"])
    return pretrain(cfg, out)


@pytest.fixture
def tiny_unet():
    """A randomly initialised 16 px UNet2DModel with attention in its last down block."""
    return build_unet(QUICK_UNET, 16)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shapes16):
    """A DiTi run (k=4, d=16) trained for 4 steps on a random 16 px DM: for smoke tests of the evaluation."""
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import save_dm
    from diti.training.jobs import train_diti

    root = tmp_path_factory.mktemp("tiny_run")
    torch.manual_seed(0)
    dm = save_dm(build_unet(QUICK_UNET, 16), root / "dm", NoiseSchedule())
    return train_diti(quick_cfg(dm, shapes16, "train.steps=4"), root / "run")


@pytest.fixture
def random_dm(tmp_path, tiny_unet):
    """A randomly initialised 16 px DM saved as a diffusers pipeline folder."""
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import save_dm

    return save_dm(tiny_unet, tmp_path / "dm", NoiseSchedule())


def quick_cfg(dm, data, *overrides):
    """The shapes-quick DiTi config on ``dm`` and ``data``, without progress bars, plus overrides."""
    from diti.config import DiTiConfig

    return build_config(DiTiConfig, "shapes-quick", overrides=[
        f"dm={json.dumps(str(dm))}", f"data.path={json.dumps(str(data))}", "train.progress=false", *overrides])

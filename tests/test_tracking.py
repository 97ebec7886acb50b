"""train.log_with: the training log in TensorBoard (read back from the event files), wandb offline if installed."""

import importlib.util
import json

import numpy as np
import pytest

from conftest import quick_cfg
from diti.config.loader import ConfigError
from diti.training.jobs import train_diti
from diti.training.tracking import check_tracker, flat_config, image_strip, loss_bins


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # RUN/logs/diti: the run's events (the hyperparameters go to a sub-folder of their own)
    acc = EventAccumulator(str(logdir / "diti"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_the_scalars_of_metrics_jsonl_the_loss_per_t_and_the_reconstructions(
        tmp_path, random_dm, shapes16):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=6", "train.log_every=2", "train.batch_size=8",
                               "train.log_with=tensorboard", "train.image_every=4"), tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # still written
    events = _events(run / "logs")
    tags = events.Tags()
    for key in ("loss", "img_per_s", "images", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows], key
    bins = [t for t in tags["scalars"] if t.startswith("loss_t/")]
    assert bins and all(t[len("loss_t/"):].count("-") == 1 for t in bins)
    assert all(np.isfinite(e.value) and e.value > 0 for t in bins for e in events.Scalars(t))
    # the windows together cover every draw: the bins logged are those the run's per-t histogram has draws in
    hist = json.loads((run / "loss_per_t.json").read_text())
    count = np.array(hist["count"])
    assert set(bins) == {f"loss_t/{lo:03d}-{lo + 99:03d}" for lo in range(0, 1000, 100) if count[lo:lo + 100].sum()}
    images = events.Images("preview")
    assert [im.step for im in images] == [4, 6]  # every image_every steps and the last
    # originals above, reconstructions below: two rows of 8 images of 16 px
    assert (images[0].height, images[0].width) == (2 * 16, 8 * 16)
    assert any(t.startswith("train.") for t in _hparams(run / "logs"))


def test_the_preview_is_left_out_of_img_per_s(tmp_path, random_dm, shapes16, monkeypatch):
    """A preview that takes 1000 s (a fake clock) leaves the throughput of its log window unchanged."""
    import time
    import types

    import diti.training.trainer as trainer
    from diti.training.tracking import Tracking

    clock = {"offset": 0.0}
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + clock["offset"]))
    image = Tracking.image

    def slow_image(self, module, step):
        image(self, module, step)
        clock["offset"] += 1000.0

    monkeypatch.setattr(Tracking, "image", slow_image)
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=6", "train.log_every=2", "train.batch_size=8",
                               "train.log_with=tensorboard", "train.image_every=4"), tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert clock["offset"] == 2000.0 and [r["step"] for r in rows] == [2, 4, 6]
    # with the preview inside, the windows of steps 4 and 6 would show at most 16 / 1000 images per second
    assert min(r["img_per_s"] for r in rows) > 0.5, rows


def _hparams(logdir):
    import yaml

    (path,) = logdir.rglob("hparams.yml")
    return yaml.safe_load(path.read_text())


def test_no_tracker_writes_no_logs_folder(tmp_path, random_dm, shapes16):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.batch_size=4"), tmp_path / "run")
    assert not (run / "logs").exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed (optional)")
def test_wandb_offline(tmp_path, random_dm, shapes16, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.log_every=1", "train.batch_size=4",
                         "train.log_with=wandb", "train.image_every=2"), tmp_path / "run")
    assert list(tmp_path.rglob("*.wandb"))


def test_a_missing_tracker_package_is_named(monkeypatch):
    import diti.training.tracking as tracking

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="train.log_with=wandb needs the wandb package"):
        check_tracker("wandb")


def test_helpers():
    assert flat_config({"train": {"lr": 1e-3, "betas": [0.9, 0.99], "clip": None}, "dm": "x"}) == {
        "train.lr": 1e-3, "train.betas": "[0.9, 0.99]", "train.clip": "None", "dm": "x"}
    total, count = np.zeros(1000), np.zeros(1000, dtype=np.int64)
    total[[5, 95, 500]], count[[5, 95, 500]] = [1.0, 3.0, 8.0], [1, 1, 2]
    assert loss_bins(total, count) == {"loss_t/000-099": 2.0, "loss_t/500-599": 4.0}
    import torch

    strip = image_strip([torch.full((3, 1, 4, 4), -1.0), torch.ones(3, 1, 4, 4)])
    assert strip.shape == (8, 12, 3) and strip[:4].max() == 0 and strip[4:].min() == 255


def test_a_dm_pretraining_logs_samples_from_fixed_noise(tmp_path, shapes16):
    from diti.config import PretrainConfig, build_config
    from diti.training.jobs import pretrain

    cfg = build_config(PretrainConfig, "shapes-quick", overrides=[
        f"data.path={json.dumps(str(shapes16))}", "train.steps=2", "train.batch_size=4", "train.log_every=1",
        "train.progress=false", "train.log_with=tensorboard", "train.image_every=1"])
    pretrain(cfg, tmp_path / "dm")
    events = _events(tmp_path / "dm" / "logs")
    images = events.Images("preview")
    assert [im.step for im in images] == [1, 2] and (images[0].height, images[0].width) == (16, 8 * 16)
    assert [e.step for e in events.Scalars("loss")] == [1, 2]


def test_logging_changes_nothing_of_the_training(tmp_path, random_dm, shapes16):
    import torch
    from safetensors.torch import load_file

    common = ("train.steps=4", "train.batch_size=8", "train.checkpoint_every=4")
    plain = train_diti(quick_cfg(random_dm, shapes16, *common), tmp_path / "plain")
    logged = train_diti(quick_cfg(random_dm, shapes16, *common, "train.log_with=tensorboard", "train.image_every=2",
                                  "train.log_every=1"), tmp_path / "logged")
    a, b = (load_file(run / "checkpoints/step-00000004/model.safetensors") for run in (plain, logged))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the previews draw no shared randomness

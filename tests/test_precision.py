"""bf16 training on the CPU and ``train.mixed_precision: auto`` (training/precision.py)."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import quick_cfg
from diti.training import precision
from diti.training.jobs import train_diti


def test_a_bf16_run_checkpoints_float32_and_resumes_bit_identically(tmp_path, random_dm, shapes16):
    def cfg(steps):
        return quick_cfg(random_dm, shapes16, f"train.steps={steps}", "train.checkpoint_every=2",
                         "train.mixed_precision=bf16")

    full = train_diti(cfg(4), tmp_path / "full")
    part = train_diti(cfg(2), tmp_path / "part")
    train_diti(cfg(4), part, resume=True)
    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(r / f"checkpoints/step-00000004/{name}.safetensors") for r in (full, part))
        assert a.keys() == b.keys()
        assert all(v.dtype == torch.float32 for v in a.values())
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert yaml.safe_load((full / "config.yaml").read_text())["train"]["mixed_precision"] == "bf16"


def test_auto_falls_back_to_float32_with_one_line_where_bf16_is_not_native(tmp_path, random_dm, shapes16,
                                                                           monkeypatch, caplog):
    monkeypatch.setattr(precision, "bf16_support", lambda device: (False, "the CPU lacks bf16 (mocked)"))
    with caplog.at_level(logging.WARNING, logger="diti.training.precision"):
        run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.mixed_precision=auto"),
                         tmp_path / "fp32")
    lines = [r.getMessage() for r in caplog.records if r.name == "diti.training.precision"]
    assert len(lines) == 1 and "float32" in lines[0] and "the CPU lacks bf16 (mocked)" in lines[0]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["mixed_precision"] == "no"
    # ... and the same steps as an explicit float32 run, bit for bit
    plain = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2"), tmp_path / "plain")
    a, b = (load_file(r / "checkpoints/step-00000002/model.safetensors") for r in (run, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_takes_bf16_where_it_is_native_and_the_report_names_it(tmp_path, random_dm, shapes16, monkeypatch):
    from diti.evaluation.report import write_report

    monkeypatch.setattr(precision, "bf16_support", lambda device: (True, "mocked"))
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.mixed_precision=auto"), tmp_path / "run")
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["mixed_precision"] == "bf16"
    # resuming with auto on the same machine keeps the experiment
    train_diti(quick_cfg(random_dm, shapes16, "train.steps=3", "train.mixed_precision=auto"), run, resume=True)
    page = write_report([run], tmp_path / "r.html").read_text()
    assert "training precision" in page and "bf16 autocast" in page


def test_resolution_of_the_setting():
    assert precision.resolve_mixed_precision("no", "auto") == "no"
    assert precision.resolve_mixed_precision("bf16", "cpu") == "bf16"
    ok, why = precision.bf16_support(torch.device("cpu"))
    assert isinstance(ok, bool) and why
    assert precision.resolve_mixed_precision("auto", "cpu") == ("bf16" if ok else "no")
    assert precision.training_device("cpu").type == "cpu"


@pytest.mark.parametrize("value", ["fp8", "half"])
def test_unknown_precision_is_refused(random_dm, shapes16, value):
    from diti.config.loader import ConfigError

    with pytest.raises((ConfigError, ValueError), match="mixed_precision"):
        quick_cfg(random_dm, shapes16, f"train.mixed_precision={value}")


def test_the_frozen_forward_stays_float32_under_autocast(random_dm):
    from diti.models.dm import load_dm
    from diti.models.shift_decoder import ShiftDecoder

    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 900])
    exact = ShiftDecoder(load_dm(random_dm), 8).frozen_features(x, t)
    for frozen_fp32, dtype in ((True, torch.float32), (False, torch.bfloat16)):
        decoder = ShiftDecoder(load_dm(random_dm), 8, frozen_fp32=frozen_fp32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = decoder.frozen_features(x, t)
            shift = decoder.shift(feats, torch.randn(2, 8))
        assert feats.eps.dtype == dtype and feats.h.dtype == torch.bfloat16  # the features once in bf16
        assert shift.dtype == torch.bfloat16  # the trainable path runs in bf16 either way
        if frozen_fp32:
            assert torch.equal(feats.eps, exact.eps)  # the same float32 forward as without autocast
        else:
            assert not torch.equal(feats.eps.float(), exact.eps)

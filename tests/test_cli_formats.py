"""Each real data format and a converted official DM, through the command line (tiny fixtures)."""

import json

import numpy as np
import torch
from typer.testing import CliRunner

from diti.cli.main import app
from diti.data import detect_format
from test_data_formats import CELEBA_FILES, _celeba_lmdb, _write_celeba_tables, celeba_root, lfw_root  # noqa: F401

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def train_quick(dm, data, out, *extra):
    invoke("train", "--preset", "shapes-quick", "--dm", dm, "--data", data, "--out", out, "--steps", 2,
           "-s", "train.progress=false", "-s", "train.batch_size=4", "-s", "data.resolution=16", *extra)
    return out


def test_celeba_folder_train_and_official_probe(celeba_root, random_dm, tmp_path):  # noqa: F811
    run = train_quick(random_dm, celeba_root, tmp_path / "run")
    assert detect_format(celeba_root) == "celeba"  # detected, so the config may leave data.format unset
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses and all(np.isfinite(losses))
    out = invoke("probe", run, "--data", celeba_root, "--preset", "celeba", "--epochs", 2)
    probe = json.loads((run / "eval" / "probe.json").read_text())
    assert probe["task"] == "binary" and len(probe["names"]) == 40 and "5_o_Clock_Shadow" in out
    assert set(probe["mean"]) == {"ap", "accuracy"}
    # the flip augmentation of the protocol encoded the flipped train split too
    assert (run / "eval" / "features" / "train-flip.npy").is_file()
    feats = json.loads((run / "eval" / "features" / "valid.json").read_text())
    assert feats["split"] == "valid" and feats["n"] == 2


def test_celeba_lmdb_encode(tmp_path, random_dm, shapes16):
    lmdb_dir = tmp_path / "celeba.lmdb"
    _celeba_lmdb(lmdb_dir, CELEBA_FILES)
    _write_celeba_tables(lmdb_dir, CELEBA_FILES)
    run = train_quick(random_dm, shapes16, tmp_path / "run")
    invoke("encode", run, "--data", lmdb_dir, "--split", "test", "--out", tmp_path / "z.npy")
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (3, 16)
    header = (tmp_path / "z.attributes.csv").read_text().splitlines()[0]
    assert header.startswith("index,5_o_Clock_Shadow")
    # training directly on the LMDB works too
    train_quick(random_dm, lmdb_dir, tmp_path / "run-lmdb")


def test_lfw_regression_probe(lfw_root, tiny_run):  # noqa: F811
    root, _ = lfw_root
    out = invoke("probe", tiny_run, "--data", root, "--preset", "lfw", "--epochs", 2, "--out",
                 tiny_run / "eval" / "lfw.json")
    result = json.loads((tiny_run / "eval" / "lfw.json").read_text())
    assert result["task"] == "regression" and set(result["mean"]) == {"pearson_r", "mse"}
    assert "pearson_r" in out


def test_converted_official_dm_trains(tmp_path, shapes16):
    """A guided-diffusion checkpoint -> `diti convert-dm` -> `diti train --dm` on it."""
    from test_convert import PDAE_CONFIG, PDAE_REFERENCE, build_reference, write_dm

    ckpt = write_dm(tmp_path / "official", build_reference(0, **PDAE_REFERENCE), PDAE_CONFIG)
    invoke("convert-dm", ckpt, "--out", tmp_path / "dm")
    run = train_quick(tmp_path / "dm", shapes16, tmp_path / "run")
    assert (run / "checkpoints" / "latest").is_file()
    state = json.loads((run / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["step"] == 2 and torch.isfinite(torch.tensor(sum(state["loss_sum"])))

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import quick_cfg
from diti.errors import TrainingDiverged
from diti.training.checkpoint import latest_checkpoint, list_checkpoints
from diti.training.jobs import load_diti_run, train_diti
from diti.training.randomness import GlobalBatchSampler, global_batch_indices, step_noise


def test_train_writes_a_complete_run(tmp_path, random_dm, shapes16):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=6", "train.checkpoint_every=3",
                               "train.log_every=2"), tmp_path / "run")
    assert (run / "config.yaml").is_file() and (run / "meta.json").is_file()
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000003", "step-00000006"]
    assert latest_checkpoint(run / "checkpoints").name == "step-00000006"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    hist = json.loads((run / "loss_per_t.json").read_text())
    assert sum(hist["count"]) == 6 * 16 and len(hist["mean_loss"]) == 1000
    model, cfg = load_diti_run(run)
    assert cfg.data.resolution == 16 and cfg.partition.latent_dim == 16
    assert model.encode(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    # checkpoints hold only the trainable weights, never the frozen DM
    assert not any(k.startswith("decoder.dm.") for k in load_file(run / "checkpoints/step-00000006/model.safetensors"))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, random_dm, shapes16):
    full = train_diti(quick_cfg(random_dm, shapes16, "train.steps=8", "train.checkpoint_every=4"), tmp_path / "full")
    part = train_diti(quick_cfg(random_dm, shapes16, "train.steps=4", "train.checkpoint_every=4"), tmp_path / "part")
    train_diti(quick_cfg(random_dm, shapes16, "train.steps=8", "train.checkpoint_every=4"), part, resume=True)
    for name in ("model", "ema", "optimizer"):
        a = load_file(full / f"checkpoints/step-00000008/{name}.safetensors")
        b = load_file(part / f"checkpoints/step-00000008/{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)


def test_existing_run_needs_resume_and_same_experiment(tmp_path, random_dm, shapes16):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2"), tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=2"), run)
    with pytest.raises(ValueError, match="partition.k"):
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=4", "partition.k=2"), run, resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, random_dm, shapes16, monkeypatch):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.checkpoint_every=2"), tmp_path / "run")
    before = (run / "checkpoints/step-00000002/model.safetensors").read_bytes()
    from diti.models import diti as diti_module

    original = diti_module.shift_per_sample
    monkeypatch.setattr(diti_module, "shift_per_sample", lambda *a: original(*a) * float("nan"))
    with pytest.raises(TrainingDiverged, match="at step 3"):
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=4", "train.checkpoint_every=2"), run, resume=True)
    assert latest_checkpoint(run / "checkpoints").name == "step-00000002"
    assert (run / "checkpoints/step-00000002/model.safetensors").read_bytes() == before


def test_randomness_is_a_function_of_seed_and_step():
    a = step_noise(8, (3, 4, 4), 1000, step=5, seed=1)
    b = step_noise(8, (3, 4, 4), 1000, step=5, seed=1)
    c = step_noise(8, (3, 4, 4), 1000, step=6, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])
    # the global batches of consecutive steps walk through an epoch without repeats
    seen = torch.cat([global_batch_indices(10, 5, s, seed=0) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))


def test_sampler_shards_the_global_batch():
    whole = list(GlobalBatchSampler(20, 8, seed=0, start_step=0, end_step=3))
    ranks = [list(GlobalBatchSampler(20, 8, 0, 0, 3, rank=r, world=2, accum=2)) for r in range(2)]
    for step in range(3):
        # micro-batch a of rank r is slice (a * world + r) of the global batch
        parts = [ranks[r][step * 2 + a] for a in range(2) for r in range(2)]
        assert sum(parts, []) == whole[step]


def test_objective_options_change_weighting_and_sampling(tmp_path, random_dm, shapes16):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=4", "partition.stages=[100,1000]",
                               "partition.dims_per_stage=[4,12]", "objective.timestep_sampling=stage_balanced",
                               "objective.weighting=uniform"), tmp_path / "run")
    counts = json.loads((run / "loss_per_t.json").read_text())["count"]
    # half of the sampled t fall in the first stage (t < 100), a tenth of the range
    assert 0.3 < sum(counts[:100]) / sum(counts) < 0.7
    model, cfg = load_diti_run(run)
    assert cfg.objective.weighting == "uniform" and torch.equal(model.loss_weight, torch.ones(1000))

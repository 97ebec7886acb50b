import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import quick_cfg
from diti.errors import TrainingDiverged
from diti.folders import latest_checkpoint, list_checkpoints, load_diti_run
from diti.training.jobs import train_diti
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


def test_data_stored_at_another_resolution_than_the_dms_is_resized_with_a_warning(tmp_path, shapes16, random_dm,
                                                                                  caplog):
    from conftest import QUICK_UNET
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import build_unet, save_dm

    dm32 = save_dm(build_unet(QUICK_UNET, 32), tmp_path / "dm32", NoiseSchedule())
    with caplog.at_level("WARNING", logger="diti.training.jobs"):
        train_diti(quick_cfg(dm32, shapes16, "train.steps=1", "train.batch_size=4"), tmp_path / "run")
    assert f"the data {shapes16} is stored at 16 px; every image is resized to 32 px (the DM's resolution) with " \
           "bicubic resampling" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="diti.training.jobs"):  # data at the DM's resolution: no word
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=1", "train.batch_size=4"), tmp_path / "same")
    assert "resized" not in caplog.text


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


def test_a_run_killed_before_its_first_checkpoint_restarts_its_log_too(tmp_path, random_dm, shapes16):
    cfg = quick_cfg(random_dm, shapes16, "train.steps=4", "train.checkpoint_every=4", "train.log_every=2")
    run = train_diti(cfg, tmp_path / "run")
    for path in (run / "checkpoints").iterdir():  # as if killed after logging step 2, before the checkpoint
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train_diti(cfg, run, resume=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]


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


# ---------------------------------------------------------------------------------------------------
# The GPU-ready loop: workers, device-side NaN guard, bf16 + compile (exercised on CPU)
def test_workers_give_the_same_weights_as_the_main_thread(tmp_path, random_dm, shapes16):
    runs = {n: train_diti(quick_cfg(random_dm, shapes16, "train.steps=3", "train.grad_accum_steps=2",
                                    "data.hflip=true", f"data.num_workers={n}"), tmp_path / f"w{n}")
            for n in (0, 2)}
    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(r / f"checkpoints/step-00000003/{name}.safetensors") for r in runs.values())
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_loader_defaults_per_device():
    from diti.data import open_dataset
    from diti.training.loader import StepBatches, StepBatchSampler, default_num_workers, step_loader

    assert default_num_workers(torch.device("cpu")) == 0
    assert 1 <= default_num_workers(torch.device("cuda")) <= 8
    sampler = StepBatchSampler(10, 4, 0, 0, 2)
    keys = list(sampler)
    assert [k[:2] for k in keys] == [(0, 0), (1, 0)] and keys[0][2] == list(GlobalBatchSampler(10, 4, 0, 0, 1))[0]
    ds = torch.utils.data.TensorDataset(torch.zeros(10))
    cuda = step_loader(StepBatches(ds, 4, (3, 4, 4), 1000, 0), sampler, 2, torch.device("cuda"))
    assert cuda.pin_memory and cuda.persistent_workers and cuda.num_workers == 2 and cuda.prefetch_factor == 4
    cpu = step_loader(StepBatches(ds, 4, (3, 4, 4), 1000, 0), sampler, 0, torch.device("cpu"))
    assert not cpu.pin_memory and not cpu.persistent_workers
    del open_dataset


def test_micro_batches_carry_the_steps_draws(shapes16):
    from diti.data import open_dataset
    from diti.training.loader import StepBatches, StepBatchSampler

    ds = open_dataset(shapes16, "train")
    batches = StepBatches(ds, 8, (3, 16, 16), 1000, seed=3, hflip=True, world=1, accum=2)
    key = next(k for k in StepBatchSampler(len(ds), 8, 3, 5, 6, accum=2) if k[1] == 1)
    micro = batches.__getitems__(key)
    t, noise, flip = step_noise(8, (3, 16, 16), 1000, step=5, seed=3)
    assert torch.equal(micro["t"], t[4:]) and torch.equal(micro["noise"], noise[4:])
    x = ds.__getitems__(key[2])
    assert torch.equal(micro["x0"], torch.where(flip[4:, None, None, None], x.flip(-1), x))


def test_the_host_reads_the_device_only_at_log_and_checkpoint_steps(tmp_path, random_dm, shapes16, monkeypatch):
    from diti.training.trainer import Trainer

    calls = []
    original = Trainer._read_back
    monkeypatch.setattr(Trainer, "_read_back", lambda self: calls.append(self.step) or original(self))
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=7", "train.log_every=3",
                               "train.checkpoint_every=4"), tmp_path / "run")
    assert calls == [3, 4, 6, 7]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6, 7] and all(r["loss"] > 0 for r in rows)
    assert sum(json.loads((run / "loss_per_t.json").read_text())["count"]) == 7 * 16


def test_nan_guard_names_the_first_bad_step_though_it_reads_back_later(tmp_path, random_dm, shapes16,
                                                                      monkeypatch):
    from diti.models import diti as diti_module

    original = diti_module.shift_per_sample
    calls = {"n": 0}

    def nan_from_the_third_step(*args):
        calls["n"] += 1
        return original(*args) * (float("nan") if calls["n"] >= 3 else 1.0)

    monkeypatch.setattr(diti_module, "shift_per_sample", nan_from_the_third_step)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 3; stopped at step 5 without saving"):
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=8", "train.log_every=5",
                             "train.checkpoint_every=5"), tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints") is None


def test_bf16_and_compile_keep_checkpoints_uncompiled_and_float32(tmp_path, random_dm, shapes16, monkeypatch):
    compiled = []

    class Compiled(torch.nn.Module):
        """What torch.compile returns, as far as checkpoints can tell: the module under `_orig_mod`.
        (Tracing the model for real takes ~30 s on CPU; benchmarks/gpu_check.py compiles it on a GPU.)"""

        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, *args):
            return self._orig_mod(*args)

    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(Compiled(model)) or compiled[-1])
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.mixed_precision=bf16",
                               "train.compile=true", "train.channels_last=true"), tmp_path / "run")
    assert compiled, "train.compile did not compile the module"
    for name in ("model", "ema"):
        state = load_file(run / f"checkpoints/step-00000002/{name}.safetensors")
        assert all(v.dtype == torch.float32 for v in state.values())
        assert not any("_orig_mod" in k or k.startswith("module.") for k in state)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] > 0
    model, _ = load_diti_run(run)
    assert model.encode(torch.zeros(1, 3, 16, 16)).dtype == torch.float32
    # autocast did run in bf16: the same 2 steps in fp32 end elsewhere
    fp32 = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.channels_last=true"), tmp_path / "fp32")
    a, b = (load_file(r / "checkpoints/step-00000002/model.safetensors") for r in (run, fp32))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_an_unreadable_image_in_a_worker_ends_with_one_line(tmp_path, random_dm, shapes16):
    from PIL import Image

    from diti.data import open_dataset

    data = tmp_path / "folder"
    data.mkdir()
    for i, im in enumerate(open_dataset(shapes16, "train").images(list(range(16)))):
        Image.fromarray(im).save(data / f"{i:03d}.png")
    (data / "007.png").write_bytes(b"broken")
    with pytest.raises(ValueError) as info:
        train_diti(quick_cfg(random_dm, data, "train.steps=2", "data.num_workers=2", "data.resolution=16"),
                   tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert "cannot read image" in message and "007.png" in message and "(step 1)" in message
    assert "diti data check" in message and "data.skip_unreadable=true" in message

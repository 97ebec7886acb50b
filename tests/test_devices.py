"""The training loop with the module on another device than the one its state was made on, without a GPU.

The ``meta`` device stands in for a GPU: a CPU tensor meeting a meta tensor raises, and a meta tensor cannot be
read by the host (``.item()``, ``.tolist()``, ``.cpu()``, ``bool()`` all raise). A training step that runs on
it therefore proves that every state follows the module to its device and that the step reads nothing back
outside the documented read-back (``Trainer._read_back``, every ``log_every`` steps and before checkpoints).
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from conftest import quick_cfg
from diti.training import trainer as trainer_module
from diti.training.jobs import train_diti
from diti.training.timesteps import ChunkNormalizedSampler, LossAwareSampler
from diti.training.trainer import Trainer

META = torch.device("meta")


class MetaAccelerator(Accelerator):
    """accelerate on the CPU, but placing the module on the meta device (as it would place it on a GPU)."""

    @property
    def device(self) -> torch.device:
        return META


def _meta_accelerator(cfg, out=None):
    AcceleratorState._reset_state(reset_partial_state=False)
    return MetaAccelerator(cpu=True, mixed_precision=cfg.mixed_precision)


@pytest.fixture
def on_meta(monkeypatch):
    """train_diti on the meta device; the read-back (the one host sync) and the checkpoint writes are skipped,
    and the trainer is kept for inspection."""
    seen = {}
    original_run = Trainer.run

    def run(self, *args):
        seen["trainer"] = self
        return original_run(self, *args)

    monkeypatch.setattr(trainer_module, "make_accelerator", _meta_accelerator)
    monkeypatch.setattr(Trainer, "run", run)
    monkeypatch.setattr(Trainer, "_read_back", lambda self: 0.0)
    monkeypatch.setattr(Trainer, "save", lambda self: None)
    return seen


def _states_on_meta(trainer: Trainer) -> None:
    assert all(p.device == META for p in trainer.module.trainable_parameters())
    assert {v.device for v in trainer.ema.shadow.values()} == {META}
    for state in trainer.optimizer.state.values():
        assert state["exp_avg"].device == META and state["exp_avg_sq"].device == META
        # torch's Adam (not fused) reads `step` every step: on the CPU that is no device sync
        assert state["step"].device.type == "cpu"


@pytest.mark.parametrize("options", [
    [],
    ["objective.timestep_sampling=loss_aware", "objective.importance_history=1"],
    ["objective.timestep_sampling=loss_removed", "objective.draws_per_image=2"],
    ["objective.timestep_sampling=chunk_balanced", "objective.draws_per_image=2", "train.grad_accum_steps=2"],
    ["objective.timestep_sampling=loss_aware", "objective.importance_history=1", "objective.loss_normalization=chunk"],
], ids=["uniform", "loss-aware", "removed-m2", "chunk-balanced-m2-accum", "loss-aware-chunk-norm"])
def test_training_steps_run_on_the_modules_device_and_read_nothing_back(tmp_path, random_dm, shapes16, on_meta,
                                                                        options):
    train_diti(quick_cfg(random_dm, shapes16, "train.steps=3", "train.log_every=100", *options), tmp_path / "run")
    trainer = on_meta["trainer"]
    assert trainer.step == 3
    _states_on_meta(trainer)
    if trainer.t_sampler is not None:
        assert trainer.t_sampler.probs().device == META
        if isinstance(trainer.t_sampler, ChunkNormalizedSampler):
            assert trainer.t_sampler.ema.device == META and trainer.t_sampler.debias.device == META
            assert isinstance(trainer.t_sampler.base, LossAwareSampler)
            assert trainer.t_sampler.base.count.device == META
        if isinstance(trainer.t_sampler, LossAwareSampler):
            assert trainer.t_sampler.count.device == META


@pytest.mark.filterwarnings("ignore:.*copying from a non-meta parameter")
def test_a_run_resumed_on_another_device_loads_its_state_there(tmp_path, random_dm, shapes16, monkeypatch):
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "train.checkpoint_every=2",
                               "objective.timestep_sampling=loss_aware"), tmp_path / "run")  # on the CPU
    seen = {}
    original_run = Trainer.run
    monkeypatch.setattr(trainer_module, "make_accelerator", _meta_accelerator)
    monkeypatch.setattr(Trainer, "run", lambda self, *args: seen.setdefault("trainer", self) and original_run(self, *args))
    monkeypatch.setattr(Trainer, "_read_back", lambda self: 0.0)
    monkeypatch.setattr(Trainer, "save", lambda self: None)
    train_diti(quick_cfg(random_dm, shapes16, "train.steps=4", "train.checkpoint_every=2",
                         "objective.timestep_sampling=loss_aware"), run, resume=True)
    trainer = seen["trainer"]
    assert trainer.step == 4
    _states_on_meta(trainer)
    assert trainer.t_sampler.count.device == META


def test_the_partition_masks_are_buffers_and_forward_changes_no_state(random_dm):
    from diti.config import DiTiConfig, build_config
    from diti.models.diti import DiTiModel
    from diti.models.dm import load_dm

    cfg = build_config(DiTiConfig, "shapes-quick", overrides=['dm="unused"', "data.resolution=16"])
    model = DiTiModel.from_config(cfg, load_dm(random_dm)).to(META)
    assert {b.device for b in model.masks} == {META}
    def state():
        return {k: sorted(v) if isinstance(v, dict) else None for k, v in model.partition.__dict__.items()}

    before = state()
    x0 = torch.zeros(2, 3, 16, 16, device=META)
    t = torch.tensor([0, 999], device=META)
    model(x0, t, torch.zeros_like(x0))
    model.eps_fn(torch.zeros(2, cfg.partition.latent_dim, device=META))(x0, t)
    assert state() == before  # no mask cache built inside forward
    # on the CPU the buffers are the partition's own masks
    cpu = DiTiModel.from_config(cfg, load_dm(random_dm))
    for buffer, mask in zip(cpu.masks, cpu.partition.masks(), strict=True):
        assert torch.equal(buffer, mask)
    assert not any(name.startswith("mask_") for name in cpu.state_dict())  # never saved in checkpoints


def test_frozen_features_keep_their_memory_format_off_the_cpu(random_dm):
    from diti.models.dm import load_dm
    from diti.models.shift_decoder import ShiftDecoder

    decoder = ShiftDecoder(load_dm(random_dm), 8).to(META).to(memory_format=torch.channels_last)
    x = torch.zeros(2, 3, 16, 16, device=META).contiguous(memory_format=torch.channels_last)
    t = torch.zeros(2, dtype=torch.long, device=META)
    feats = decoder.frozen_features(x, t)
    dm = decoder.dm
    with torch.no_grad():  # the down path as the blocks leave it
        temb = dm.time_embedding(dm.time_proj(t))
        h = dm.conv_in(x)
        skips = [h]
        for block in dm.down_blocks:
            h, res = block(hidden_states=h, temb=temb)
            skips += res
    assert feats.h.stride() == h.stride()
    assert [s.stride() for s in feats.skips] == [s.stride() for s in skips]
    assert any(not s.is_contiguous() for s in skips)  # the check above can tell a copy from none
    # on the CPU they are made contiguous (torch's CPU GroupNorm backward needs it)
    cpu = ShiftDecoder(load_dm(random_dm), 8).to(memory_format=torch.channels_last)
    feats = cpu.frozen_features(torch.zeros(2, 3, 16, 16).contiguous(memory_format=torch.channels_last),
                                torch.zeros(2, dtype=torch.long))
    assert all(s.is_contiguous() for s in feats.skips) and feats.h.is_contiguous()


def _sequential_reference(T: int, history: int, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The ring buffer written one sample at a time, in batch order."""
    values, count = torch.zeros(T, history, dtype=torch.float64), torch.zeros(T, dtype=torch.int64)
    for t, v in batches:
        for ti, vi in zip(t.tolist(), v.tolist(), strict=True):
            values[ti, count[ti] % history] = vi
            count[ti] += 1
    return values, count


def test_the_samplers_ring_buffer_equals_sequential_writes():
    T, history = 7, 3
    gen = torch.Generator().manual_seed(0)
    # small T, many repeats of one t per batch (more than the history), several batches
    batches = [(torch.randint(0, T, (n,), generator=gen), torch.rand(n, generator=gen, dtype=torch.float64))
               for n in (5, 20, 1, 13)]
    batches.append((torch.full((9,), 2), torch.arange(9, dtype=torch.float64)))
    sampler = LossAwareSampler(T, "loss", history=history, uniform_mix=0.5)
    for t, v in batches:
        sampler.update(t, v)
    values, count = _sequential_reference(T, history, batches)
    assert torch.equal(sampler.count, count) and torch.equal(sampler.values, values)
    assert sorted(sampler.values[2].tolist()) == [6.0, 7.0, 8.0]  # the last batch's last three values of t = 2

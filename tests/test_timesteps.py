"""Time-step samplers (training/timesteps.py): importance weights keep the official objective's expectation,
stratified draws, the loss-aware state in checkpoints (bit-identical resume), several draws per image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import quick_cfg
from diti.partition import Partition
from diti.training.jobs import train_diti
from diti.training.timesteps import ChunkNormalizedSampler, LossAwareSampler, TimestepSampler, build_sampler

T = 1000


def loss_table(seed: int = 0) -> np.ndarray:
    """A fixed per-t loss l(t): small at small t, a bump in the middle, noise."""
    t = np.arange(T)
    rng = np.random.default_rng(seed)
    return 0.01 + np.exp(-((t - 450) / 150.0) ** 2) + 0.05 * rng.random(T)


def warmed_sampler(table: np.ndarray, statistic: str = "loss") -> LossAwareSampler:
    s = LossAwareSampler(T, statistic, history=3, uniform_mix=0.1)
    for _ in range(3):
        t = torch.arange(T)
        loss = torch.as_tensor(table)
        s.update(t, loss, baseline=loss * 2 if statistic == "removed" else None)
    assert s.warmed_up()
    return s


def test_reweighted_estimate_equals_the_uniform_mean_in_expectation():
    table = loss_table()
    sampler = warmed_sampler(table)
    p = sampler.probs().numpy()
    assert p.sum() == pytest.approx(1.0) and p.min() >= 0.1 / T - 1e-15
    # exactly: sum_t p(t) w(t) l(t) with w = 1 / (T p(t))
    assert float(np.sum(p * (1 / (T * p)) * table)) == pytest.approx(table.mean(), rel=1e-12)
    # and as a Monte-Carlo estimate of stratified draws
    estimates = []
    for step in range(200):
        t, w = sampler.draw(64, 4, seed=0, step=step)
        estimates.append(float((w.double() * torch.as_tensor(table)[t]).mean()))
    assert np.mean(estimates) == pytest.approx(table.mean(), rel=0.01)
    # importance sampling reduces the variance of the estimate against uniform draws of the same count
    uniform = TimestepSampler(torch.full((T,), 1.0 / T, dtype=torch.float64), reweight=True)
    plain = [float(torch.as_tensor(table)[uniform.draw(256, 1, 0, s)[0]].mean()) for s in range(200)]
    assert np.std(estimates) < np.std(plain)


def test_probabilities_follow_the_root_second_moment_and_start_uniform():
    table = loss_table(1)
    s = LossAwareSampler(T, "loss", history=2, uniform_mix=0.2)
    assert torch.equal(s.probs(), torch.full((T,), 1.0 / T, dtype=torch.float64))  # before the warm-up
    s.update(torch.arange(T), torch.as_tensor(table))
    assert not s.warmed_up() and torch.equal(s.probs(), torch.full((T,), 1.0 / T, dtype=torch.float64))
    s.update(torch.arange(T), torch.as_tensor(table))
    expected = 0.8 * table / table.sum() + 0.2 / T  # sqrt(mean(l^2)) = l for a constant history
    assert np.allclose(s.probs().numpy(), expected / expected.sum())
    # the removed-loss statistic: baseline - loss (here = loss), ignoring the loss itself
    r = warmed_sampler(table, "removed")
    assert np.allclose(r.probs().numpy(), warmed_sampler(table).probs().numpy())
    with pytest.raises(ValueError, match="frozen DM's own"):
        r.update(torch.arange(3), torch.ones(3))


def test_stratified_draws_fill_one_stratum_each():
    sampler = build_sampler("uniform", Partition(16, 4, T))
    t, w = sampler.draw(32, 4, seed=3, step=7)
    chunks = (t.reshape(32, 4) // 250).numpy()
    # uniform p and m = k: draw j of every image falls in chunk j's t-range
    assert (chunks == np.arange(4)).all() and torch.equal(w, torch.ones(128))
    again, _ = sampler.draw(32, 4, seed=3, step=7)
    assert torch.equal(t, again) and not torch.equal(t, sampler.draw(32, 4, seed=3, step=8)[0])
    # a stage-balanced distribution keeps its meaning: no reweighting (a departure from the official mean)
    stage = build_sampler("stage_balanced", Partition(16, 4, T, (100, 1000), (4, 12)))
    t, w = stage.draw(2000, 1, 0, 0)
    assert 0.45 < float((t < 100).double().mean()) < 0.55 and torch.equal(w, torch.ones(2000))


def test_sampler_state_round_trip_and_mismatch():
    s = warmed_sampler(loss_table())
    state = json.loads(json.dumps(s.state_dict()))
    other = LossAwareSampler(T, "loss", history=3, uniform_mix=0.1)
    other.load_state_dict(state)
    assert torch.equal(other.probs(), s.probs()) and (other.count == s.count).all()
    with pytest.raises(ValueError, match="history"):
        LossAwareSampler(T, "loss", history=4, uniform_mix=0.1).load_state_dict(state)


def test_chunk_normalisation_on_a_hand_computed_case():
    """T = 4, two chunks {0, 1} and {2, 3}, decay 0.5: the running means, the weights, their mean."""
    part = Partition(4, 2, 4)
    s = build_sampler("uniform", part, normalization="chunk", decay=0.5)
    assert isinstance(s, ChunkNormalizedSampler) and part.chunk_of_t == [0, 0, 1, 1]
    t = torch.tensor([0, 3, 1, 2])
    assert torch.equal(s.draw(2, 2, 0, 0)[1], torch.ones(4))  # no mean yet: the base objective
    # step 1, chunk 0 only: s / n = (0.6, 0) / 2, ema (0.15, 0), debias 0.5, m = ema / (0.5 q) = (0.6, 0):
    # chunk 1 has no mean, so every weight stays 1
    s.update(torch.tensor([0, 1]), torch.tensor([0.2, 0.4]))
    assert torch.allclose(s.means(), torch.tensor([0.6, 0.0], dtype=torch.float64))
    assert torch.equal(s._normalise(t, None)[1], torch.ones(4))
    # step 2: s / n = (0.6, 6) / 4, ema (0.15, 0.75), debias 0.75, m = ema / 0.375 = (0.4, 2)
    s.update(torch.tensor([2, 3, 0, 1]), torch.tensor([2.0, 4.0, 0.2, 0.4]))
    assert torch.allclose(s.means(), torch.tensor([0.4, 2.0], dtype=torch.float64))
    # w_c = (1 / m_c) / Z, Z = 0.5 * 2.5 + 0.5 * 0.5 = 1.5: w = (5/3, 1/3), mean weight over uniform t 1
    assert torch.allclose(s.chunk_weights(), torch.tensor([5 / 3, 1 / 3], dtype=torch.float64))
    assert torch.allclose(s._normalise(t, None)[1], torch.tensor([5 / 3, 1 / 3, 5 / 3, 1 / 3]))
    # a stage-balanced base puts its own mass into q: p = (1/2, 1/6, 1/6, 1/6), q = (2/3, 1/3);
    # s / n = (1, 4) / 2, ema (0.25, 1), m = ema / (0.5 q) = (0.75, 6), Z = 8/9 + 1/18 = 17/18
    imb = Partition(4, 2, 4, stages=(1, 4), dims_per_stage=(2, 2))
    s = build_sampler("stage_balanced", imb, normalization="chunk", decay=0.5)
    s.update(torch.tensor([0, 2]), torch.tensor([1.0, 4.0]))
    assert torch.allclose(s.chunk_weights(), torch.tensor([24 / 17, 3 / 17], dtype=torch.float64))
    assert build_sampler("uniform", part, normalization="none").__class__ is not ChunkNormalizedSampler
    with pytest.raises(ValueError, match="decay"):
        build_sampler("uniform", part, normalization="chunk", decay=1.0)
    with pytest.raises(ValueError, match="normalization"):
        build_sampler("uniform", part, normalization="stage")


def test_chunk_normalisation_evens_the_chunks_shares_of_the_objective():
    """With l(t) far smaller in early chunks, each chunk's share of the weighted loss becomes its t mass, under
    uniform t and under importance sampling (whose draws follow the loss inside a chunk)."""
    table = torch.as_tensor(loss_table()) * torch.linspace(0.001, 1, T, dtype=torch.float64)
    part = Partition(16, 8, T)
    chunk = torch.as_tensor(part.chunk_of_t)
    truth = torch.zeros(8, dtype=torch.float64).index_add_(0, chunk, table) / 125
    assert truth[0] / truth.sum() < 0.01  # unnormalised, the first chunk's share is tiny
    for kind in ("uniform", "loss_aware"):
        sampler = build_sampler(kind, part, history=2, normalization="chunk", decay=0.99)
        for step in range(600):
            t, _ = sampler.draw(64, 1, 0, step)
            sampler.update(t, table[t].float())
        assert torch.allclose(sampler.means() / truth, torch.ones(8, dtype=torch.float64), atol=0.15), kind
        share = torch.zeros(8, dtype=torch.float64)
        for step in range(600, 700):
            t, w = sampler.draw(256, 1, 0, step)
            share += torch.zeros(8, dtype=torch.float64).index_add_(0, chunk[t], w.double() * table[t])
        assert torch.allclose(share / share.sum(), torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.02), kind


def test_the_report_names_the_objective_options(tmp_path, random_dm, shapes16):
    from diti.config.schema import ObjectiveConfig
    from diti.evaluation.report import write_report

    assert ObjectiveConfig().summary() == "official"
    assert ObjectiveConfig(timestep_sampling="loss_aware", draws_per_image=4).summary() == (
        "t by importance (loss_aware), 4 draws per image")
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "objective.weighting=uniform",
                               "objective.timestep_sampling=stage_balanced", "objective.loss_normalization=chunk"),
                     tmp_path / "run")
    page = write_report([run], tmp_path / "r.html").read_text()
    assert ("loss weight uniform (departure), t stage-balanced (departure), loss normalised per chunk (decay 0.99, "
            "departure)") in page


@pytest.fixture
def dm50(tmp_path):
    """A random 16 px DM on a 50-step schedule: the loss-aware sampler warms up within a few steps."""
    from conftest import QUICK_UNET
    from diti.diffusion.schedule import NoiseSchedule
    from diti.models.dm import build_unet, save_dm

    torch.manual_seed(0)
    return save_dm(build_unet(QUICK_UNET, 16), tmp_path / "dm50", NoiseSchedule(timesteps=50))


@pytest.mark.parametrize("options", [("objective.timestep_sampling=loss_aware",),
                                     ("objective.timestep_sampling=loss_removed", "objective.draws_per_image=2",
                                      "objective.loss_normalization=chunk")])
def test_killed_and_resumed_run_is_bit_identical_with_the_sampler_state(tmp_path, dm50, shapes16, options):
    common = ("diffusion.timesteps=50", "objective.importance_history=1", "train.checkpoint_every=8", *options)
    full = train_diti(quick_cfg(dm50, shapes16, "train.steps=16", *common), tmp_path / "full")
    part = train_diti(quick_cfg(dm50, shapes16, "train.steps=8", *common), tmp_path / "part")
    state = json.loads((part / "checkpoints/step-00000008/state.json").read_text())["t_sampler"]
    draws = 2 if "objective.draws_per_image=2" in options else 1
    if "objective.loss_normalization=chunk" in options:  # the running means of every chunk, then the base's state
        assert len(state["ema"]) == 4 and 0 < state["debias"] < 1
        state = state["base"]
    assert sum(state["count"]) == 8 * 16 * draws
    train_diti(quick_cfg(dm50, shapes16, "train.steps=16", *common), part, resume=True)
    for name in ("model", "ema", "optimizer"):
        a = load_file(full / f"checkpoints/step-00000016/{name}.safetensors")
        b = load_file(part / f"checkpoints/step-00000016/{name}.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    a = json.loads((full / "checkpoints/step-00000016/state.json").read_text())["t_sampler"]
    b = json.loads((part / "checkpoints/step-00000016/state.json").read_text())["t_sampler"]
    assert a == b
    # the sampler warmed up during the run: every t was seen, so the second half sampled non-uniformly
    assert min(a.get("base", a)["count"]) >= 1


def test_several_draws_per_image_encode_once_and_keep_the_loss_scale(random_dm):
    from diti.config import DiTiConfig, build_config
    from diti.models.diti import DiTiModel
    from diti.models.dm import load_dm

    cfg = build_config(DiTiConfig, "shapes-quick", overrides=[f'dm="{random_dm}"'])
    torch.manual_seed(0)
    model = DiTiModel.from_config(cfg, load_dm(random_dm))
    calls = []
    model.encoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    t = torch.tensor([10, 300, 600, 20, 400, 900])
    noise = torch.randn(6, 3, 16, 16)
    out = model(x0, t, noise)
    assert calls == [3] and out.per_sample.shape == (6,) and out.baseline.shape == (6,)
    # draw j of image i is the m = 1 loss of image i at that (t, eps)
    single = model(x0.repeat_interleave(2, 0), t, noise)
    assert torch.allclose(out.per_sample, single.per_sample, atol=1e-6)
    assert torch.allclose(out.mean, single.mean, atol=1e-7)
    with pytest.raises(ValueError, match="m draws"):
        model(x0, t[:5], noise[:5])


def test_every_run_has_a_sampler_and_the_loader_draws_what_it_asks(shapes16):
    """One interface: the loader makes the draws a sampler asks for, the sampler turns a micro-batch into t."""
    from diti.data import open_dataset
    from diti.training.loader import StepBatches, StepBatchSampler
    from diti.training.randomness import step_noise
    from diti.training.timesteps import IndependentSampler

    part = Partition(16, 4, T)
    ds = open_dataset(shapes16, "train")
    key = next(iter(StepBatchSampler(len(ds), 8, 3, 5, 6)))
    cpu = torch.device("cpu")
    # one draw per image: the loader's own t (randint for uniform p, multinomial for a balanced p), weight 1
    for kind, probs in (("uniform", None), ("chunk_balanced", part.timestep_probs("chunk_balanced"))):
        sampler = build_sampler(kind, part)
        assert isinstance(sampler, IndependentSampler)
        micro = StepBatches(ds, 8, (3, 16, 16), T, seed=3, t_draws=sampler.loader_draws()).__getitems__(key)
        t, noise, _ = step_noise(8, (3, 16, 16), T, step=5, seed=3, t_probs=probs)
        t_seen, weights = sampler.timesteps_of(micro, cpu)
        assert torch.equal(t_seen, t) and torch.equal(micro["noise"], noise) and weights is None
    # several draws per image: stratified uniforms and one noise per draw, turned into t by the sampler
    sampler = build_sampler("chunk_balanced", part, draws=2)
    micro = StepBatches(ds, 8, (3, 16, 16), T, seed=3, t_draws=sampler.loader_draws()).__getitems__(key)
    assert micro["u"].shape == (16,) and micro["noise"].shape == (16, 3, 16, 16)
    t_seen, weights = sampler.timesteps_of(micro, cpu)
    assert torch.equal(t_seen, sampler.draw(8, 2, seed=3, step=5)[0]) and torch.equal(weights, torch.ones(16))

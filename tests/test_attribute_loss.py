"""Attribute loss Err(x_0, y_0, t): pair finding, known answers with fake DMs, and the tiny trained DM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diti.data import Attributes, open_dataset
from diti.diffusion.schedule import NoiseSchedule, extract
from diti.evaluation.attribute_loss import (
    AttributeLossResult,
    attribute_loss,
    attribute_loss_curve,
    default_timesteps,
    find_pairs,
)
from diti.folders.results import crossing
from diti.models.dm import load_dm


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule()


def _pair_images(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs of random 3x4x4 images; b differs from a by +0.5 on a 2x2 corner."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    b = a.clone()
    b[:, :, :2, :2] += 0.5
    return a, b


# ----------------------------------------------------------------------------------------------------
def test_default_timesteps():
    ts = default_timesteps(1000, 20)
    assert ts[0] == 0 and ts[-1] == 999 and len(ts) == 20 and ts == sorted(set(ts))
    assert ts[1] - ts[0] < ts[-1] - ts[-2]  # denser at small t
    assert default_timesteps(5, 20) == [0, 1, 2, 3, 4]


def test_find_pairs_differ_in_exactly_that_factor():
    rng = np.random.default_rng(0)
    attrs = Attributes(["a", "b", "c"], rng.integers(0, 2, size=(200, 3)))
    for f in range(3):
        pairs = find_pairs(attrs, f, max_pairs=30, seed=0)
        assert pairs.shape == (30, 2)
        assert len({tuple(p) for p in pairs.tolist()}) == 30
        diff = attrs.values[pairs[:, 0]] != attrs.values[pairs[:, 1]]
        assert diff[:, f].all()
        assert not np.delete(diff, f, axis=1).any()
    np.testing.assert_array_equal(find_pairs(attrs, 1, 30, seed=3), find_pairs(attrs, 1, 30, seed=3))
    assert not np.array_equal(find_pairs(attrs, 1, 30, seed=3), find_pairs(attrs, 1, 30, seed=4))


def test_find_pairs_fewer_than_asked_and_none():
    attrs = Attributes(["a", "b"], np.array([[0, 0], [1, 0], [0, 1], [1, 2]]))
    np.testing.assert_array_equal(find_pairs(attrs, 0, max_pairs=10), [[0, 1]])
    with pytest.raises(ValueError, match="'b'"):
        find_pairs(Attributes(["a", "b"], np.array([[0, 0], [1, 1]])), 1)
    with pytest.raises(ValueError, match="out of range"):
        find_pairs(attrs, 2)


def test_find_pairs_sampling_branch(monkeypatch):
    import diti.evaluation.attribute_loss as al

    monkeypatch.setattr(al, "_ENUMERATE_LIMIT", 10)  # force the sampler instead of the full listing
    attrs = Attributes(["a", "b"], np.random.default_rng(0).integers(0, 3, size=(100, 2)))
    pairs = find_pairs(attrs, 0, max_pairs=20, seed=0)
    assert pairs.shape == (20, 2) and (pairs[:, 0] < pairs[:, 1]).all()
    diff = attrs.values[pairs[:, 0]] != attrs.values[pairs[:, 1]]
    assert diff[:, 0].all() and not diff[:, 1].any()


# ----------------------------------------------------------------------------------------------------
# Known answers with fake DMs (eps_fn(x_t, t) -> eps)
def test_zero_eps_matches_the_closed_form(schedule):
    """eps_theta = 0: x^_0 = x_0 + s_t eps with s_t = sqrt((1 - abar_t) / abar_t), so each term is
    P(<delta, eps> < -||delta||^2 / (2 s_t)) and Err = Phi(-||x_0 - y_0|| / (2 s_t))."""
    a, b = _pair_images()
    ts = [0, 100, 200, 300, 500, 999]
    curve = attribute_loss_curve(lambda x, t: torch.zeros_like(x), schedule, a, b, ts, num_noise=400,
                                 batch_size=700)
    dist = (a - b).flatten(1).norm(dim=1).double()
    for t, got in zip(ts, curve, strict=True):
        s_t = math.sqrt((1 - float(schedule.abar[t])) / float(schedule.abar[t]))
        want = float(torch.special.ndtr(-dist / (2 * s_t)).mean())
        assert abs(got - want) < 0.03, (t, got, want)  # 3200 draws per t: standard error < 0.01


def test_perfect_reconstruction_gives_zero(schedule):
    """A DM that knows the clean images (an oracle picking the most likely one) reconstructs exactly when the
    images are far apart: Err = 0 at every t."""
    a = -torch.ones(2, 3, 4, 4)
    b = torch.ones(2, 3, 4, 4)
    candidates = torch.cat([a[:1], b[:1]])  # (2, C, H, W)

    def oracle(x_t, t):
        sa, sb = extract(schedule.sqrt_abar, t, x_t.shape), extract(schedule.sqrt_one_minus_abar, t, x_t.shape)
        d = torch.stack([((x_t - sa * c).flatten(1)).pow(2).sum(1) for c in candidates], 1)  # (B, 2)
        x0 = candidates[d.argmin(1)]
        return (x_t - sa * x0) / sb  # the true noise once x0 is right

    ts = [0, 50, 200, 300]
    curve = attribute_loss_curve(oracle, schedule, a, b, ts, num_noise=20)
    np.testing.assert_array_equal(curve, np.zeros(len(ts)))


def test_constant_reconstruction_gives_one_half(schedule):
    """x^_0 = c whatever x_t: exactly one of the two terms is 1 (or both are ties), so Err = 1/2 at every t."""
    a, b = _pair_images()
    c = torch.zeros(1, 3, 4, 4)

    def constant(x_t, t):
        return (x_t - extract(schedule.sqrt_abar, t, x_t.shape) * c) / extract(schedule.sqrt_one_minus_abar, t,
                                                                                 x_t.shape)

    for clip in (False, True):
        curve = attribute_loss_curve(constant, schedule, a, b, [0, 10, 500, 999], num_noise=3, clip=clip)
        np.testing.assert_allclose(curve, 0.5, atol=1e-12)
    ties = attribute_loss_curve(constant, schedule, a, a.clone(), [0, 999], num_noise=3)  # x_0 = y_0: all ties
    np.testing.assert_allclose(ties, 0.5, atol=1e-12)


def test_curve_is_deterministic_and_independent_of_batch_size(schedule):
    a, b = _pair_images()
    args = (lambda x, t: torch.zeros_like(x), schedule, a, b, [150, 250, 400])
    one = attribute_loss_curve(*args, num_noise=5, batch_size=7, seed=3, per_pair=True)
    two = attribute_loss_curve(*args, num_noise=5, batch_size=64, seed=3, per_pair=True)
    assert one.shape == (3, 4)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, attribute_loss_curve(*args, num_noise=5, seed=4, per_pair=True))
    with pytest.raises(ValueError, match="out of range"):
        attribute_loss_curve(*args[:4], [1000])


def test_crossing_and_result_round_trip():
    assert crossing([0, 10, 20], [0.0, 0.1, 0.3], 0.2) == (20, 15.0)
    assert crossing([0, 10], [0.3, 0.4], 0.2) == (0, 0.0)
    assert crossing([0, 10], [0.0, 0.1], 0.2) == (None, None)
    res = AttributeLossResult([0, 10, 20], ["coarse", "fine"], {"coarse": [0, 0.05, 0.1], "fine": [0, 0.4, 0.5]},
                              {"coarse": [0, 0, 0], "fine": [0, 0, 0]}, {"coarse": 3, "fine": 3}, 0.25, 2, 0)
    assert res.order == ["fine", "coarse"] and res.crossing_t == {"coarse": None, "fine": 10}
    data = res.to_dict()
    assert data["order"] == ["fine", "coarse"]
    assert AttributeLossResult.from_dict(data).to_dict() == data
    assert "never" in res.format_table()


# ----------------------------------------------------------------------------------------------------
# The tiny trained DM on the shapes data
def test_attribute_loss_on_the_trained_dm(shapes16, trained_dm, schedule):
    dm = load_dm(trained_dm, schedule)
    dataset = open_dataset(shapes16, "train")
    ts = [0, 100, 400, 999]
    res = attribute_loss(dm, schedule, dataset, timesteps=ts, max_pairs=6, num_noise=1, seed=0)
    assert set(res.factors) | set(res.skipped) == set(dataset.attributes.names)
    assert len(res.factors) >= 4
    for name in res.factors:
        curve = np.array(res.curves[name])
        assert ((curve >= 0) & (curve <= 0.75)).all(), (name, curve)  # 1/2 plus the noise of 6 pairs
        assert curve[0] <= 0.05, (name, curve)  # at t = 0 every attribute is still there
        assert curve[-1] > curve[0], (name, curve)
        assert 1 <= res.num_pairs[name] <= 6
    assert sorted(res.order) == sorted(res.factors)
    again = attribute_loss(dm, schedule, dataset, timesteps=ts, max_pairs=6, num_noise=1, seed=0)
    assert again.to_dict() == res.to_dict()
    with pytest.raises(ValueError, match="unknown factor"):
        attribute_loss(dm, schedule, dataset, timesteps=ts, factors=["nope"])

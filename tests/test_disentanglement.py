"""DCI, MIG, FactorVAE score and group alignment on synthetic codes with known answers.

Factors: 3 discrete factors (4, 5, 4 values) drawn uniformly and independently. Codes:
- perfect: the factors, columns permuted, each rescaled (one flipped) and shifted, plus 2 pure-noise dims;
- random: Gaussian, independent of the factors;
- rotated: the standardised perfect code times a fixed random orthogonal matrix (entangled, equally informative).
Values measured when the thresholds were set (N = 500 train / 300 test): perfect D = C = 1.000, informativeness
1.000, MIG 0.950, FactorVAE 1.000; random D 0.002, C 0.001, test accuracy 0.224, MIG 0.003, FactorVAE 0.347;
rotated D 0.162, C 0.175, test accuracy 0.832, MIG 0.086, FactorVAE 0.720.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from diti.evaluation.disentanglement import (
    PROTOCOLS,
    alignment,
    completeness_from_importance,
    dci,
    disentanglement_from_importance,
    factor_vae_score,
    group_importance,
    grouped_dci,
    histogram_discretize,
    mig,
)

CARDINALITIES = (4, 5, 4)
N_TRAIN, N_TEST = 500, 300
CHANCE = float(np.mean([1 / c for c in CARDINALITIES]))  # accuracy of a uniform guess, ~0.23


def make_factors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, c, n) for c in CARDINALITIES], axis=1)  # (n, 3)


def perfect_code(factors: np.ndarray, seed: int) -> np.ndarray:
    """Dim i holds factor PERM[i] exactly (affinely), then 2 noise dims: (n, 5)."""
    code = factors[:, [2, 0, 1]] * np.array([2.0, -0.5, 3.0]) + np.array([1.0, 4.0, -2.0])
    noise = np.random.default_rng(seed).normal(size=(len(factors), 2))
    return np.concatenate([code, noise], axis=1)


def standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(0)) / x.std(0)


ROTATION = np.linalg.qr(np.random.default_rng(5).normal(size=(5, 5)))[0]  # fixed random orthogonal (5, 5)


@pytest.fixture(scope="module")
def data():
    ftr, fte = make_factors(N_TRAIN, 0), make_factors(N_TEST, 1)
    ptr, pte = perfect_code(ftr, 10), perfect_code(fte, 11)
    return {
        "factors": (ftr, fte),
        "perfect": (ptr, pte),
        "random": (np.random.default_rng(3).normal(size=(N_TRAIN, 5)), np.random.default_rng(4).normal(size=(N_TEST, 5))),
        # Rotating the standardised code keeps all information but spreads every factor over all dims.
        "rotated": (standardise(ptr) @ ROTATION, standardise(pte) @ ROTATION),
    }


@pytest.fixture(scope="module")
def dci_results(data):
    ftr, fte = data["factors"]
    return {name: dci(data[name][0], ftr, data[name][1], fte) for name in ("perfect", "random", "rotated")}


# --- DCI ---------------------------------------------------------------------------------------------------------


def _dlib_disentanglement(r: np.ndarray) -> float:
    """disentanglement_lib's formula transcribed literally (scipy entropy with its +1e-11), as the reference."""
    per_code = 1.0 - scipy.stats.entropy(r.T + 1e-11, base=r.shape[1])
    w = r.sum(axis=1) / r.sum()
    return float(np.sum(per_code * w))


def _dlib_completeness(r: np.ndarray) -> float:
    per_factor = 1.0 - scipy.stats.entropy(r + 1e-11, base=r.shape[0])
    w = r.sum(axis=0) / r.sum()
    return float(np.sum(per_factor * w))


def test_scores_from_importance_hand_computed():
    # Code 0 serves factor 0 only (D_0 = 1), code 1 splits evenly (D_1 = 0); equal code weights -> D = 0.5.
    r = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert disentanglement_from_importance(r) == pytest.approx(0.5)
    # Factor 0: (2/3, 1/3) -> C_0 = 1 - H_2 = 0.0817, weight 0.75; factor 1: (0, 1) -> C_1 = 1, weight 0.25.
    h = -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    assert completeness_from_importance(r) == pytest.approx(0.75 * (1 - h) + 0.25)
    assert disentanglement_from_importance(np.eye(4)) == pytest.approx(1.0)
    assert completeness_from_importance(np.eye(4)) == pytest.approx(1.0)
    assert disentanglement_from_importance(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)
    assert completeness_from_importance(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)


def test_scores_from_importance_match_disentanglement_lib_formula():
    rng = np.random.default_rng(0)
    for _ in range(5):
        r = rng.random((6, 3)) ** 3
        r[2] = 0.0  # a code no classifier uses: weight 0, and no NaN
        r /= r.sum(axis=0)
        assert disentanglement_from_importance(r) == pytest.approx(_dlib_disentanglement(r), abs=1e-8)
        assert completeness_from_importance(r) == pytest.approx(_dlib_completeness(r), abs=1e-8)
    zero = np.zeros((3, 2))
    assert disentanglement_from_importance(zero) == 0.0 and completeness_from_importance(zero) == 0.0


def test_dci_perfect_code(dci_results):
    r = dci_results["perfect"]
    # Each factor is a threshold function of one dim, so the GBT needs no other dim: D and C reach ~1.
    assert r.disentanglement > 0.95
    assert r.completeness > 0.95
    assert r.informativeness_train > 0.95 and r.informativeness_test > 0.95
    assert r.importance.shape == (5, 3)
    assert np.allclose(r.importance.sum(axis=0), 1.0)
    # The dim holding each factor carries (nearly) all its importance; the noise dims (3, 4) nearly none.
    assert np.argmax(r.importance, axis=0).tolist() == [1, 2, 0]
    assert r.importance[3:].sum() < 0.05


def test_dci_random_code(dci_results):
    r = dci_results["random"]
    # With no signal the classifiers spread importance roughly evenly: entropies near their maximum.
    assert r.disentanglement < 0.1
    assert r.completeness < 0.1
    assert r.informativeness_test < CHANCE + 0.15  # held-out accuracy near chance (the train side overfits)


def test_dci_rotated_code_is_less_disentangled(dci_results):
    perfect, rotated = dci_results["perfect"], dci_results["rotated"]
    assert rotated.disentanglement < perfect.disentanglement - 0.4
    assert rotated.completeness < perfect.completeness - 0.4
    # Still informative: the rotation loses nothing, it only entangles.
    assert rotated.informativeness_test > 0.6


def test_dci_deterministic_and_max_train(data):
    ftr, fte = data["factors"]
    ctr, cte = data["random"]
    a = dci(ctr[:200], ftr[:200], cte[:100], fte[:100], seed=1)
    b = dci(ctr[:200], ftr[:200], cte[:100], fte[:100], seed=1)
    assert np.array_equal(a.importance, b.importance)
    assert a.to_dict() == b.to_dict()
    ptr, pte = data["perfect"]
    c = dci(ptr, ftr, pte, fte, max_train=150)
    assert c.informativeness_test > 0.95 and c.disentanglement > 0.95


def test_dci_validation(data):
    ftr, fte = data["factors"]
    ctr, cte = data["perfect"]
    with pytest.raises(ValueError, match="rows"):
        dci(ctr[:-1], ftr, cte, fte)
    with pytest.raises(ValueError, match="2-D"):
        dci(ctr[:, 0], ftr, cte, fte)
    with pytest.raises(ValueError, match="dims"):
        dci(ctr, ftr, cte[:, :4], fte)
    bad = ctr.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dci(bad, ftr, cte, fte)
    with pytest.raises(ValueError, match="integer"):
        dci(ctr, ftr + 0.5, cte, fte)
    constant = ftr.copy()
    constant[:, 1] = 3
    with pytest.raises(ValueError, match="factor 1"):
        dci(ctr, constant, cte, fte)


# --- MIG ---------------------------------------------------------------------------------------------------------


def test_histogram_discretize_bins():
    x = np.linspace(0.0, 1.0, 101)[:, None] * np.array([1.0, -3.0])
    b = histogram_discretize(x, num_bins=20)
    assert b.min() == 1 and b.max() == 20  # the maximum lands in the last bin, not a 21st
    assert all(len(np.unique(b[:, i])) == 20 for i in range(2))


def test_mig_perfect_and_random(data):
    ftr, _ = data["factors"]
    perfect = mig(data["perfect"][0], ftr)
    # Top MI = H(factor); the runner-up is only the plug-in estimator's bias, about (20 - 1)(5 - 1) / (2N) nats
    # against H ~ 1.4-1.6 nats, so the gap stays above ~0.9.
    assert perfect.mig > 0.85
    assert np.allclose(np.max(perfect.mutual_info, axis=0), perfect.factor_entropy)
    random = mig(data["random"][0], ftr)
    assert random.mig < 0.05
    rotated = mig(data["rotated"][0], ftr)
    assert rotated.mig < perfect.mig - 0.4
    for res in (perfect, random, rotated):
        assert res.per_factor.shape == (3,)
        assert np.all((res.per_factor >= 0) & (res.per_factor <= 1))
        assert res.mig == pytest.approx(res.per_factor.mean())


def test_mig_constant_factors(data):
    ftr, _ = data["factors"]
    codes = data["perfect"][0]
    f = ftr.copy()
    f[:, 0] = 2
    res = mig(codes, f)
    assert res.skipped_factors == [0] and np.isnan(res.per_factor[0])
    assert res.mig == pytest.approx(np.mean(res.per_factor[1:]))
    assert res.to_dict()["per_factor"][0] is None
    with pytest.raises(ValueError, match="constant"):
        mig(codes, np.zeros_like(ftr))
    with pytest.raises(ValueError, match="rows"):
        mig(codes, ftr[:10])
    with pytest.raises(ValueError, match="inf"):
        mig(np.where(codes > 5, np.inf, codes), ftr)


# --- FactorVAE score -----------------------------------------------------------------------------------------------


def test_factor_vae_perfect_random_rotated(data):
    ftr, _ = data["factors"]
    perfect = factor_vae_score(data["perfect"][0], ftr)
    # Fixing a factor zeroes the variance of its dim while every other dim keeps normalised variance ~1.
    assert perfect.train_accuracy > 0.95 and perfect.eval_accuracy > 0.95
    assert perfect.num_active_dims == 5
    random = factor_vae_score(data["random"][0], ftr)
    # Votes independent of the factor: eval accuracy ~1/3 (3 factors), std ~0.025 with 400 votes.
    assert 1 / 3 - 0.12 < random.eval_accuracy < 1 / 3 + 0.12
    rotated = factor_vae_score(data["rotated"][0], ftr)
    assert rotated.eval_accuracy < perfect.eval_accuracy - 0.1


def test_factor_vae_deterministic_and_pruning(data):
    ftr, _ = data["factors"]
    codes = data["random"][0]
    assert factor_vae_score(codes, ftr, seed=4) == factor_vae_score(codes, ftr, seed=4)
    assert factor_vae_score(codes, ftr, seed=4) != factor_vae_score(codes, ftr, seed=5)
    collapsed = data["perfect"][0].copy()
    collapsed[:, 3] = 0.01 * collapsed[:, 3]  # std 0.01 < 0.05: pruned, as a dim collapsed to the prior would be
    res = factor_vae_score(collapsed, ftr)
    assert res.num_active_dims == 4 and res.eval_accuracy > 0.95
    dead = factor_vae_score(np.full((N_TRAIN, 5), 0.3), ftr)
    assert (dead.train_accuracy, dead.eval_accuracy, dead.num_active_dims) == (0.0, 0.0, 0)
    with pytest.raises(ValueError, match="constant"):
        factor_vae_score(codes, np.zeros_like(ftr))
    with pytest.raises(ValueError, match="2-D"):
        factor_vae_score(codes, ftr[:, 0])


# --- alignment ---------------------------------------------------------------------------------------------------


def test_alignment_shares(dci_results):
    imp = dci_results["perfect"].importance  # factor dims 0..2, noise dims 3..4
    a = alignment(imp, [(0, 3), (3, 5)])
    assert a.shape == (2, 3)
    assert np.allclose(a.sum(axis=0), 1.0)
    assert np.all(a[0] > 0.95)
    # Rows follow the order given, whatever the order of the ranges.
    assert np.allclose(alignment(imp, [(3, 5), (0, 3)]), a[::-1])
    per_dim = alignment(imp, [(i, i + 1) for i in range(5)])
    assert np.allclose(per_dim, imp / imp.sum(axis=0))


def test_alignment_hand_computed_and_zero_factor():
    imp = np.array([[1.0, 0.0, 0.0], [3.0, 0.0, 2.0], [0.0, 0.0, 2.0], [4.0, 0.0, 0.0]])
    a = alignment(imp, [(0, 2), (2, 4)])
    assert np.allclose(a, [[0.5, 0.0, 0.5], [0.5, 0.0, 0.5]])
    assert np.allclose(a.sum(axis=0), [1.0, 0.0, 1.0])  # factor 1 has no importance anywhere: a zero column


def test_alignment_validation():
    imp = np.ones((6, 2))
    for groups in ([(0, 3), (2, 6)], [(0, 2), (3, 6)], [(0, 3)], [(0, 3), (3, 7)], [(0, 0), (0, 6)], [], [(0, 6, 1)]):
        with pytest.raises(ValueError):
            alignment(imp, groups)
    with pytest.raises(ValueError, match="overlap"):
        alignment(imp, [(0, 4), (3, 6)])
    with pytest.raises(ValueError, match="non-negative"):
        alignment(-imp, [(0, 6)])
    with pytest.raises(ValueError, match="2-D"):
        alignment(np.ones(6), [(0, 6)])


# --- protocol ----------------------------------------------------------------------------------------------------


def test_reference_protocol_is_disentanglement_libs():
    ref = PROTOCOLS["reference"]
    assert (ref.dci_max_train, ref.dci_max_test, ref.mig_max_rows) == (10_000, 5_000, 10_000)
    assert (ref.factor_vae_train_votes, ref.factor_vae_eval_votes, ref.factor_vae_variance_rows,
            ref.factor_vae_batch) == (10_000, 5_000, 10_000, 64)
    import inspect

    defaults = inspect.signature(factor_vae_score).parameters
    assert (defaults["num_train_votes"].default, defaults["num_eval_votes"].default,
            defaults["num_variance_rows"].default) == (10_000, 5_000, 10_000)


def test_dci_parallel_fits_equal_serial_fits(data):
    ftr, fte = data["factors"]
    ctr, cte = data["rotated"]
    serial = dci(ctr, ftr, cte, fte, seed=2, n_jobs=1)
    parallel = dci(ctr, ftr, cte, fte, seed=2, n_jobs=2)
    assert np.array_equal(serial.importance, parallel.importance)
    assert serial.per_factor_test == parallel.per_factor_test and serial.num_train == N_TRAIN
    small = dci(ctr, ftr, cte, fte, max_train=100, max_test=50)
    assert (small.num_train, small.num_test) == (100, 50)


# --- chunk level -------------------------------------------------------------------------------------------------


def chunked_code(factors: np.ndarray, dims_per_chunk: int, seed: int) -> np.ndarray:
    """Chunk j holds factor j alone, spread over its dims by a random rotation (no dim is one factor's own)."""
    rng = np.random.default_rng(seed)
    chunks = []
    for j in range(factors.shape[1]):
        one_hot = np.eye(CARDINALITIES[j])[factors[:, j]][:, :dims_per_chunk]  # (n, dims) a code of factor j
        mix = np.linalg.qr(np.random.default_rng(100 + j).normal(size=(dims_per_chunk, dims_per_chunk)))[0]
        chunks.append(one_hot @ mix + 0.05 * rng.normal(size=(len(factors), dims_per_chunk)))
    return np.concatenate(chunks, axis=1)  # (n, 3 * dims_per_chunk)


def test_chunk_level_dci_on_a_code_with_one_factor_per_chunk(data):
    ftr, fte = data["factors"]
    ctr, cte = chunked_code(ftr, 4, 0), chunked_code(fte, 4, 1)
    result = dci(ctr, ftr, cte, fte)
    chunks = [(0, 4), (4, 8), (8, 12)]
    chunk = grouped_dci(result.importance, chunks)
    assert result.informativeness_test > 0.95
    # each factor is spread over the 4 dims of its chunk: per-dim completeness is low, chunk-level high
    assert chunk["completeness"] > 0.9 and result.completeness < 0.6
    assert chunk["disentanglement"] > 0.9
    # on other groups (straddling the chunks) the same code is far less disentangled
    shifted = grouped_dci(result.importance, [(0, 2), (2, 6), (6, 10), (10, 12)])
    assert shifted["disentanglement"] < chunk["disentanglement"] - 0.3
    share = alignment(result.importance, chunks)
    assert np.all(np.diag(share) > 0.9)


def test_group_level_disentanglement_never_exceeds_per_dim(data):
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = rng.random((12, 4)) * (rng.random((12, 4)) < 0.5)
        cuts = np.sort(rng.choice(np.arange(1, 12), size=3, replace=False))
        bounds = [0, *cuts.tolist(), 12]
        groups = list(zip(bounds[:-1], bounds[1:], strict=True))
        assert grouped_dci(r, groups)["disentanglement"] <= disentanglement_from_importance(r) + 1e-12
    # one group per dim is the per-dim score; one group has no completeness
    r = rng.random((6, 3))
    per_dim = grouped_dci(r, [(i, i + 1) for i in range(6)])
    assert per_dim["disentanglement"] == pytest.approx(disentanglement_from_importance(r))
    assert per_dim["completeness"] == pytest.approx(completeness_from_importance(r))
    assert grouped_dci(r, [(0, 6)])["completeness"] is None
    assert group_importance(r, [(3, 6), (0, 3)]).tolist() == [r[3:].sum(0).tolist(), r[:3].sum(0).tolist()]


def test_disentangle_features_defaults_to_the_reference_protocol_on_training_codes(data):
    from diti.data import Attributes
    from diti.evaluation.runs import disentangle_features
    from diti.partition import Partition

    ftr, fte = data["factors"]
    names = ["a", "b", "c"]
    # perfect training codes, random test codes: MIG and FactorVAE read the training codes, DCI's
    # informativeness the test codes
    train = (data["perfect"][0], Attributes(names, ftr))
    test = (data["random"][1], Attributes(names, fte))
    result = disentangle_features(train, test, Partition(5, 1, 1000), progress=False, n_jobs=1)
    proto = result["protocol"]
    assert proto["name"] == "reference" and proto["mig_split"] == "train" and proto["factor_vae_split"] == "train"
    assert (proto["factor_vae_train_votes"], proto["factor_vae_eval_votes"]) == (10_000, 5_000)
    assert (proto["dci_train_rows"], proto["dci_test_rows"], proto["mig_rows"]) == (N_TRAIN, N_TEST, N_TRAIN)
    assert result["mig"]["mig"] > 0.9 and result["factor_vae"]["eval_accuracy"] > 0.95
    assert result["dci"]["informativeness_test"] < 0.4
    chunk = result["chunk_level"]
    assert chunk["source"].startswith("equal slices") and len(chunk["chunk_labels"]) == 5


def line_code(factors: np.ndarray, dims_per_chunk: int, seed: int, mixed: bool = False) -> np.ndarray:
    """Chunk j holds factor j along one random direction of its dims, plus small noise in every dim; ``mixed``:
    every chunk holds the sum of all factors' lines (no chunk is one factor's)."""
    rng = np.random.default_rng(seed)
    chunks = []
    for j in range(factors.shape[1]):
        values = factors.sum(axis=1) * (1 + j) if mixed else factors[:, j]
        direction = np.random.default_rng(200 + j).normal(size=dims_per_chunk)
        direction /= np.linalg.norm(direction)
        chunks.append(values[:, None] * direction + 0.05 * rng.normal(size=(len(factors), dims_per_chunk)))
    return np.concatenate(chunks, axis=1)


def test_chunk_pca_keeps_one_line_per_chunk(data):
    from diti.evaluation.disentanglement import chunk_pca

    ftr, fte = data["factors"]
    ctr, cte = line_code(ftr, 4, 0), line_code(fte, 4, 1)
    rtr, rte, explained = chunk_pca(ctr, cte, [(0, 4), (4, 8), (8, 12)])
    assert rtr.shape == (N_TRAIN, 3) and rte.shape == (N_TEST, 3)
    assert min(explained) > 0.95  # each chunk's variance lies along its factor's line
    for j in range(3):  # the component is the factor, up to sign and scale
        assert abs(np.corrcoef(rte[:, j], fte[:, j])[0, 1]) > 0.99
    # a one-dim group is only centred; groups must tile the code
    one, _, ratio = chunk_pca(ctr[:, :1], cte[:, :1], [(0, 1)])
    assert np.allclose(one[:, 0], ctr[:, 0] - ctr[:, 0].mean()) and ratio == [1.0]
    with pytest.raises(ValueError, match="tile"):
        chunk_pca(ctr, cte, [(0, 4), (8, 12)])


def test_the_peers_protocol_reduces_each_chunk_before_the_metrics(data):
    from diti.data import Attributes
    from diti.evaluation.runs import disentangle_features
    from diti.partition import Partition

    ftr, fte = data["factors"]
    names = ["a", "b", "c"]
    partition = Partition(12, 3, 999)
    results = {}
    for kind, mixed in (("one factor per chunk", False), ("every factor in every chunk", True)):
        train = (line_code(ftr, 4, 0, mixed), Attributes(names, ftr))
        test = (line_code(fte, 4, 1, mixed), Attributes(names, fte))
        results[kind] = disentangle_features(train, test, partition, protocol="peers", progress=False, n_jobs=1,
                                             steps=300)
    good, bad = results["one factor per chunk"], results["every factor in every chunk"]
    proto = good["protocol"]
    assert proto["name"] == "peers" and proto["chunk_reduce"] == "pca"
    assert (proto["dci_train_rows"], proto["factor_vae_train_votes"], proto["mig_rows"]) == (N_TRAIN, 10_000, N_TRAIN)
    assert len(proto["chunk_reduction"]["explained_variance_ratio"]) == 3
    assert len(good["importance"]) == 3  # one code dim per chunk
    assert good["dci"]["disentanglement"] > 0.9 and good["dci"]["informativeness_test"] > 0.95
    assert good["mig"]["mig"] > 0.5 and good["factor_vae"]["eval_accuracy"] > 0.95
    # per dim and per chunk coincide after the reduction
    assert good["chunk_level"]["disentanglement"] == pytest.approx(good["dci"]["disentanglement"])
    assert bad["dci"]["disentanglement"] < good["dci"]["disentanglement"] - 0.5
    assert bad["factor_vae"]["eval_accuracy"] < 0.7
    assert PROTOCOLS["peers"].dci_max_train == PROTOCOLS["reference"].dci_max_train

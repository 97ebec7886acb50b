"""Disentanglement metrics on data with known discrete factors: DCI, MIG, FactorVAE score, group alignment.

Definitions follow google-research/disentanglement_lib (``evaluation/metrics/{dci,mig,factor_vae,utils}.py``),
which is what the peers (DisDiff, EncDiff) report on Shapes3D; docs/evaluation.md states the protocol. The code
is our own and works on arrays rather than on a ground-truth simulator:

- ``codes``: float (N, D), one representation per row (for DiTi, the concatenated chunks of z);
- ``factors``: integer class codes (N, F), one column per ground-truth factor.

Where disentanglement_lib samples fresh observations from the simulator (FactorVAE score), we draw rows of the
given data set instead; every such deviation is written in the function's docstring. ``alignment`` and the
group-level DCI (``group_importance``, ``grouped_dci``) are ours: they say which group of code dims (a DiTi chunk
or partition stage) holds each factor, which is the level at which DiTi makes its claim.

``PROTOCOLS`` names the settings ``diti disentangle`` runs: ``reference`` (disentanglement_lib's sample
counts, the default), ``fast`` (fewer GBT rows and FactorVAE votes, for the demo and tests) and ``peers``
(each chunk reduced to one dim by PCA first, then the reference counts: how DisDiff, EncDiff and FDAE report).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import mutual_info_score
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Protocol:
    """Sample counts of the metrics (disentanglement_lib's gin configs for ``reference``).

    DCI: GBT classifiers fitted on up to ``dci_max_train`` training codes, scored on up to ``dci_max_test``
    test codes. MIG: on up to ``mig_max_rows`` training codes. FactorVAE: ``factor_vae_train_votes`` /
    ``factor_vae_eval_votes`` votes of ``factor_vae_batch`` rows from the training codes, global variance from
    ``factor_vae_variance_rows`` of them. Subsets are seeded random rows (all rows when there are fewer).
    """

    name: str
    dci_max_train: int = 10_000
    dci_max_test: int = 5_000
    mig_max_rows: int = 10_000
    factor_vae_train_votes: int = 10_000
    factor_vae_eval_votes: int = 5_000
    factor_vae_variance_rows: int = 10_000
    factor_vae_batch: int = 64
    # "pca": before every metric, each chunk of the code is reduced to its first principal component
    # (``chunk_pca``), as the diffusion-based peers (DisDiff, EncDiff, FDAE) evaluate; None: the code as it is
    chunk_reduce: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    "reference": Protocol("reference"),
    # The demo's and the tests' setting: a fifth of the GBT rows and a twelfth of the votes.
    "fast": Protocol("fast", dci_max_train=2_000, factor_vae_train_votes=800, factor_vae_eval_votes=400),
    # The peers' protocol (DisDiff's evaluation script, docs/evaluation.md): one dim per chunk by PCA, then
    # disentanglement_lib's counts (DCI 10,000 / 5,000, MIG 10,000 rows in 20 histogram bins, FactorVAE
    # 10,000 variance rows, 10,000 / 5,000 votes of 64, prune threshold 0.05).
    "peers": Protocol("peers", chunk_reduce="pca"),
}


def chunk_pca(train: np.ndarray, test: np.ndarray, groups: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray,
                                                                                          list[float]]:
    """Each [start, end) group of code dims reduced to its first principal component: (train (N, G), test (M, G),
    the share of the group's variance that component explains, per group).

    The PCA of each group is fitted on the training codes (centred, as sklearn's PCA) and applied to both; a
    one-dim group is only centred. DisDiff's evaluation fits it on the codes of the whole data set it then
    scores; fitting on the training codes keeps the test codes out of the fit. The sign of a component is
    arbitrary, which none of the metrics sees.
    """
    from sklearn.decomposition import PCA

    train, test = _check_codes(train, "train codes"), _check_codes(test, "test codes")
    bounds = _check_groups(groups, train.shape[1])
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"test codes have {test.shape[1]} dims, train codes {train.shape[1]}")
    out_tr, out_te, explained = [], [], []
    for start, end in bounds:
        pca = PCA(n_components=1, svd_solver="full").fit(train[:, start:end])
        out_tr.append(pca.transform(train[:, start:end])[:, 0])
        out_te.append(pca.transform(test[:, start:end])[:, 0])
        explained.append(float(pca.explained_variance_ratio_[0]) if end - start > 1 else 1.0)
    return np.stack(out_tr, axis=1), np.stack(out_te, axis=1), explained


def get_protocol(name: str, max_train: int | None = None) -> Protocol:
    """The named protocol; ``max_train`` replaces its GBT training rows (0 = all), which makes it ``custom``."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown disentanglement protocol {name!r}; available: {', '.join(PROTOCOLS)}")
    if max_train is not None:
        return replace(PROTOCOLS[name], name="custom", dci_max_train=max_train or None)
    return PROTOCOLS[name]


def subsample_rows(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``max_rows`` of n rows (all rows if max_rows is None or >= n)."""
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    if max_rows < 2:
        raise ValueError(f"a row subset needs at least 2 rows (or None for all), got {max_rows}")
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


# ---------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------


def _check_codes(codes: np.ndarray, what: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, num_codes), got shape {codes.shape}")
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"{what} is empty: shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.number) or np.issubdtype(codes.dtype, np.complexfloating):
        raise ValueError(f"{what} must be real numbers, got dtype {codes.dtype}")
    codes = codes.astype(np.float64, copy=False)
    if not np.isfinite(codes).all():
        bad = np.argwhere(~np.isfinite(codes))[0]
        raise ValueError(f"{what} contains NaN or inf (first at row {bad[0]}, dim {bad[1]})")
    return codes


def _check_factors(factors: np.ndarray, n: int, what: str) -> np.ndarray:
    factors = np.asarray(factors)
    if factors.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, num_factors) of integer codes, got shape {factors.shape}")
    if factors.shape[0] != n:
        raise ValueError(f"{what} has {factors.shape[0]} rows but the codes have {n}")
    if factors.shape[1] == 0:
        raise ValueError(f"{what} has no factor columns: shape {factors.shape}")
    if np.issubdtype(factors.dtype, np.integer) or factors.dtype == np.bool_:
        return factors.astype(np.int64, copy=False)
    # Floats holding whole numbers (e.g. a factor table loaded from .npy as float) are accepted as class codes.
    if np.issubdtype(factors.dtype, np.floating) and np.isfinite(factors).all() and (factors == np.round(factors)).all():
        return factors.astype(np.int64)
    raise ValueError(f"{what} must hold integer class codes, got dtype {factors.dtype} with non-integer values")


def _check_importance(importance: np.ndarray) -> np.ndarray:
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 2:
        raise ValueError(f"importance must be a 2-D array (num_codes, num_factors), got shape {importance.shape}")
    if not np.isfinite(importance).all():
        raise ValueError("importance contains NaN or inf")
    if (importance < 0).any():
        raise ValueError(f"importance must be non-negative, got a minimum of {importance.min()}")
    return importance


def _normalised_entropy(p: np.ndarray, base: int) -> np.ndarray:
    """Entropy of each column of non-negative weights p (K, M), normalised to a distribution, in log base ``base``.

    A column of zeros gives 1 (the uniform distribution's entropy), which is what disentanglement_lib's
    ``scipy.stats.entropy(p + 1e-11)`` gives for it; elsewhere we use 0 log 0 = 0 without the 1e-11. The
    resulting D and C differ from disentanglement_lib's by less than 1e-7 (measured: up to 4e-8 on random
    sparse 512 x 7 importance matrices, more for sparser and larger ones).
    """
    total = p.sum(axis=0)
    safe_total = np.where(total > 0, total, 1.0)
    q = p / safe_total
    logq = np.log(q, where=q > 0, out=np.zeros_like(q))
    h = -(q * logq).sum(axis=0) / np.log(base)
    return np.where(total > 0, h, 1.0)


# ---------------------------------------------------------------------------------------------------------------
# DCI (Eastwood & Williams 2018, "A Framework for the Quantitative Evaluation of Disentangled Representations")
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class DCIResult:
    disentanglement: float
    completeness: float
    informativeness_train: float  # mean accuracy over factors of the GBT classifiers on the rows they were fit on
    informativeness_test: float  # the same on the test rows
    importance: np.ndarray = field(repr=False)  # (num_codes, num_factors), |feature_importances_| per factor
    per_factor_train: list[float] = field(default_factory=list)  # accuracy per factor, training rows
    per_factor_test: list[float] = field(default_factory=list)  # accuracy per factor, test rows
    num_train: int = 0  # rows the classifiers were fitted on
    num_test: int = 0  # rows they were scored on

    def to_dict(self) -> dict:
        out = asdict(self)
        out["importance"] = self.importance.tolist()
        return out


def disentanglement_from_importance(importance: np.ndarray) -> float:
    """DCI disentanglement of an importance matrix R (num_codes, num_factors), as disentanglement_lib computes it.

    Per code i: D_i = 1 - H_F(R_i. / sum_k R_ik), entropy with log base F = num_factors. The score is
    sum_i rho_i D_i with rho_i = sum_k R_ik / sum_ik R_ik, the code's share of all importance, so a code that no
    classifier uses (a zero row) weighs 0. An all-zero matrix gives 0 (disentanglement_lib weighs codes
    uniformly then, and every D_i is 0).
    """
    importance = _check_importance(importance)
    num_codes, num_factors = importance.shape
    if num_factors < 2:
        raise ValueError(f"disentanglement needs at least 2 factors (entropy base = num_factors), got {num_factors}")
    per_code = 1.0 - _normalised_entropy(importance.T, base=num_factors)  # (num_codes,)
    total = importance.sum()
    weights = importance.sum(axis=1) / total if total > 0 else np.full(num_codes, 1.0 / num_codes)
    return float(np.sum(per_code * weights))


def completeness_from_importance(importance: np.ndarray) -> float:
    """DCI completeness of an importance matrix R (num_codes, num_factors), as disentanglement_lib computes it.

    Per factor k: C_k = 1 - H_D(R_.k / sum_i R_ik), entropy with log base D = num_codes. disentanglement_lib's
    ``completeness`` weighs C_k by the factor's share of all importance, sum_i R_ik / sum_ik R_ik (not a plain
    mean over factors); we do the same. With GBT importances every non-zero column sums to 1, so the weights are
    1/F for each factor a classifier could use and 0 for one it could not.
    """
    importance = _check_importance(importance)
    num_codes, num_factors = importance.shape
    if num_codes < 2:
        raise ValueError(f"completeness needs at least 2 code dims (entropy base = num_codes), got {num_codes}")
    per_factor = 1.0 - _normalised_entropy(importance, base=num_codes)  # (num_factors,)
    total = importance.sum()
    weights = importance.sum(axis=0) / total if total > 0 else np.full(num_factors, 1.0 / num_factors)
    return float(np.sum(per_factor * weights))


def _fit_factor(codes_train, labels_train, codes_test, labels_test, seed):
    """One factor's GBT: (importance (num_codes,), train accuracy, test accuracy). A top-level function so that
    a process pool can run the factors in parallel."""
    model = GradientBoostingClassifier(random_state=seed)
    model.fit(codes_train, labels_train)
    return (np.abs(model.feature_importances_), float(np.mean(model.predict(codes_train) == labels_train)),
            float(np.mean(model.predict(codes_test) == labels_test)))


def default_jobs(num_tasks: int) -> int:
    """Parallel processes for independent fits: one per task, at most the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(num_tasks, cpus))


def dci(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    seed: int = 0,
    progress: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
    n_jobs: int | None = 1,
) -> DCIResult:
    """DCI disentanglement, completeness and informativeness (disentanglement_lib ``dci.compute_dci``).

    One ``GradientBoostingClassifier`` with sklearn defaults (100 stages, depth 3, lr 0.1) per factor, fit on
    all code dims; the importance matrix holds ``abs(feature_importances_)`` in column k. Seeding: every
    factor's classifier gets ``random_state=seed`` (disentanglement_lib leaves it unset, i.e. numpy's global
    state); with sklearn's defaults (no subsampling, all features) the seed only breaks ties between equally
    good splits. Informativeness is the classifiers' accuracy, averaged over factors (disentanglement_lib
    reports it under the same names, although its docstrings call it an error). D and C: see
    ``disentanglement_from_importance`` and ``completeness_from_importance``.

    ``max_train`` / ``max_test``: fit on / score on a seeded random subset of that many rows (None: all);
    informativeness_train is then measured on the fitted subset. ``n_jobs``: factors fitted in parallel
    processes (None: one per factor, up to the CPUs available); each fit is deterministic, so the result does
    not depend on it. Cost: the default GBT fits 100 x (number of classes, or 1 for a binary factor) depth-3
    trees with exact splits per factor, about linear in N x num_codes x classes (figures in
    ``diti disentangle --help``).
    """
    codes_train = _check_codes(codes_train, "codes_train")
    codes_test = _check_codes(codes_test, "codes_test")
    factors_train = _check_factors(factors_train, len(codes_train), "factors_train")
    factors_test = _check_factors(factors_test, len(codes_test), "factors_test")
    if codes_test.shape[1] != codes_train.shape[1]:
        raise ValueError(f"codes_test has {codes_test.shape[1]} dims but codes_train has {codes_train.shape[1]}")
    if factors_test.shape[1] != factors_train.shape[1]:
        raise ValueError(
            f"factors_test has {factors_test.shape[1]} factors but factors_train has {factors_train.shape[1]}")
    num_codes, num_factors = codes_train.shape[1], factors_train.shape[1]
    if num_codes < 2 or num_factors < 2:
        raise ValueError(f"DCI needs at least 2 code dims and 2 factors, got {num_codes} and {num_factors}")
    for what, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and value < 2:
            raise ValueError(f"{what} must be at least 2 (or None for all rows), got {value}")
    keep = subsample_rows(len(codes_train), max_train, seed)
    codes_train, factors_train = codes_train[keep], factors_train[keep]
    keep = subsample_rows(len(codes_test), max_test, seed + 1)
    codes_test, factors_test = codes_test[keep], factors_test[keep]
    for k in range(num_factors):
        if len(np.unique(factors_train[:, k])) < 2:
            raise ValueError(f"factor {k} takes a single value in the training rows: a classifier cannot be fit")

    args = [(codes_train, factors_train[:, k], codes_test, factors_test[:, k], seed) for k in range(num_factors)]
    jobs = default_jobs(num_factors) if n_jobs is None else n_jobs
    if jobs < 1:
        raise ValueError(f"n_jobs must be >= 1 (or None for one per CPU), got {n_jobs}")
    bar = tqdm(total=num_factors, desc="dci", disable=not progress, leave=False, unit="factor")
    if jobs == 1:
        fits = []
        for a in args:
            fits.append(_fit_factor(*a))
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: a forked child of a process holding torch's thread pools can deadlock
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_fit_factor, *a) for a in args]
            fits = []
            for f in futures:
                fits.append(f.result())
                bar.update()
    bar.close()
    importance = np.stack([f[0] for f in fits], axis=1)  # (num_codes, num_factors)
    acc_train, acc_test = [f[1] for f in fits], [f[2] for f in fits]
    return DCIResult(
        disentanglement=disentanglement_from_importance(importance),
        completeness=completeness_from_importance(importance),
        informativeness_train=float(np.mean(acc_train)),
        informativeness_test=float(np.mean(acc_test)),
        importance=importance,
        per_factor_train=acc_train,
        per_factor_test=acc_test,
        num_train=len(codes_train),
        num_test=len(codes_test),
    )


# ---------------------------------------------------------------------------------------------------------------
# MIG (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"), discrete estimator
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class MIGResult:
    mig: float  # mean of per_factor over the non-constant factors
    per_factor: np.ndarray = field(repr=False)  # (num_factors,) (top-1 - top-2 MI) / H(factor); NaN if constant
    mutual_info: np.ndarray = field(repr=False)  # (num_codes, num_factors) in nats, on the discretised codes
    factor_entropy: np.ndarray = field(repr=False)  # (num_factors,) in nats
    skipped_factors: list[int] = field(default_factory=list)  # constant factors (zero entropy)

    def to_dict(self) -> dict:
        return {
            "mig": self.mig,
            "per_factor": [None if np.isnan(v) else float(v) for v in self.per_factor],
            "mutual_info": self.mutual_info.tolist(),
            "factor_entropy": self.factor_entropy.tolist(),
            "skipped_factors": list(self.skipped_factors),
        }


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Bin each code dim into ``num_bins`` equal-width bins over its own range (disentanglement_lib
    ``utils._histogram_discretize``): ``np.digitize(x, np.histogram(x, num_bins)[1][:-1])``, bin ids 1..num_bins.
    """
    codes = _check_codes(codes, "codes")
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    out = np.empty(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        # Dropping the last edge puts the maximum in bin num_bins rather than in an extra bin of its own.
        edges = np.histogram(codes[:, i], bins=num_bins)[1][:-1]
        out[:, i] = np.digitize(codes[:, i], edges)
    return out


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> MIGResult:
    """Mutual information gap (disentanglement_lib ``mig.compute_mig`` with ``histogram_discretize``, 20 bins).

    Each code dim is discretised (``histogram_discretize``); I(z_i; v_k) = ``mutual_info_score(v_k, z_i)`` and
    H(v_k) = ``mutual_info_score(v_k, v_k)``, both in nats. Per factor, gap_k = (largest - second largest MI over
    codes) / H(v_k), which lies in [0, 1]; MIG is the mean gap. disentanglement_lib divides by zero for a
    constant factor; we leave such factors out of the mean (NaN in ``per_factor``, listed in
    ``skipped_factors``) and raise a ValueError if every factor is constant.
    """
    codes = _check_codes(codes, "codes")
    factors = _check_factors(factors, len(codes), "factors")
    num_codes, num_factors = codes.shape[1], factors.shape[1]
    if num_codes < 2:
        raise ValueError(f"MIG needs at least 2 code dims (a gap between the top two), got {num_codes}")
    binned = histogram_discretize(codes, num_bins)
    mi = np.array([[mutual_info_score(factors[:, k], binned[:, i]) for k in range(num_factors)]
                   for i in range(num_codes)])  # (num_codes, num_factors)
    entropy = np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(num_factors)])
    skipped = [k for k in range(num_factors) if len(np.unique(factors[:, k])) < 2]
    if len(skipped) == num_factors:
        raise ValueError("every factor is constant (zero entropy): MIG is undefined")
    top2 = -np.sort(-mi, axis=0)[:2]  # (2, num_factors), largest first
    per_factor = np.full(num_factors, np.nan)
    used = np.setdiff1d(np.arange(num_factors), skipped)
    per_factor[used] = (top2[0, used] - top2[1, used]) / entropy[used]
    return MIGResult(mig=float(np.mean(per_factor[used])), per_factor=per_factor, mutual_info=mi,
                     factor_entropy=entropy, skipped_factors=skipped)


# ---------------------------------------------------------------------------------------------------------------
# FactorVAE score (Kim & Mnih 2018, "Disentangling by Factorising"), on a fixed data set
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class FactorVAEResult:
    train_accuracy: float
    eval_accuracy: float
    num_active_dims: int  # code dims with global std >= prune_dims_threshold

    def to_dict(self) -> dict:
        return asdict(self)


def _factor_vae_votes(
    normalised: np.ndarray,
    factors: np.ndarray,
    usable: np.ndarray,
    active: np.ndarray,
    batch_size: int,
    num_votes: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Vote counts (num_factors, num_codes): each vote fixes one factor and names the active dim of least variance."""
    n, num_codes = normalised.shape
    votes = np.zeros((factors.shape[1], num_codes), dtype=np.int64)
    active_idx = np.flatnonzero(active)
    rows_of = {}  # (k, v) -> rows with factor k == v, built once per value
    for _ in range(num_votes):
        k = rng.choice(usable)
        # disentanglement_lib fixes factor k at the value of the first of its freshly sampled factor vectors, so
        # v follows the marginal of factor k: taking it from a random row reproduces that on a fixed data set.
        v = factors[rng.integers(n), k]
        if (k, v) not in rows_of:
            rows_of[k, v] = np.flatnonzero(factors[:, k] == v)
        rows = rows_of[k, v]
        batch = normalised[rng.choice(rows, size=batch_size, replace=True)][:, active_idx]
        local_var = np.var(batch, axis=0, ddof=1)
        votes[k, active_idx[np.argmin(local_var)]] += 1
    return votes


def factor_vae_score(
    codes: np.ndarray,
    factors: np.ndarray,
    seed: int = 0,
    batch_size: int = 64,
    num_train_votes: int = 10_000,
    num_eval_votes: int = 5_000,
    num_variance_rows: int | None = 10_000,
    prune_dims_threshold: float = 0.05,
) -> FactorVAEResult:
    """FactorVAE score (disentanglement_lib ``factor_vae.compute_factor_vae``), drawing rows of a data set.

    Defaults are disentanglement_lib's configs: batches of 64, 10,000 training and 5,000 evaluation votes, the
    global variance estimated on 10,000 samples.

    1. Global variance of each dim (ddof=1) over ``num_variance_rows`` rows drawn without replacement (all rows
       when there are fewer, or for None); dims with std < ``prune_dims_threshold`` are pruned
       (disentanglement_lib's ``prune_dims`` compares the std, not the variance, with 0.05 in its configs).
    2. Each vote: a factor k uniformly among the non-constant factors, a value v of k taken from a uniformly
       drawn row (v thus follows k's marginal, as in disentanglement_lib), ``batch_size`` rows drawn with
       replacement among those with factor k == v; the vote is (argmin over active dims of the batch variance
       (ddof=1) divided by the global variance, k). disentanglement_lib samples fresh observations from the
       simulator with the other factors uniform; here they follow the data set's conditional distribution.
    3. Majority-vote classifier dim -> factor from the training votes; accuracies on the training votes and on
       independent evaluation votes. Chance is about 1/num_factors.

    Two disentanglement_lib slips are not copied: it stores the argmin's index among active dims as a dim
    index (a consistent relabelling, so accuracies are unchanged) and reports ``len(active_dims)`` of a boolean
    mask (the total dim count); we report the number of active dims. If no dim is active the accuracies are 0,
    as there. Constant factors are never drawn (fixing them changes nothing); all-constant is a ValueError.
    Deterministic given ``seed`` (``np.random.default_rng``).
    """
    codes = _check_codes(codes, "codes")
    factors = _check_factors(factors, len(codes), "factors")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (a variance needs two rows), got {batch_size}")
    if num_train_votes < 1 or num_eval_votes < 1:
        raise ValueError(f"num_train_votes and num_eval_votes must be positive, got {num_train_votes}, "
                         f"{num_eval_votes}")
    if len(codes) < 2:
        raise ValueError(f"FactorVAE score needs at least 2 rows, got {len(codes)}")
    usable = np.array([k for k in range(factors.shape[1]) if len(np.unique(factors[:, k])) > 1])
    if len(usable) == 0:
        raise ValueError("every factor is constant: the FactorVAE score is undefined")

    rng = np.random.default_rng(seed)
    if num_variance_rows is not None and num_variance_rows < 2:
        raise ValueError(f"num_variance_rows must be at least 2 (or None for all rows), got {num_variance_rows}")
    if num_variance_rows is None or num_variance_rows >= len(codes):
        variance_rows = codes
    else:
        variance_rows = codes[rng.choice(len(codes), num_variance_rows, replace=False)]
    global_var = np.var(variance_rows, axis=0, ddof=1)  # (num_codes,)
    active = np.sqrt(global_var) >= prune_dims_threshold
    if not active.any():
        return FactorVAEResult(train_accuracy=0.0, eval_accuracy=0.0, num_active_dims=0)
    # Dividing by the global std makes every active dim's variance comparable (local / global variance).
    normalised = np.zeros_like(codes)
    normalised[:, active] = codes[:, active] / np.sqrt(global_var[active])

    train_votes = _factor_vae_votes(normalised, factors, usable, active, batch_size, num_train_votes, rng)
    eval_votes = _factor_vae_votes(normalised, factors, usable, active, batch_size, num_eval_votes, rng)
    classifier = np.argmax(train_votes, axis=0)  # (num_codes,) factor assigned to each dim
    dims = np.arange(codes.shape[1])
    return FactorVAEResult(
        train_accuracy=float(train_votes[classifier, dims].sum() / train_votes.sum()),
        eval_accuracy=float(eval_votes[classifier, dims].sum() / eval_votes.sum()),
        num_active_dims=int(active.sum()),
    )


# ---------------------------------------------------------------------------------------------------------------
# Alignment of factors with groups of code dims (DiTi chunks / partition stages)
# ---------------------------------------------------------------------------------------------------------------


def _check_groups(groups: list[tuple[int, int]], num_codes: int) -> list[tuple[int, int]]:
    """[start, end) dim ranges that tile [0, num_codes) exactly (any order), as int pairs in the order given."""
    if len(groups) == 0:
        raise ValueError("groups is empty: give [start, end) ranges tiling [0, num_codes)")
    bounds = []
    for g in groups:
        if len(g) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) for b in g):
            raise ValueError(f"each group must be a (start, end) pair of ints, got {g!r}")
        start, end = int(g[0]), int(g[1])
        if not 0 <= start < end <= num_codes:
            raise ValueError(f"group {g!r} is not a non-empty range inside [0, {num_codes})")
        bounds.append((start, end))
    position = 0
    for start, end in sorted(bounds):
        if start != position:
            kind = "overlap" if start < position else "gap"
            raise ValueError(f"groups must tile [0, {num_codes}) without overlap or gap: {kind} at dim "
                             f"{min(start, position)} (groups {groups!r})")
        position = end
    if position != num_codes:
        raise ValueError(f"groups cover [0, {position}) but the importance matrix has {num_codes} code dims")
    return bounds


def group_importance(importance: np.ndarray, groups: list[tuple[int, int]]) -> np.ndarray:
    """Importance summed over each group of code dims: (num_groups, num_factors), rows in the order given.

    ``importance`` is a (num_codes, num_factors) matrix such as ``DCIResult.importance``; ``groups`` are
    [start, end) dim ranges (DiTi's chunks, or the dims of each partition stage) that tile [0, num_codes).
    """
    importance = _check_importance(importance)
    bounds = _check_groups(groups, importance.shape[0])
    return np.stack([importance[start:end].sum(axis=0) for start, end in bounds])


def grouped_dci(importance: np.ndarray, groups: list[tuple[int, int]]) -> dict:
    """DCI disentanglement and completeness with groups of dims (chunks, stages) in place of single dims.

    The group-level importance matrix R_g (``group_importance``) goes through the same formulas as the per-dim
    one: D = sum_g rho_g (1 - H_F(R_g. / sum_k R_gk)), C = sum_k w_k (1 - H_G(R_.k / sum_g R_gk)), entropy bases
    F = num_factors and G = num_groups. Because entropy is concave, group-level D is never above per-dim D
    (merging dims can only mix their factors); group-level C is at least per-dim C for a factor spread over the
    dims of one group. A code whose chunks each hold one factor, however mixed inside the chunk, has D and C
    near 1 at the group level. One group gives no completeness (None): PDAE's code is one chunk, so it is
    measured on the same dim groups as the DiTi run it is compared with.
    """
    per_group = group_importance(importance, groups)
    return {
        "importance": per_group.tolist(),
        "disentanglement": disentanglement_from_importance(per_group),
        "completeness": completeness_from_importance(per_group) if len(per_group) >= 2 else None,
    }


def alignment(importance: np.ndarray, groups: list[tuple[int, int]]) -> np.ndarray:
    """Share of each factor's importance held by each group of code dims: (num_groups, num_factors).

    ``importance`` is a (num_codes, num_factors) matrix such as ``DCIResult.importance``; ``groups`` are
    [start, end) dim ranges (e.g. DiTi's chunks, or the dims of one partition stage) that must tile
    [0, num_codes) exactly, in any order; rows of the result follow the order given. Each column sums to 1, or
    is all 0 for a factor no code is important for. Not a disentanglement_lib metric: it is how we read where
    in the time-step partition a factor lands.
    """
    per_group = group_importance(importance, groups)  # (G, F)
    total = per_group.sum(axis=0)  # (F,)
    return np.divide(per_group, total, out=np.zeros_like(per_group), where=total > 0)

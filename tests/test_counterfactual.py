"""Counterfactuals, ProbMask edits and counterfactual fidelity on tiny random models (16 px, few steps)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diti.config import UNetConfig
from diti.data import generate_shapes, open_dataset
from diti.diffusion.schedule import NoiseSchedule
from diti.evaluation.counterfactual import (
    counterfactual_figure,
    counterfactual_grid,
    standard_counterfactual_figure,
)
from diti.evaluation.fidelity import (
    FactorClassifier,
    counterfactual_fidelity,
    load_factor_classifier,
    plot_fidelity,
    save_factor_classifier,
    train_factor_classifier,
)
from diti.evaluation.grids import image_grid
from diti.evaluation.manipulate import edit_codes, fit_probmask, manipulation_figure, manipulation_grid
from diti.inference import dim_groups, mix_codes, reconstruct, select_dims, slerp
from diti.models.diti import DiTiModel
from diti.models.dm import build_unet
from diti.models.encoder import Encoder
from diti.partition import Partition

STEPS = 10
TINY_UNET = UNetConfig(
    block_out_channels=[16, 32], attention_levels=[1], norm_num_groups=8, attention_head_dim=8
)


def tiny_model(partition: Partition) -> DiTiModel:
    """A random 16 px DiTi model whose decoder output is not zero, so z changes the decoded image."""
    torch.manual_seed(0)
    encoder = Encoder(16, partition.latent_dim, channels=[16, 32], attn_resolutions=[], norm_groups=8)
    model = DiTiModel(build_unet(TINY_UNET, 16), encoder, partition, NoiseSchedule()).eval()
    torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.02)
    torch.nn.init.normal_(model.decoder.z_embed.weight, std=2.0)
    return model


@pytest.fixture(scope="module")
def staged():
    """d = 16, k = 4, two stages: t < 500 holds dims 0-5, t >= 500 dims 6-15."""
    return tiny_model(Partition(16, 4, 1000, (500, 1000), (6, 10)))


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


# ------------------------------------------------------------------------------------------------
def test_select_dims_by_chunk_stage_and_dim():
    part = Partition(16, 4, 1000, (500, 1000), (6, 10))
    assert part.chunk_dim_ranges == [(0, 3), (3, 6), (6, 11), (11, 16)]
    assert np.flatnonzero(select_dims(part, chunks=[1, 3])).tolist() == [3, 4, 5, 11, 12, 13, 14, 15]
    assert np.flatnonzero(select_dims(part, stages=[1])).tolist() == list(range(6, 16))
    assert np.flatnonzero(select_dims(part, dims=[0, 7])).tolist() == [0, 7]
    assert not select_dims(part, chunks=[]).any()
    with pytest.raises(ValueError, match="chunk index 4"):
        select_dims(part, chunks=[0, 4])
    with pytest.raises(ValueError, match="stage index 2"):
        select_dims(part, stages=[2])
    with pytest.raises(ValueError, match="dim index -1"):
        select_dims(part, dims=[-1])
    with pytest.raises(ValueError, match="exactly one"):
        select_dims(part, chunks=[0], stages=[0])
    with pytest.raises(ValueError, match="exactly one"):
        select_dims(part)


def test_dim_groups_for_stages_chunks_and_pdae():
    assert [g.label for g in dim_groups(Partition(16, 4, 1000, (500, 1000), (6, 10)))] == [
        "stage 0: t 0-499, dims 0-5",
        "stage 1: t 500-999, dims 6-15",
    ]
    chunks = dim_groups(Partition(64, 8), max_groups=4)
    assert [g.dim_range for g in chunks] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert chunks[1].label == "chunks 2-3: t 250-499, dims 16-31"
    pdae = dim_groups(Partition(16, 1), max_groups=4)
    assert [g.dim_range for g in pdae] == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert all(g.t_range is None and "k=1" in g.label for g in pdae)


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)
    # between two vectors of one norm, slerp keeps that norm (linear interpolation would shrink it)
    a1, b1 = (
        a / a.flatten(1).norm(dim=1)[:, None, None, None],
        b / b.flatten(1).norm(dim=1)[:, None, None, None],
    )
    assert torch.allclose(slerp(a1, b1, 0.3).flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)
    assert mid.shape == a.shape
    assert torch.allclose(slerp(a, a, 0.4), a, atol=1e-6)  # parallel inputs fall back to lerp


def test_mix_codes_changes_only_selected_dims():
    za, zb = torch.randn(2, 6), torch.randn(2, 6)
    mask = np.array([0, 1, 1, 0, 0, 0], dtype=bool)
    mixed = mix_codes(za, zb, mask, [0.0, 0.5, 1.0])
    assert torch.equal(mixed[0], za)
    assert torch.equal(mixed[:, :, ~mask], za[None, :, ~mask].expand(3, -1, -1))
    assert torch.allclose(mixed[1, :, mask], (za[:, mask] + zb[:, mask]) / 2)
    assert torch.equal(mixed[2, :, mask], zb[:, mask])


def test_alpha_endpoints_reproduce_the_reconstructions(staged, images):
    x_a, x_b = images[:2], images[2:]
    rec_a, rec_b = reconstruct(staged, x_a, STEPS), reconstruct(staged, x_b, STEPS)
    out = counterfactual_grid(staged, x_a, x_b, select_dims(staged.partition, stages=[1]), num_steps=STEPS)
    assert out["images"].shape == (2, 5, 3, 16, 16) and out["labels"][0] == "alpha=0"
    assert torch.equal(out["images"][:, 0], rec_a) and torch.equal(out["reconstruction"], rec_a)
    assert not torch.allclose(out["images"][:, -1], rec_a, atol=1e-3)  # the swapped stage matters
    everything = np.ones(16, dtype=bool)
    swap = counterfactual_grid(staged, x_a, x_b, everything, mode="swap", x_T="slerp", num_steps=STEPS)
    assert swap["labels"] == ["swap"] and torch.equal(swap["images"][:, 0], rec_b)
    assert torch.equal(swap["reconstruction"], rec_a)
    single = counterfactual_grid(staged, x_a[0], x_b[0], everything, alphas=(0.0, 0.5), num_steps=STEPS)
    assert single["images"].shape == (2, 3, 16, 16) and single["reconstruction"].shape == (3, 16, 16)


def test_swapping_nothing_changes_nothing(staged, images):
    x_a = images[:2]
    rec = reconstruct(staged, x_a, STEPS)
    empty = counterfactual_grid(
        staged, x_a, images[2:], np.zeros(16, bool), alphas=(0.5, 1.0), num_steps=STEPS
    )
    assert torch.equal(empty["images"][:, 0], rec) and torch.equal(empty["images"][:, 1], rec)
    # b = a: every dim may be swapped and x_T slerped, and the image is still a's reconstruction
    same = counterfactual_grid(
        staged, x_a, x_a, np.ones(16, bool), alphas=(0.5, 1.0), x_T="slerp", num_steps=STEPS
    )
    assert torch.allclose(same["images"], rec[:, None].expand(-1, 2, -1, -1, -1), atol=1e-4)


def test_grid_and_figures_are_written(tmp_path, staged, images, shapes16):
    plain = image_grid(images, ncols=2, cell=32, pad=2)
    assert plain.size == (2 * 34 + 2, 2 * 34 + 2)
    path = counterfactual_figure(
        staged, images[:2], images[2:], tmp_path / "cf.png", num_steps=STEPS, cell=32
    )
    with Image.open(path) as im:
        w, h = im.size
    rows, cols = 2 * 2, 5 + 2  # 2 pairs x 2 stages; a, 5 alphas, b
    assert w > cols * 34 + 2 and 0 < h - (rows * 34 + 2) < 60  # room for the labels and the title
    pdae = tiny_model(Partition(16, 1))
    ds = open_dataset(shapes16, "test")
    path = standard_counterfactual_figure(
        pdae, ds, tmp_path / "pdae.png", num_pairs=1, num_steps=5, cell=16, max_groups=3, alphas=(0.0, 1.0)
    )
    with Image.open(path) as im:
        assert im.size[1] - (3 * 18 + 2) > 0  # three dim-group rows


# ------------------------------------------------------------------------------------------------
def test_probmask_finds_the_informative_dims_and_edits_monotonically():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(1000, 16)) * rng.uniform(0.2, 3.0, 16) + rng.normal(size=16)
    u = (z - z.mean(0)) / z.std(0)
    y = (u[:, 2] - 0.8 * u[:, 5] + 0.6 * u[:, 11] > 0.3).astype(int)
    res = fit_probmask(z, y, d_prime=3, epochs=20, seed=0)
    assert sorted(res.mask_dims.tolist()) == [2, 5, 11]
    assert res.accuracy > 0.9 and res.balanced_accuracy > 0.9
    assert np.count_nonzero(res.weights) == 3
    strengths = [-2.0, -1.0, 0.0, 1.0, 2.0]
    edited = edit_codes(z[:8], res, strengths)
    assert edited.shape == (5, 8, 16)
    assert np.array_equal(
        edited[:, :, [0, 1, 3]], np.broadcast_to(z[:8, [0, 1, 3]], (5, 8, 3))
    )  # off-mask dims kept
    logits = np.stack([res.logits(e) for e in edited])  # (5, 8)
    assert (np.diff(logits, axis=0) > 0).all()
    json.dumps(res.to_dict())
    # a multi-class factor: one class vs rest
    classes = rng.integers(0, 3, size=1000)
    z3 = rng.normal(size=(1000, 8))
    z3[:, 4] += 3 * (classes == 2)
    assert fit_probmask(z3, classes, d_prime=1, target_class=2, epochs=5).mask_dims.tolist() == [4]
    with pytest.raises(ValueError, match=r"more than two values \[0, 1, 2\]: give the class to move towards "
                       r"\(target_class=, or --target-class on the command line\)"):
        fit_probmask(z3, classes, d_prime=1)


def test_manipulation_grid_decodes_every_strength(tmp_path, staged, images):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 16))
    res = fit_probmask(z, (z[:, 7] > 0).astype(int), d_prime=2, epochs=3)
    out = manipulation_grid(staged, images[:2], res, strengths=(-2.0, 0.0, 2.0), num_steps=STEPS)
    assert out["images"].shape == (2, 3, 3, 16, 16) and out["labels"] == ["lambda=-2", "lambda=0", "lambda=2"]
    assert torch.equal(out["images"][:, 1], reconstruct(staged, images[:2], STEPS))
    assert (np.diff(out["logits"], axis=0) > 0).all()
    assert manipulation_figure(
        staged, images[:2], res, tmp_path / "edit.png", (-1.0, 1.0), num_steps=5
    ).is_file()


# ------------------------------------------------------------------------------------------------
def test_factor_classifier_learns_shapes_at_16px(tmp_path):
    root = generate_shapes(
        tmp_path / "shapes", resolution=16, n_train=2000, n_test=300, seed=0, progress=False
    )
    classifier, info = train_factor_classifier(open_dataset(root, "train"), epochs=4, seed=0)
    # measured: ~0.96 mean test accuracy in ~5 s on one CPU thread (shape and scale are the hardest at 16 px)
    assert info["mean_test_accuracy"] > 0.9, info
    assert info["test_accuracy"]["background_color"] > 0.95
    path = save_factor_classifier(classifier, tmp_path / "clf.safetensors", extra=info)
    loaded, extra = load_factor_classifier(path)
    x = open_dataset(root, "test").__getitems__(list(range(8)))
    assert np.array_equal(loaded.predict(x), classifier.predict(x)) and extra["epochs"] == 4


def test_fidelity_matrices_and_figure(tmp_path, staged, shapes16):
    test = open_dataset(shapes16, "test")
    names, classes = test.attributes.names, [test.attributes.num_classes(i) for i in range(7)]
    torch.manual_seed(0)
    classifier = FactorClassifier(names, classes, 16, width=8).eval()  # untrained: only shapes are checked
    res = counterfactual_fidelity(staged, classifier, test, num_pairs=6, num_steps=5, seed=0, progress=False)
    assert res.takes_source.shape == res.keeps_target.shape == (3, 7)  # 2 stages + all dims
    assert res.group_labels[-1] == "all dims: 0-15"
    for m in (res.takes_source, res.keeps_target, res.reconstruction_accuracy[None], res.real_accuracy[None]):
        values = m[~np.isnan(m)]
        assert ((values >= 0) & (values <= 1)).all()
    assert (np.nan_to_num(res.takes_source + res.keeps_target) <= 1 + 1e-9).all()
    d = json.loads(json.dumps(res.to_dict()))
    assert d["factor_names"] == names and len(d["takes_source"]) == 3
    assert "takes source" in res.format_table()
    assert plot_fidelity(res, tmp_path / "fidelity.png").stat().st_size > 1000


def test_clip_x0_clips_decoding_only(staged, images):
    """clip_x0: the same inversions; decoded images inside [-1, 1] (test_ddim checks the step's definition)."""
    x_a, x_b = images[:2], images[2:]
    mask = select_dims(staged.partition, stages=[1])
    plain = counterfactual_grid(staged, x_a, x_b, mask, alphas=(0.0, 1.0), num_steps=STEPS)
    clipped = counterfactual_grid(staged, x_a, x_b, mask, alphas=(0.0, 1.0), num_steps=STEPS, clip_x0=True)
    for key in ("z_a", "z_b", "x_T_a", "x_T_b"):  # inversion never clips
        assert torch.equal(plain[key], clipped[key])
    assert clipped["images"].abs().max() <= 1.0
    assert torch.equal(clipped["reconstruction"], reconstruct(staged, x_a, STEPS, clip_x0=True))
    assert plain["images"].abs().max() > 1  # this random model decodes far outside [-1, 1] unclipped


def test_hit_and_leakage_on_a_hand_made_result():
    from diti.evaluation.fidelity import hit_and_leakage
    from diti.folders.results import FidelityResult

    nan = float("nan")
    # 2 groups + all dims; factors a (lost at t 100), b (t 600), c (t 900)
    takes = np.array([[0.9, 0.1, 0.2], [0.0, 0.8, 0.6], [1.0, 1.0, 1.0]])
    keeps = np.array([[0.1, 0.8, 0.7], [0.9, 0.2, nan], [0.0, 0.0, 0.0]])
    result = FidelityResult(["a", "b", "c"], ["g0", "g1", "all dims: 0-7"], [(0, 4), (4, 8), (0, 8)],
                            [(0, 499), (500, 999), (0, 999)], takes, keeps, np.array([5, 5, 5]),
                            np.ones(3), np.ones(3), 10, 5, 0)
    rows = hit_and_leakage(result, {"a": 100.0, "b": 600.0, "c": 900.0})
    assert [r["group"] for r in rows] == ["g0", "g1"]  # the group of all dims is left out
    assert rows[0]["factors"] == ["a"] and rows[0]["hit"] == pytest.approx(0.9)
    assert rows[0]["leakage"] == pytest.approx(((1 - 0.8) + (1 - 0.7)) / 2)
    assert rows[1]["factors"] == ["b", "c"] and rows[1]["hit"] == pytest.approx(0.7)
    assert rows[1]["leakage"] == pytest.approx(0.1)  # NaN cells (no pair differs) are skipped
    # PDAE-like dim groups have no t-range of their own: the caller gives the same dims' DiTi t-ranges
    pdae = FidelityResult(["a", "b", "c"], ["dims 0-3", "dims 4-7"], [(0, 4), (4, 8)], [None, None], takes[:2],
                          keeps[:2], np.array([5, 5, 5]), np.ones(3), np.ones(3), 10, 5, 0)
    with pytest.raises(ValueError, match="has no t-range"):
        hit_and_leakage(pdae, {"a": 100.0, "b": 600.0, "c": 900.0})
    same = hit_and_leakage(pdae, {"a": 100.0, "b": 600.0, "c": 900.0}, [(0, 499), (500, 999)])
    assert [{**r, "group": None} for r in same] == [{**r, "group": None} for r in rows]
    with pytest.raises(ValueError, match="no attribute-loss crossing for the factors"):
        hit_and_leakage(result, {"a": 1.0})

"""Shapes3D, dSprites, MPI3D and Cars3D in their released layouts (data/ground_truth.py, data/arrays.py).

Every file here is written with the released keys, dtypes and axis order. Shapes3D is written at its released
size (480,000 images) as a chunked HDF5 file whose unwritten chunks take no space. The other three would take
gigabytes at their released sizes, so their tests add a small grid to the data set's table of grids
(``monkeypatch.setitem(Release.grids, count, sizes)``), the one thing that differs from a released file; the
released counts are tested through the same table. Nothing is downloaded; extracted arrays go to a temporary
$DITI_CACHE.
"""

from __future__ import annotations

import json
import pickle
import re

import h5py
import numpy as np
import pytest
from scipy.io import savemat
from typer.testing import CliRunner

from diti.cli.main import app
from diti.data import describe_formats, detect_format, open_dataset
from diti.data import ground_truth as gt
from diti.data.check import check_dataset

runner = CliRunner()
SHAPES3D_SIZES = (10, 10, 10, 8, 4, 15)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DITI_CACHE", str(tmp_path / "cache"))


def _codes(sizes) -> np.ndarray:
    return np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)


def _bands(codes: np.ndarray, sizes, res: int = 64) -> np.ndarray:
    """(N, res, res, 3) uint8: one horizontal band per factor, its grey level the factor's code."""
    n, f = codes.shape
    out = np.zeros((n, res, res, 3), np.uint8)
    edges = np.linspace(0, res, f + 1).astype(int)
    for i in range(f):
        level = (40 + 200 * codes[:, i] / max(sizes[i] - 1, 1)).astype(np.uint8)
        out[:, edges[i] : edges[i + 1]] = level[:, None, None, None]
    return out


def _shapes3d_labels(codes: np.ndarray) -> np.ndarray:
    values = [np.linspace(0, 0.9, 10)] * 3 + [np.linspace(0.75, 1.25, 8), np.arange(4.0), np.linspace(-30, 30, 15)]
    return np.stack([values[f][codes[:, f]] for f in range(6)], axis=1)


def write_shapes3d(root, sizes=SHAPES3D_SIZES, full_images=False, image_dtype=np.uint8, labels="ok"):
    """3dshapes.h5 as released: "images" uint8 (N, 64, 64, 3), "labels" float64 (N, 6). At the released size
    only images 0..9 are written (chunks of one image; the others are never allocated)."""
    root.mkdir(parents=True, exist_ok=True)
    codes = _codes(sizes)
    n = len(codes)
    with h5py.File(root / gt.SHAPES3D_FILE, "w") as f:
        images = f.create_dataset("images", shape=(n, 64, 64, 3), dtype=image_dtype, chunks=(1, 64, 64, 3))
        if full_images:
            images[:] = _bands(codes, sizes)
        else:
            images[:10] = _bands(codes[:10], sizes)
        table = _shapes3d_labels(codes)
        if labels == "transposed":  # the orientation slowest instead of fastest
            table = table[np.argsort(np.ravel_multi_index(codes[:, ::-1].T, sizes[::-1]))]
        if labels != "missing":
            f.create_dataset("labels", data=table, compression="gzip", chunks=(min(n, 4096), 6))
    return root


# --- Shapes3D ------------------------------------------------------------------------------------------------
def test_shapes3d_at_its_released_size_opens_lazily(tmp_path):
    root = write_shapes3d(tmp_path / "s3d")
    assert (root / gt.SHAPES3D_FILE).stat().st_size < 5_000_000  # 480,000 images, 10 of them written
    assert detect_format(root) == "shapes3d"
    train, test, every = (open_dataset(root, s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(every)) == (432_000, 48_000, 480_000)
    assert every.resolution == 64 and every.attributes.names == list(gt.SHAPES3D.factors)
    assert every.attributes.classes[3] == [f"{v:g}" for v in np.linspace(0.75, 1.25, 8)]
    assert every.attributes.classes[5][0] == "-30" and every.attributes.classes[5][-1] == "30"
    np.testing.assert_array_equal(every.attributes.values[123_456], np.unravel_index(123_456, SHAPES3D_SIZES))
    np.testing.assert_array_equal(every.images([3, 7, 3]), _bands(_codes(SHAPES3D_SIZES)[[3, 7, 3]], SHAPES3D_SIZES))
    for res in (16, 32):
        small = open_dataset(root, "train", res)
        assert small[0].shape == (3, res, res) and small.read_images([0, 1]).shape == (2, res, res, 3)
    assert len(pickle.dumps(every.array)) < 1000  # a DataLoader worker gets the path, never the pixels


def test_shapes3d_wrong_layouts_are_refused(tmp_path, monkeypatch):
    expected = "Expected datasets 'images' uint8 (N, 64, 64, 3), 'labels' float64 (N, 6) with N = 480,000"
    cases = {
        "float": dict(image_dtype=np.float32),
        "nolabels": dict(labels="missing"),
    }
    for name, kwargs in cases.items():
        monkeypatch.setitem(gt.SHAPES3D.grids, 600, (2, 2, 2, 5, 3, 5))
        root = write_shapes3d(tmp_path / name, (2, 2, 2, 5, 3, 5), **kwargs)
        monkeypatch.delitem(gt.SHAPES3D.grids, 600)
        with pytest.raises(ValueError, match="not in the released shapes3d layout") as err:
            open_dataset(root)
        assert expected in str(err.value)
    assert "'images' is float32 (600, 64, 64, 3)" in str(pytest.raises(ValueError, open_dataset,
                                                                           tmp_path / "float").value)
    # the right keys and dtypes but another image count
    root = write_shapes3d(tmp_path / "count", (2, 2, 2, 5, 3, 5))
    with pytest.raises(ValueError, match="600 images. Expected"):
        open_dataset(root)
    # the right count, labels in another order
    monkeypatch.setitem(gt.SHAPES3D.grids, 600, (2, 2, 2, 5, 3, 5))
    root = write_shapes3d(tmp_path / "order", (2, 2, 2, 5, 3, 5), labels="transposed")
    with pytest.raises(ValueError, match="not in row-major factor order"):
        open_dataset(root)


# --- dSprites ------------------------------------------------------------------------------------------------
DSPRITES_SMALL = (3, 2, 2, 2, 2)


def write_dsprites(root, sizes=DSPRITES_SMALL, imgs_shape=None, drop=(), swap=False, scale=1):
    """The released npz (np.savez_compressed, as DeepMind's file): imgs uint8 (N, 64, 64) in {0, 1},
    latents_classes int64 (N, 6) and latents_values float64 (N, 6) with the one-valued colour first, metadata
    a pickled dict."""
    root.mkdir(parents=True, exist_ok=True)
    codes = _codes(sizes)
    n = len(codes)
    classes = np.concatenate([np.zeros((n, 1), np.int64), codes], axis=1)
    if swap:
        classes[:, [4, 5]] = classes[:, [5, 4]]
    values = np.concatenate([np.ones((n, 1)), classes[:, 1:2] + 1.0, 0.5 + 0.1 * classes[:, 2:3],
                             classes[:, 3:4] * np.pi / 20, classes[:, 4:] / 31], axis=1)
    imgs = (_bands(codes, sizes)[..., 0] > 100).astype(np.uint8) * np.uint8(scale)
    members = {"imgs": imgs.reshape(imgs_shape) if imgs_shape else imgs, "latents_classes": classes,
               "latents_values": values, "metadata": np.array({"latents_sizes": np.array([1, *sizes])})}
    for key in drop:
        members.pop(key)
    np.savez_compressed(root / gt.DSPRITES_FILE, **members)
    return root, imgs


def test_dsprites_extracts_its_compressed_images_once(tmp_path, monkeypatch):
    monkeypatch.setitem(gt.DSPRITES.grids, 48, DSPRITES_SMALL)
    root, imgs = write_dsprites(tmp_path / "dsprites")
    assert detect_format(root) == "dsprites"
    every = open_dataset(root, "all")
    assert every.attributes.names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert every.attributes.classes[0] == ["square", "ellipse", "heart"]
    assert every.attributes.classes[1] == ["0.5", "0.6"] and every.attributes.classes[4] == ["0", "0.0322581"]
    got = every.images([0, 47, 5])
    assert got.shape == (3, 64, 64, 3) and set(np.unique(got)) <= {0, 255}
    np.testing.assert_array_equal(got[..., 1], imgs[[0, 47, 5]] * 255)
    cached = list((tmp_path / "cache").glob("*.imgs.*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert open_dataset(root, "test", 16).read_images([0]).shape == (1, 16, 16, 3)
    assert cached[0].stat().st_mtime_ns == stamp  # opened again from the cache, not extracted again
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("DITI_CACHE", str(blocked))
    with pytest.raises(ValueError, match="cannot write the cache folder .* set \\$DITI_CACHE"):
        open_dataset(root)


@pytest.mark.parametrize("kwargs, message", [
    (dict(imgs_shape=(48, 64, 64, 1)), "'imgs' is uint8 (48, 64, 64, 1)"),
    (dict(drop=("latents_values",)), "no member 'latents_values'"),
    (dict(swap=True), "latents_classes are not in row-major factor order"),
    (dict(scale=255), "'imgs' should hold 0 and 1"),
])
def test_dsprites_wrong_layouts_are_refused(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.setitem(gt.DSPRITES.grids, 48, DSPRITES_SMALL)
    root, _ = write_dsprites(tmp_path / "d", **kwargs)
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        open_dataset(root)
    if "row-major" not in message and "0 and 1" not in message:
        assert ("'imgs' uint8 (N, 64, 64), 'latents_classes' int64 (N, 6), 'latents_values' float64 (N, 6) with "
                "N = 737,280") in str(err.value)


# --- MPI3D ---------------------------------------------------------------------------------------------------
def test_mpi3d_takes_its_grid_from_the_image_count(tmp_path, monkeypatch):
    assert gt.MPI3D.grid_of(1_036_800, tmp_path) == (6, 6, 2, 3, 3, 40, 40)
    assert gt.MPI3D.grid_of(460_800, tmp_path) == (4, 4, 2, 3, 3, 40, 40)
    with pytest.raises(ValueError, match="1,036,800 .6 x 6 x 2 x 3 x 3 x 40 x 40., 460,800"):
        gt.MPI3D.grid_of(737_280, tmp_path)
    small = {2 * 2 * 2 * 3 * 3 * 2 * 2: (2, 2, 2, 3, 3, 2, 2), 3 * 2 * 2 * 3 * 3 * 2 * 2: (3, 2, 2, 3, 3, 2, 2)}
    for count, sizes in small.items():
        monkeypatch.setitem(gt.MPI3D.grids, count, sizes)
    for (count, sizes), save in zip(small.items(), (np.savez, np.savez_compressed), strict=True):
        root = tmp_path / f"m{count}"
        root.mkdir()
        images = _bands(_codes(sizes), sizes)
        save(root / "mpi3d_real.npz", images=images)
        assert detect_format(root) == "mpi3d"
        every = open_dataset(root, "all")
        assert len(every) == count and every.attributes.names == list(gt.MPI3D.factors)
        assert [len(c) for c in every.attributes.classes] == list(sizes)
        np.testing.assert_array_equal(every.images([count - 1, 3]), images[[count - 1, 3]])
        assert len(open_dataset(root, "test")) == round(0.1 * count)
    # the uncompressed file is memory-mapped where it lies; only the compressed one was extracted
    assert [p.name.split(".")[0] for p in (tmp_path / "cache").glob("*.npy")] == ["mpi3d_real"]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_mpi3d_wrong_layouts_are_refused(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    np.savez(root / "mpi3d_toy.npz", images=np.zeros((10, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"'images' is uint8 \(10, 3, 64, 64\). Expected members 'images' uint8 "
                                         r"\(N, 64, 64, 3\) with N = 1,036,800 or 460,800"):
        open_dataset(root)
    np.savez(root / "mpi3d_toy.npz", images=np.zeros((10, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="10 images"):
        open_dataset(root)
    np.savez(root / "mpi3d_real.npz", images=np.zeros((10, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"expected one mpi3d\*.npz file"):
        open_dataset(root)


# --- Cars3D --------------------------------------------------------------------------------------------------
def _car(o: int) -> np.ndarray:
    """One car_*_mesh.mat "im": uint8 (128, 128, 3, 24, 4), each view one colour (elevation, azimuth, car)."""
    e, a = np.meshgrid(np.arange(4), np.arange(24), indexing="ij")
    colour = np.stack([e * 60, a * 10, np.full_like(e, 40 + 70 * o)], axis=-1).astype(np.uint8)  # (4, 24, 3)
    return np.broadcast_to(colour.transpose(2, 1, 0)[None, None], (128, 128, 3, 24, 4)).copy()


def write_cars_meshes(root, cars=3, shape=None, listing=None):
    root.mkdir(parents=True, exist_ok=True)
    for o in range(cars):
        im = _car(o) if shape is None else np.zeros(shape, np.uint8)
        savemat(root / f"car_{o + 1:03d}_mesh.mat", {"im": im, "mask": im[:, :, 0] > 0}, do_compression=True)
    if listing is not None:
        (root / "list.txt").write_text("".join(f"car_{o + 1:03d}_mesh\n" for o in listing))
    return root


def test_cars3d_from_meshes_and_from_disents_npz(tmp_path, monkeypatch):
    monkeypatch.setitem(gt.CARS3D.grids, 4 * 24 * 3, (4, 24, 3))
    meshes = write_cars_meshes(tmp_path / "cars", listing=[2, 0, 1])  # list.txt sets the object order
    assert detect_format(meshes) == "cars3d"
    every = open_dataset(meshes, "all")
    assert every.resolution == 64 and every.stored_resolution == 128
    assert every.attributes.names == ["elevation", "azimuth", "object"]
    assert every.attributes.classes[2] == ["car_003_mesh", "car_001_mesh", "car_002_mesh"]
    idx = [0, 1, 3 * 24 * 2 + 3 * 5 + 2]  # (0, 0, 0), (0, 0, 1), (2, 5, 2)
    np.testing.assert_array_equal(every.attributes.values[idx], [[0, 0, 0], [0, 0, 1], [2, 5, 2]])
    got = every.images(idx)
    assert got.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(got[:, 10, 10], [[0, 0, 180], [0, 0, 40], [120, 50, 110]])
    assert len(list((tmp_path / "cache").glob("cars.images-3-*.npy"))) == 1
    # disent's cars3d.npz: the same images in the same order (elevation, azimuth, object; object fastest)
    full = every.array.take(np.arange(len(every)))
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez_compressed(npz / "cars3d.npz", images=full)
    from_npz = open_dataset(npz, "test", 32)
    np.testing.assert_array_equal(from_npz.attributes.values, open_dataset(meshes, "test").attributes.values)
    assert from_npz.read_images([0]).shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(open_dataset(npz, "all").images(idx), got)


def test_cars3d_wrong_layouts_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(gt.CARS3D.grids, 4 * 24 * 2, (4, 24, 2))
    root = write_cars_meshes(tmp_path / "small", cars=2, shape=(64, 64, 3, 24, 4))
    with pytest.raises(ValueError, match=r"expected 'im' uint8 \(128, 128, 3, 24, 4\) .H, W, RGB, azimuth, "
                                         r"elevation.; found 'im' uint8 \(64, 64, 3, 24, 4\)"):
        open_dataset(root)
    root = write_cars_meshes(tmp_path / "three", cars=3)  # 3 cars: no grid of 288 images
    with pytest.raises(ValueError, match="288 images in 3 car_.*_mesh.mat files; a cars3d file holds 17,568"):
        open_dataset(root)
    root = write_cars_meshes(tmp_path / "listed", cars=2, listing=[0, 1, 2])
    with pytest.raises(ValueError, match="lists 1 files that are not in"):
        open_dataset(root)
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "cars3d.npz", images=np.zeros((192, 128, 128), np.uint8))
    with pytest.raises(ValueError, match=r"Expected members 'images' uint8 \(N, 64\|128, 64\|128, 3\)"):
        open_dataset(npz)


# --- the split, the table of formats, `diti data check` ------------------------------------------------------
def test_the_split_is_deterministic_disjoint_and_ten_percent():
    for n in (10, 1000, 17_568):
        train, test, every = (gt.grid_split(n, s) for s in gt.GRID_SPLITS)
        assert len(test) == round(0.1 * n) and np.array_equal(np.union1d(train, test), every)
        assert len(np.intersect1d(train, test)) == 0 and np.all(np.diff(test) > 0)
    # pinned: the split is pure integer arithmetic, the same on every machine and numpy version
    assert gt.grid_split(1000, "test")[:8].tolist() == [10, 18, 21, 41, 48, 68, 82, 83]
    assert int(gt._splitmix64(np.zeros(1, np.uint64))[0]) == 0xE220A8397B1DCDAF  # splitmix64's first output, seed 0
    assert not np.array_equal(gt.grid_split(1000, "test", seed=1), gt.grid_split(1000, "test"))
    with pytest.raises(ValueError, match="no split 'valid'"):
        gt.grid_split(10, "valid")


def test_formats_and_check_know_the_four(tmp_path, monkeypatch):
    assert {"shapes3d", "dsprites", "mpi3d", "cars3d"} <= set(describe_formats())
    out = runner.invoke(app, ["data", "formats"]).output
    for name in ("[shapes3d]", "[dsprites]", "[mpi3d]", "[cars3d]", "3dshapes.h5", "car_001_mesh.mat"):
        assert name in out
    monkeypatch.setitem(gt.SHAPES3D.grids, 600, (2, 2, 2, 5, 3, 5))
    root = write_shapes3d(tmp_path / "s3d", (2, 2, 2, 5, 3, 5), full_images=True)
    report = check_dataset(root, progress=False)
    assert report.format == "shapes3d" and report.splits == ["train", "test", "all"] and not report.findings
    bad = write_shapes3d(tmp_path / "bad", (2, 2, 2, 5, 3, 5), labels="missing")
    result = runner.invoke(app, ["data", "check", str(bad), "--out", str(tmp_path / "check.json")])
    assert result.exit_code == 1 and "no dataset 'labels'" in result.output
    assert json.loads((tmp_path / "check.json").read_text())["counts"]["error"] == 3  # one per split


# --- end to end on a 16-px fixture ---------------------------------------------------------------------------
def test_pretrain_train_and_the_peers_protocol_on_a_shapes3d_file_at_16px(tmp_path, monkeypatch):
    """3dshapes.h5 in the released layout (on a 600-image grid) -> `diti pretrain --preset shapes3d64` ->
    `diti train --preset shapes3d64-diti` -> `diti disentangle --protocol peers`, at data.resolution=16. The
    presets' networks are narrowed here (same levels and attention, 16-32 channels) to keep the test short; the
    presets' own sizes are tested in test_config.py."""
    sizes = (2, 2, 2, 5, 3, 5)
    monkeypatch.setitem(gt.SHAPES3D.grids, 600, sizes)
    data = write_shapes3d(tmp_path / "s3d", sizes, full_images=True)
    dm, run = tmp_path / "dm", tmp_path / "run"
    small = ["-s", "data.resolution=16", "-s", "train.batch_size=8", "-s", "train.progress=false"]

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    narrow_unet = ["-s", "unet.block_out_channels=[16,32,32,32]", "-s", "unet.norm_num_groups=8",
                   "-s", "unet.attention_head_dim=8"]
    narrow_encoder = ["-s", "encoder.channels=[16,32,32,32]", "-s", "encoder.norm_groups=8"]
    invoke("pretrain", "--preset", "shapes3d64", "--data", data, "--out", dm, "--steps", 2, *small, *narrow_unet)
    invoke("train", "--preset", "shapes3d64-diti", "--dm", dm, "--data", data, "--out", run, "--steps", 2, *small,
           *narrow_encoder)
    config = (run / "config.yaml").read_text()
    assert "resolution: 16" in config and "latent_dim: 192" in config
    out = invoke("disentangle", run, "--data", data, "--protocol", "peers", "--jobs", 1)
    assert "protocol peers" in out
    result = json.loads((run / "eval" / "disentangle.json").read_text())
    proto = result["protocol"]
    assert proto["name"] == "peers" and proto["chunk_reduce"] == "pca"
    assert proto["dci_train_rows"] == 540 and proto["dci_test_rows"] == 60  # every row of the 90 / 10 % split
    assert len(proto["chunk_reduction"]["explained_variance_ratio"]) == 6  # one dim per chunk, k = 6
    assert result["factors"] == list(gt.SHAPES3D.factors)
    for value in (result["dci"]["disentanglement"], result["mig"]["mig"], result["factor_vae"]["eval_accuracy"]):
        assert 0.0 <= value <= 1.0

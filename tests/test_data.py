"""Data layer: the procedural shapes set, the attribute table, and the loaders behind open_dataset."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from diti.data import (
    SHAPES_FACTORS,
    ArrayImageDataset,
    Attributes,
    ImageFolderDataset,
    collate_images,
    generate_shapes,
    open_dataset,
    render_shapes,
    sample_factors,
)
from diti.data import datasets as datasets_module
from diti.data import shapes as shapes_module

NAMES = [f.name for f in SHAPES_FACTORS]
SIZES = [len(f.values) for f in SHAPES_FACTORS]
BASE = np.array([1, 2, 0, 2, 1, 2, 0])  # navy, cyan, square, large, center_left, lower, plain


def _col(name: str) -> int:
    return NAMES.index(name)


def _with(**changes: int) -> np.ndarray:
    row = BASE.copy()
    for name, value in changes.items():
        row[_col(name)] = value
    return row


def _background_mask(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(N, R, R) True where a pixel has the background colour of its image."""
    bg = shapes_module.BACKGROUND_RGB[factors[:, _col("background_color")]]
    return np.all(images == bg[:, None, None, :], axis=-1)


# ----------------------------------------------------------------------------------------------------
# shapes: factor table and rendering
# ----------------------------------------------------------------------------------------------------
def test_factor_table_order_and_sizes():
    assert NAMES == [
        "background_color",
        "object_color",
        "shape",
        "scale",
        "x_position",
        "y_position",
        "texture",
    ]
    assert SIZES == [4, 4, 3, 3, 4, 4, 3]
    assert SHAPES_FACTORS[_col("shape")].values == ("square", "circle", "triangle")
    assert SHAPES_FACTORS[_col("texture")].values == ("plain", "checker", "stripes")
    for f in SHAPES_FACTORS:
        assert len(set(f.values)) == len(f.values)


def test_colours_are_distinct_and_objects_contrast_with_backgrounds():
    bg = shapes_module.BACKGROUND_RGB.astype(float)
    obj = shapes_module.OBJECT_RGB.astype(float)
    dark = shapes_module.OBJECT_DARK_RGB.astype(float)

    def dist(a, b):
        return np.linalg.norm(a[:, None] - b[None], axis=-1)

    off_diagonal = ~np.eye(4, dtype=bool)
    assert dist(bg, bg)[off_diagonal].min() > 100
    assert dist(obj, obj)[off_diagonal].min() > 100
    assert dist(obj, bg).min() > 150
    assert np.diag(dist(obj, dark)).min() > 100  # the texture's shade is clearly darker


def test_sample_factors_ranges_and_uniformity():
    f = sample_factors(4000, np.random.default_rng(0))
    assert f.shape == (4000, 7) and f.dtype == np.int64
    for j, size in enumerate(SIZES):
        counts = np.bincount(f[:, j], minlength=size)
        assert len(counts) == size
        assert counts.min() > 0.8 * 4000 / size  # every value drawn, roughly uniformly
    assert np.array_equal(f, sample_factors(4000, np.random.default_rng(0)))


def test_render_shape_dtype_and_determinism():
    f = sample_factors(50, np.random.default_rng(1))
    a = render_shapes(f, 32)
    assert a.shape == (50, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_shapes(f, 32))
    assert render_shapes(f[:3], 16).shape == (3, 16, 16, 3)


@pytest.mark.parametrize("name", NAMES)
def test_every_factor_changes_the_image(name):
    j = _col(name)
    rows = np.stack([_with(**{name: v}) for v in range(SIZES[j])])
    images = render_shapes(rows, 32)
    for a, b in itertools.combinations(range(SIZES[j]), 2):
        assert not np.array_equal(images[a], images[b]), f"{name}: values {a} and {b} render the same image"


def test_texture_changes_only_single_object_pixels():
    rows = np.stack([_with(texture=t) for t in range(3)])
    plain, checker, stripes = render_shapes(rows, 32)
    obj = ~_background_mask(plain[None], rows[:1])[0]
    assert obj.sum() > 100
    for textured in (checker, stripes):
        changed = np.any(textured != plain, axis=-1)
        assert not (changed & ~obj).any(), "the texture leaked outside the object"
        # the silhouette is the same: textured pixels are never the background colour
        assert np.array_equal(~_background_mask(textured[None], rows[:1])[0], obj)
    changed = np.any(checker != plain, axis=-1)
    assert changed.sum() > 0.4 * obj.sum()
    # 1-pixel checkerboard: no two horizontally or vertically adjacent pixels both changed
    assert not (changed[:, 1:] & changed[:, :-1]).any() and not (changed[1:] & changed[:-1]).any()
    # 2-pixel horizontal stripes: changed rows come in pairs, the rows between them are unchanged
    rows_changed = np.any(np.any(stripes != plain, axis=-1), axis=1)
    inside = np.flatnonzero(obj.any(axis=1))
    pattern = rows_changed[inside[0] : inside[-1] + 1]
    assert pattern.any() and not pattern.all()
    assert all(len(set(run)) == 1 for run in np.split(pattern, np.flatnonzero(np.diff(pattern)) + 1))
    assert {len(run) for run in np.split(pattern, np.flatnonzero(np.diff(pattern)) + 1)[1:-1]} == {2}


def test_texture_stays_one_pixel_at_higher_resolution():
    rows = np.stack([_with(texture=0), _with(texture=1)])
    plain, checker = render_shapes(rows, 64)
    changed = np.any(checker != plain, axis=-1)
    assert changed.sum() > 300
    assert not (changed[:, 1:] & changed[:, :-1]).any()


def test_object_inside_image_for_every_geometry():
    geometry = np.array(list(itertools.product(range(3), range(3), range(4), range(4))))  # shape, scale, x, y
    rows = np.tile(BASE, (len(geometry), 1))
    rows[:, 2:6] = geometry
    images = render_shapes(rows, 32)
    background = _background_mask(images, rows)
    border = np.ones((32, 32), dtype=bool)
    border[1:-1, 1:-1] = False
    assert background[:, border].all(), "an object touches the image border"
    assert (~background).sum(axis=(1, 2)).min() > 10


def test_sizes_and_positions_scale_with_resolution():
    row = _with(texture=0)[None]
    area = {r: (~_background_mask(render_shapes(row, r), row)).sum() for r in (32, 64)}
    assert 3.6 < area[64] / area[32] < 4.4
    x_rows = np.stack([_with(x_position=v) for v in range(4)])
    for r in (32, 64):
        obj = ~_background_mask(render_shapes(x_rows, r), x_rows)
        centres = [np.flatnonzero(o.any(axis=0)).mean() / r for o in obj]
        assert np.all(np.diff(centres) > 0.1)  # left to right, same fractions at both resolutions


def test_render_validates_its_input():
    with pytest.raises(ValueError, match="resolution"):
        render_shapes(BASE[None], 8)
    with pytest.raises(ValueError, match=r"'shape'.*\b3\b"):
        render_shapes(_with(shape=3)[None], 32)
    with pytest.raises(ValueError, match="texture.*-1"):
        render_shapes(_with(texture=-1)[None], 32)
    with pytest.raises(ValueError, match="shape"):
        render_shapes(np.zeros((2, 6), dtype=np.int64), 32)


# ----------------------------------------------------------------------------------------------------
# shapes: generate_shapes
# ----------------------------------------------------------------------------------------------------
FILES = ["dataset.json", "train/images.npy", "train/factors.csv", "test/images.npy", "test/factors.csv"]


def _generate(path, **kwargs):
    args = {"resolution": 16, "n_train": 40, "n_test": 12, "seed": 0, "progress": False} | kwargs
    return generate_shapes(path, **args)


def test_generate_is_deterministic_and_seeded(tmp_path):
    a, b = _generate(tmp_path / "a"), _generate(tmp_path / "b")
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = _generate(tmp_path / "c", seed=1)
    assert not np.array_equal(np.load(a / "train/images.npy"), np.load(c / "train/images.npy"))
    assert not np.array_equal(np.load(a / "test/images.npy"), np.load(c / "test/images.npy"))
    # the test split depends on the seed only, not on the size of the train split
    d = _generate(tmp_path / "d", n_train=25)
    assert (a / "test/images.npy").read_bytes() == (d / "test/images.npy").read_bytes()
    # regenerating into an existing folder overwrites it with the same bytes
    _generate(a, n_train=5)
    _generate(a)
    assert (a / "train/images.npy").read_bytes() == (b / "train/images.npy").read_bytes()


def test_generate_writes_the_documented_layout(tmp_path):
    out = _generate(tmp_path / "new" / "shapes", seed=3)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta == {
        "format": "diti-array",
        "format_version": 1,
        "name": "shapes",
        "resolution": 16,
        "seed": 3,
        "factors": [{"name": f.name, "values": list(f.values)} for f in SHAPES_FACTORS],
        "splits": {"train": 40, "test": 12},
    }
    images = np.load(out / "train/images.npy")
    assert images.shape == (40, 16, 16, 3) and images.dtype == np.uint8
    lines = (out / "train/factors.csv").read_text().splitlines()
    assert lines[0] == "index," + ",".join(NAMES)
    table = np.array([[int(v) for v in line.split(",")] for line in lines[1:]])
    assert np.array_equal(table[:, 0], np.arange(40))
    assert np.array_equal(images, render_shapes(table[:, 1:], 16))  # the images are the rows' renders
    assert ((table[:, 1:] >= 0) & (table[:, 1:] < np.array(SIZES))).all()


def test_generate_rejects_empty_splits(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        _generate(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="n_test"):
        _generate(tmp_path, n_test=0)


# ----------------------------------------------------------------------------------------------------
# Attributes
# ----------------------------------------------------------------------------------------------------
def test_attributes_csv_round_trip(tmp_path):
    codes = Attributes(["a", "b"], np.array([[0, 2], [1, 0], [1, 1]]), [["no", "yes"], ["x", "y", "z"]])
    assert codes.values.dtype == np.int64
    assert codes.num_classes(1) == 3 and codes.is_categorical(0)
    codes.to_csv(tmp_path / "codes.csv")
    assert (tmp_path / "codes.csv").read_text().splitlines()[:2] == ["index,a,b", "0,0,2"]
    back = Attributes.from_csv(tmp_path / "codes.csv", classes=codes.classes)
    assert back.names == codes.names and back.classes == codes.classes
    assert np.array_equal(back.values, codes.values) and back.values.dtype == np.int64

    mixed = Attributes(["smile", "age"], np.array([[1, 23.5], [0, 0.1], [1, 1e-7]]), [["0", "1"], None])
    assert mixed.values.dtype == np.float64 and not mixed.is_categorical(1)
    with pytest.raises(ValueError, match="continuous"):
        mixed.num_classes(1)
    mixed.to_csv(tmp_path / "mixed.csv")
    back = Attributes.from_csv(tmp_path / "mixed.csv")  # kinds inferred: integers -> categorical
    assert back.classes == [["0", "1"], None]
    assert np.array_equal(back.values, mixed.values)  # floats survive exactly

    sub = codes.subset([2, 0])
    assert np.array_equal(sub.values, [[1, 1], [0, 2]]) and sub.classes == codes.classes and len(sub) == 2


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.floats(allow_nan=False, allow_infinity=False, width=64)),
        min_size=1,
        max_size=20,
    )
)
def test_attributes_csv_round_trip_property(tmp_path_factory, rows):
    table = Attributes(["code", "value"], np.array(rows, dtype=np.float64), [["a", "b", "c", "d", "e"], None])
    path = tmp_path_factory.mktemp("prop") / "t.csv"
    table.to_csv(path)
    back = Attributes.from_csv(path, classes=table.classes)
    assert np.array_equal(back.values, table.values)


def test_attributes_reject_bad_tables(tmp_path):
    with pytest.raises(ValueError, match="'b'.*3"):
        Attributes(["a", "b"], np.array([[0, 3]]), [["n", "y"], ["x", "y", "z"]])
    with pytest.raises(ValueError, match="shape"):
        Attributes(["a"], np.zeros((3, 2)))
    (tmp_path / "bad.csv").write_text("index,a\n0,1\n1,oops\n")
    with pytest.raises(ValueError, match="line 3.*'a'.*oops"):
        Attributes.from_csv(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------------------
# ArrayImageDataset
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return generate_shapes(
        tmp_path_factory.mktemp("shapes"), resolution=16, n_train=50, n_test=10, progress=False
    )


def test_array_dataset(shapes_root):
    ds = open_dataset(shapes_root, "train")
    assert isinstance(ds, ArrayImageDataset)
    assert len(ds) == 50 and ds.resolution == 16 and ds.name == "shapes" and ds.root == shapes_root
    x = ds[3]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    batch = ds.__getitems__([0, 3, 7])
    assert batch.shape == (3, 3, 16, 16) and torch.equal(batch[1], x)
    assert batch.min() >= -1 and batch.max() <= 1
    # pixels map exactly: uint8 v -> v / 127.5 - 1
    raw = np.load(shapes_root / "train/images.npy")
    assert torch.allclose(x, torch.from_numpy(raw[3]).permute(2, 0, 1).float() / 127.5 - 1, atol=1e-6)
    attrs = ds.attributes
    assert attrs.names == NAMES and attrs.values.shape == (50, 7) and attrs.values.dtype == np.int64
    assert attrs.classes == [list(f.values) for f in SHAPES_FACTORS]
    assert np.array_equal(render_shapes(attrs.values, 16), raw)
    assert len(open_dataset(shapes_root, "test")) == 10


def test_to_tensor_maps_uint8_onto_minus_one_one():
    a = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = datasets_module.to_tensor(a)
    assert x.shape == (1, 3, 16, 16) and x.is_contiguous()
    assert x.min() == -1 and x.max() == 1
    assert torch.allclose(x[0, 0].flatten(), torch.arange(256) / 127.5 - 1, atol=1e-6)


def test_array_dataset_memory_maps_large_arrays(shapes_root, monkeypatch):
    monkeypatch.setattr(datasets_module, "IN_MEMORY_BYTES", 0)
    mapped = ArrayImageDataset(shapes_root, "train")
    assert isinstance(mapped._array, np.memmap)
    assert torch.equal(mapped.__getitems__([4, 1]), open_dataset(shapes_root).__getitems__([4, 1]))


def test_array_dataset_resizes_and_checks_split(shapes_root):
    ds = open_dataset(shapes_root, "test", resolution=32)
    assert ds.resolution == 32 and ds[0].shape == (3, 32, 32)
    assert ds.__getitems__([1, 2]).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"'valid'.*\['test', 'train'\]"):
        open_dataset(shapes_root, "valid")


# ----------------------------------------------------------------------------------------------------
# ImageFolderDataset
# ----------------------------------------------------------------------------------------------------
def _write_images(folder):
    """Six small images in every mode we must handle; returns their relative paths in sorted order."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sub").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(folder / "a_rgb.png")
    Image.fromarray(np.full((20, 20), 200, np.uint8), "L").save(folder / "b_gray.png")
    rgba = np.zeros((20, 30, 4), np.uint8)  # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(folder / "c_rgba.png")
    Image.fromarray(np.full((20, 20), 128 * 257, np.uint16)).save(folder / "d_gray16.png")
    assert Image.open(folder / "d_gray16.png").mode.startswith("I")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert("P").save(
        folder / "e_palette.png"
    )
    Image.fromarray(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)).save(folder / "sub" / "f.jpg")
    (folder / "notes.txt").write_text("not an image")
    return ["a_rgb.png", "b_gray.png", "c_rgba.png", "d_gray16.png", "e_palette.png", "sub/f.jpg"]


def test_image_folder_modes_and_attributes(tmp_path):
    files = _write_images(tmp_path / "imgs")
    rows = ["file,smiling,age", "sub/f.jpg,1,40.5", "unused.png,0,1"] + [
        f"{f},{i % 2},{20 + i}" for i, f in enumerate(files[:-1])
    ]
    (tmp_path / "imgs" / "attributes.csv").write_text("\n".join(rows) + "\n")
    ds = open_dataset(tmp_path / "imgs", resolution=16)
    assert isinstance(ds, ImageFolderDataset) and ds.files == files and len(ds) == 6
    batch = ds.__getitems__(list(range(6)))
    assert batch.shape == (6, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    u8 = ds.images(range(6))
    assert np.all(u8[1] == 200)  # grayscale -> equal channels
    assert np.all(u8[2] == 255)  # transparent -> white
    assert np.all(u8[3] == 128)  # 16-bit -> 8-bit
    assert ds.attributes.names == ["smiling", "age"]
    assert ds.attributes.classes[0] == ["0", "1"] and not ds.attributes.is_categorical(1)
    assert np.array_equal(ds.attributes.values, [[0, 20], [1, 21], [0, 22], [1, 23], [0, 24], [1, 40.5]])


def test_image_folder_centre_crop(tmp_path):
    # a 48x16 image whose middle 16x16 square is white and whose sides are black -> white at R = 8 (the
    # bicubic filter reaches just past the crop, as resize-then-crop does, so the edge columns are near-white)
    a = np.zeros((16, 48, 3), np.uint8)
    a[:, 16:32] = 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    Image.fromarray(a.transpose(1, 0, 2)).save(tmp_path / "tall.png")
    out = ImageFolderDataset(tmp_path, resolution=8).images([0, 1])
    assert out.shape == (2, 8, 8, 3)
    assert np.all(out[:, 1:-1, 1:-1] == 255) and out.min() > 200


def test_corrupt_image_is_named(tmp_path):
    _write_images(tmp_path)
    good = (tmp_path / "a_rgb.png").read_bytes()
    (tmp_path / "g_truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "h_garbage.jpg").write_bytes(b"definitely not a jpeg")
    ds = open_dataset(tmp_path, resolution=16)  # decoding is lazy: opening succeeds
    with pytest.raises(ValueError, match="g_truncated.png"):
        ds[ds.files.index("g_truncated.png")]
    with pytest.raises(ValueError, match="h_garbage.jpg"):
        ds.__getitems__([0, ds.files.index("h_garbage.jpg")])


def test_missing_attribute_rows_are_reported(tmp_path):
    files = _write_images(tmp_path / "imgs")
    (tmp_path / "attrs.csv").write_text("file,a\n" + "".join(f"{f},1\n" for f in files[2:]))
    with pytest.raises(ValueError, match="2 of 6 images have no row.*a_rgb.png, b_gray.png"):
        open_dataset(tmp_path / "imgs", resolution=16, attributes=tmp_path / "attrs.csv")
    (tmp_path / "dup.csv").write_text("file,a\n" + "".join(f"{f},1\n" for f in files) + "./sub/f.jpg,0\n")
    with pytest.raises(ValueError, match="sub/f.jpg.*more than one row"):
        open_dataset(tmp_path / "imgs", resolution=16, attributes=tmp_path / "dup.csv")


def test_open_dataset_dispatch_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(tmp_path / "nowhere", resolution=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        open_dataset(tmp_path / "empty", resolution=16)
    plain = tmp_path / "plain"
    _write_images(plain)
    with pytest.raises(ValueError, match="resolution"):
        open_dataset(plain)
    # a plain folder is the whole data set for any split name
    assert len(open_dataset(plain, "test", resolution=16)) == 6
    split = tmp_path / "split"
    _write_images(split / "train")
    (split / "valid").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(split / "valid" / "x.png")
    assert len(open_dataset(split, "train", resolution=16)) == 6
    valid = open_dataset(split, "valid", resolution=16)
    assert len(valid) == 1 and valid.name == "split"
    with pytest.raises(ValueError, match=r"'test'.*\['train', 'valid'\]"):
        open_dataset(split, "test", resolution=16)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "dataset.json").write_text('{"format": "hdf5"}')
    with pytest.raises(ValueError, match="unknown format 'hdf5'"):
        open_dataset(tmp_path / "odd")


# ----------------------------------------------------------------------------------------------------
# DataLoader
# ----------------------------------------------------------------------------------------------------
def test_dataloader_batches(shapes_root, tmp_path):
    ds = open_dataset(shapes_root, resolution=16)
    batches = [[0, 1, 2, 3], [10, 5, 7, 9], [49, 48, 0, 1]]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collate_images)
    out = list(loader)
    assert [tuple(b.shape) for b in out] == [(4, 3, 16, 16)] * 3
    assert torch.equal(out[1][2], ds[7])
    loader = torch.utils.data.DataLoader(
        ds, batch_size=16, shuffle=False, collate_fn=ds.collate, num_workers=2
    )
    assert [len(b) for b in loader] == [16, 16, 16, 2]
    _write_images(tmp_path / "imgs")
    folder = open_dataset(tmp_path / "imgs", resolution=16)
    out = list(torch.utils.data.DataLoader(folder, batch_size=4, collate_fn=collate_images))
    assert [tuple(b.shape) for b in out] == [(4, 3, 16, 16), (2, 3, 16, 16)]

"""Real data set formats behind open_dataset: CelebA, LMDB (diffae / PDAE keys and arbitrary keys), LFW.

Every fixture is written here, tiny, in the exact on-disk format of the real data set.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import shutil

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from diti.data import (
    FORMATS,
    ImageFolderDataset,
    LMDBDataset,
    collate_images,
    describe_formats,
    detect_format,
    open_dataset,
)
from diti.data import lmdb_dataset as datasets_module
from diti.data.formats import CELEBA_BOX, lfw_splits

CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
CELEBA_FILES = [f"{k:06d}.jpg" for k in range(1, 13)]
CELEBA_PARTITION = [0] * 7 + [1] * 2 + [2] * 3  # files 1-7 train, 8-9 valid, 10-12 test
QUADRANTS = {"tl": (255, 0, 0), "tr": (0, 255, 0), "bl": (255, 255, 255), "br": (0, 0, 0)}
OUTSIDE = (0, 0, 255)


def _celeba_value(k: int, j: int) -> int:
    """File value (-1/1) of attribute j for image index k."""
    return 1 if (k + j) % 3 == 0 else -1


def _celeba_image(k: int) -> np.ndarray:
    """178x218 aligned image: blue outside the official crop box, four coloured quadrants inside it, and
    a grey mark (k-dependent) in the top-left quadrant so images differ."""
    a = np.zeros((218, 178, 3), np.uint8)
    a[:] = OUTSIDE
    left, top, right, bottom = CELEBA_BOX
    half = (right - left) // 2
    a[top : top + half, left : left + half] = QUADRANTS["tl"]
    a[top : top + half, left + half : right] = QUADRANTS["tr"]
    a[top + half : bottom, left : left + half] = QUADRANTS["bl"]
    a[top + half : bottom, left + half : right] = QUADRANTS["br"]
    a[top : top + 4, left : left + 4] = 10 * k
    return a


def _attr_text(files: list[str], offset: int = 0) -> str:
    lines = [str(len(files)), " ".join(CELEBA_NAMES) + " "]  # the real file ends the names line with a space
    for f in files:
        k = int(f[:6]) + offset
        # the real layout: one space before -1, two before 1
        lines.append(f + " " + " ".join(f"{_celeba_value(k, j):2d}" for j in range(len(CELEBA_NAMES))))
    return "\n".join(lines) + "\n"


def _write_celeba_tables(folder, files):
    (folder / "list_attr_celeba.txt").write_text(_attr_text(files))
    order = [5, 0, 11, 3, 8, 1, 2, 4, 6, 7, 9, 10]  # written out of order: the splits are sorted by name
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{files[i]} {CELEBA_PARTITION[i]}\n" for i in order)
    )


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    (root / "img_align_celeba").mkdir()
    for f in CELEBA_FILES:
        Image.fromarray(_celeba_image(int(f[:6]))).save(root / "img_align_celeba" / f, quality=95)
    _write_celeba_tables(root, CELEBA_FILES)
    return root


# ----------------------------------------------------------------------------------------------------
# CelebA
# ----------------------------------------------------------------------------------------------------
def test_celeba_splits_attributes_and_crop(celeba_root):
    assert detect_format(celeba_root) == "celeba" and len(CELEBA_NAMES) == 40
    splits = {s: open_dataset(celeba_root, s, 16) for s in ("train", "valid", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 7, "valid": 2, "test": 3}
    assert splits["valid"].files == ["000008.jpg", "000009.jpg"]
    assert splits["train"].files == sorted(splits["train"].files)
    assert not set(splits["train"].files) & set(splits["test"].files)
    test = splits["test"]
    assert isinstance(test, ImageFolderDataset) and test.attributes.names == CELEBA_NAMES
    assert test.attributes.classes == [["no", "yes"]] * 40 and test.attributes.values.dtype == np.int64
    expected = [[(_celeba_value(k, j) + 1) // 2 for j in range(40)] for k in (10, 11, 12)]
    assert np.array_equal(test.attributes.values, expected)
    batch = test.__getitems__([0, 1, 2])
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    # resolution 128 is the crop itself, exactly (up to JPEG): the official box, nothing of the blue outside
    exact = open_dataset(celeba_root, "test", 128).images([0])[0].astype(int)
    source = np.asarray(Image.open(celeba_root / "img_align_celeba" / "000010.jpg").convert("RGB")).astype(
        int
    )
    left, top, right, bottom = CELEBA_BOX
    assert np.array_equal(exact, source[top:bottom, left:right])
    # at 16 px each quadrant keeps its colour (away from the edges, where the bicubic filter mixes)
    small = test.images([2])[0].astype(int)
    for (rows, cols), colour in zip(
        [((2, 6), (2, 6)), ((2, 6), (10, 14)), ((10, 14), (2, 6)), ((10, 14), (10, 14))],
        QUADRANTS.values(),
        strict=True,
    ):
        patch = small[rows[0] : rows[1], cols[0] : cols[1]]
        assert np.abs(patch - np.array(colour)).max() <= 12, colour


def test_celeba_missing_and_unlisted_images_are_named(celeba_root, tmp_path):
    root = tmp_path / "celeba"
    shutil.copytree(celeba_root, root)
    (root / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(
        ValueError, match=r"1 of 12 images listed in .*list_attr_celeba.txt.*missing.*000003\.jpg"
    ):
        open_dataset(root, "train", 16)
    shutil.copy(root / "img_align_celeba" / "000004.jpg", root / "img_align_celeba" / "000003.jpg")
    shutil.copy(root / "img_align_celeba" / "000004.jpg", root / "img_align_celeba" / "000099.jpg")
    with pytest.raises(ValueError, match=r"1 images in .*img_align_celeba have no row.*000099\.jpg"):
        open_dataset(root, "train", 16)
    (root / "img_align_celeba" / "000099.jpg").unlink()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(root / "img_align_celeba" / "000002.jpg")
    train = open_dataset(root, "train", 16)  # decoding is lazy: a wrong-sized image fails on access, named
    with pytest.raises(
        ValueError, match=r"000002\.jpg.*crop box \(25, 57, 153, 185\) does not fit in the 100x100"
    ):
        train[1]
    with pytest.raises(ValueError, match=r"no split 'val'.*\['train', 'valid', 'test'\]"):
        open_dataset(root, "val", 16)
    with pytest.raises(ValueError, match="resolution"):
        open_dataset(root, "train")
    text = (root / "list_attr_celeba.txt").read_text().replace("000005.jpg -1", "000005.jpg  2", 1)
    (root / "list_attr_celeba.txt").write_text(text)
    with pytest.raises(ValueError, match=r"000005\.jpg has .* = 2"):
        open_dataset(root, "train", 16)
    (root / "list_attr_celeba.txt").write_text(text.replace("000005.jpg  2", "000005.jpg  x"))
    with pytest.raises(ValueError, match=r"line 7: attribute values must be -1 or 1, got 'x"):
        open_dataset(root, "train", 16)


def test_explicit_format_and_unknown_format(celeba_root):
    # the CelebA folder read as a plain image folder: every image, centre crop, no attributes
    plain = open_dataset(celeba_root, "test", 16, format="image-folder")
    assert len(plain) == 12 and plain.attributes is None
    with pytest.raises(ValueError, match=r"unknown data set format 'nope'.*'celeba'.*'lfw'.*'lmdb'"):
        open_dataset(celeba_root, "train", 16, format="nope")
    layouts = describe_formats()
    assert list(layouts) == list(FORMATS) and "list_eval_partition.txt" in layouts["celeba"]


# ----------------------------------------------------------------------------------------------------
# LMDB
# ----------------------------------------------------------------------------------------------------
def _colour(i: int) -> tuple[int, int, int]:
    return (10 * i, 255 - 10 * i, 7 * i % 256)


def _encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def _write_lmdb(path, records: dict[bytes, bytes]) -> None:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    env.close()


def _solid(i: int, size=(20, 24)) -> np.ndarray:
    return np.full((*size, 3), _colour(i), np.uint8)


@pytest.mark.parametrize("prefix,width,first", [("256", 5, 0), ("None", 7, 0), ("64", 5, 1)])
def test_lmdb_indexed_keys(tmp_path, prefix, width, first):
    n = 9
    records = {f"{prefix}-{str(i + first).zfill(width)}".encode(): _encode(_solid(i)) for i in range(n)}
    _write_lmdb(tmp_path / "set.lmdb", {**records, b"length": str(n).encode()})
    assert detect_format(tmp_path / "set.lmdb") == "lmdb"
    ds = open_dataset(tmp_path / "set.lmdb", "train", 16)  # no partition file: train is the whole set
    assert isinstance(ds, LMDBDataset) and len(ds) == n and ds.key_style == "indexed"
    assert ds.key(3) == f"{prefix}-{str(3 + first).zfill(width)}".encode() and ds.attributes is None
    u8 = ds.images([0, 8, 3])
    assert u8.shape == (3, 16, 16, 3) and u8.dtype == np.uint8
    for image, i in zip(u8, [0, 8, 3], strict=True):
        assert np.all(image == _colour(i))
    x = ds[-1]
    assert x.shape == (3, 16, 16) and torch.allclose(x[:, 0, 0], torch.tensor(_colour(8)) / 127.5 - 1)


def test_lmdb_arbitrary_keys_in_sorted_order(tmp_path):
    keys = [b"f3a9", b"0b21", b"c0de", b"7777"]  # LSUN style: image ids as keys, webp values, no length
    _write_lmdb(tmp_path / "bedroom_train_lmdb", {k: _encode(_solid(i), "WEBP") for i, k in enumerate(keys)})
    ds = open_dataset(tmp_path / "bedroom_train_lmdb", "train", 8)
    assert ds.key_style == "keys" and len(ds) == 4
    order = sorted(range(4), key=keys.__getitem__)
    assert [ds.key(i) for i in range(4)] == sorted(keys)
    for image, i in zip(ds.images(range(4)), order, strict=True):
        assert np.all(image == _colour(i))


def test_lmdb_bad_layouts_are_reported(tmp_path):
    _write_lmdb(tmp_path / "short", {b"256-00000": _encode(_solid(0)), b"length": b"2"})
    with pytest.raises(ValueError, match=r"'length' says 2 images but key '256-00001' is missing"):
        open_dataset(tmp_path / "short", resolution=8)
    _write_lmdb(tmp_path / "nokeys", {b"img": _encode(_solid(0)), b"length": b"1"})
    with pytest.raises(ValueError, match="no '<prefix>-<index>' image keys"):
        open_dataset(tmp_path / "nokeys", resolution=8)
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="no data.mdb"):
        open_dataset(tmp_path / "plain", resolution=8, format="lmdb")


def _celeba_lmdb(path, files):
    """diffae's celeba.lmdb: raw aligned images under None-0000000..., sorted file-name order, PNG bytes."""
    records = {
        f"None-{str(i).zfill(7)}".encode(): _encode(_celeba_image(int(f[:6]))) for i, f in enumerate(files)
    }
    _write_lmdb(path, {**records, b"length": str(len(files)).encode()})


def test_celeba_lmdb_attributes_splits_and_crop(tmp_path):
    _celeba_lmdb(tmp_path / "celeba.lmdb", CELEBA_FILES)
    _write_celeba_tables(tmp_path / "celeba.lmdb", CELEBA_FILES)  # side files inside the LMDB folder
    sizes = {s: len(open_dataset(tmp_path / "celeba.lmdb", s, 16)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 7, "valid": 2, "test": 3}
    test = open_dataset(tmp_path / "celeba.lmdb", "test", 128)
    assert test.box == CELEBA_BOX and list(test.indices) == [9, 10, 11]
    expected = [[(_celeba_value(k, j) + 1) // 2 for j in range(40)] for k in (10, 11, 12)]
    assert np.array_equal(test.attributes.values, expected)
    left, top, right, bottom = CELEBA_BOX
    assert np.array_equal(test.images([1])[0], _celeba_image(11)[top:bottom, left:right])
    # diffae's layout: datasets/celeba.lmdb + datasets/celeba_anno/{list_attr_celeba, list_eval_partition}.txt
    (tmp_path / "celeba_anno").mkdir()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        (tmp_path / "celeba.lmdb" / name).rename(tmp_path / "celeba_anno" / name)
    # no side files: 'train' is every record and the other splits are refused (they would be the same images)
    assert len(open_dataset(tmp_path / "celeba.lmdb", "train", 16)) == 12
    for split in ("valid", "test"):
        with pytest.raises(ValueError, match=rf"no list_eval_partition.txt .*only split is 'train'.*no '{split}'"):
            open_dataset(tmp_path / "celeba.lmdb", split, 16)
    valid = open_dataset(
        tmp_path / "celeba.lmdb", "valid", 16, attributes=tmp_path / "celeba_anno" / "list_attr_celeba.txt"
    )
    assert list(valid.indices) == [7, 8] and valid.attributes.names == CELEBA_NAMES
    # a table for another number of images is refused
    (tmp_path / "other.txt").write_text(_attr_text(CELEBA_FILES[:5]))
    with pytest.raises(ValueError, match="5 attribute rows for the 12 images"):
        open_dataset(tmp_path / "celeba.lmdb", "valid", 16, attributes=tmp_path / "other.txt")


def test_lmdb_dataloader_workers_open_their_own_environment(tmp_path):
    n = 12
    records = {f"256-{i:05d}".encode(): _encode(_solid(i)) for i in range(n)}
    _write_lmdb(tmp_path / "ffhq.lmdb", {**records, b"length": str(n).encode()})
    ds = open_dataset(tmp_path / "ffhq.lmdb", resolution=8)
    expected = ds.__getitems__(list(range(n)))  # opens the environment in this process
    main_env = datasets_module.lmdb_environment(ds.root)
    clone = pickle.loads(pickle.dumps(ds))  # no handle is pickled; the copy shares this process's environment
    assert torch.equal(clone[5], expected[5]) and datasets_module.lmdb_environment(clone.root) is main_env

    def collate(batch):
        # runs in the worker, after it read the batch: the environment cache belongs to the worker
        return collate_images(batch), datasets_module._ENVIRONMENTS_PID, os.getpid()

    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    out = list(loader)
    assert torch.equal(torch.cat([b for b, _, _ in out]), expected)
    assert all(env_pid == pid != os.getpid() for _, env_pid, pid in out)
    assert len({pid for _, _, pid in out}) == 2
    assert datasets_module.lmdb_environment(ds.root) is main_env  # the parent's is untouched
    datasets_module.close_lmdb_environment(ds.root)
    assert torch.equal(ds[3], expected[3])  # reopened on the next access


# ----------------------------------------------------------------------------------------------------
# LFW
# ----------------------------------------------------------------------------------------------------
LFW_NAMES = ["Male", "Asian", "Middle Aged", "5 o' Clock Shadow"] + [f"Attribute {i}" for i in range(69)]
LFW_PEOPLE = [f"Person {chr(65 + p % 26)}{p}" for p in range(30)] + ["Aaron Eckhart"]


def _lfw_values(row: int) -> list[float]:
    return [round(np.sin(row * 7 + j) * 2, 5) for j in range(len(LFW_NAMES))]


@pytest.fixture(scope="module")
def lfw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfw")
    rows = []
    for p, person in enumerate(LFW_PEOPLE):
        folder = root / "lfw_funneled" / person.replace(" ", "_")
        folder.mkdir(parents=True)
        for num in range(1, 2 + p % 3):
            Image.fromarray(_solid(len(rows) % 25, (30, 30))).save(folder / f"{folder.name}_{num:04d}.jpg")
            rows.append((person, num))
    rows.append(("Ghost Person", 1))  # a row whose image lfw_funneled does not have
    Image.fromarray(_solid(0, (30, 30))).save(
        root / "lfw_funneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0009.jpg"
    )
    lines = ["# Filename lfw_attributes.txt (version 2)", "#\tperson\timagenum\t" + "\t".join(LFW_NAMES)]
    lines += [
        f"{person}\t{num}\t" + "\t".join(map(str, _lfw_values(r))) for r, (person, num) in enumerate(rows)
    ]
    (root / "lfw_attributes.txt").write_text("\n".join(lines) + "\n")
    return root, rows


def test_lfw_person_splits_and_regression_attributes(lfw_root, caplog):
    root, rows = lfw_root
    assert detect_format(root) == "lfw"
    with caplog.at_level(logging.WARNING, logger="diti.data.formats"):
        splits = {s: open_dataset(root, s, 16) for s in ("train", "valid", "test")}
    assert "skipped 1 of" in caplog.text and "Ghost_Person/Ghost_Person_0001.jpg" in caplog.text
    present = len(rows) - 1
    assert sum(len(d) for d in splits.values()) == present and all(len(d) > 0 for d in splits.values())
    people = {s: {f.split("/")[0] for f in d.files} for s, d in splits.items()}
    assert not (
        people["train"] & people["valid"]
        or people["train"] & people["test"]
        or people["valid"] & people["test"]
    )
    # exact fractions of the people of the table (31 people + the ghost row's = 32): 22 / 4 / 6
    split_of = lfw_splits([p for p, _ in rows])
    counts = {s: sum(v == s for v in split_of.values()) for s in ("train", "valid", "test")}
    assert counts == {"train": round(0.7 * 32), "valid": round(0.8 * 32) - round(0.7 * 32), "test": 32 - 26}
    for s, folks in people.items():
        assert all(split_of[p.replace("_", " ")] == s for p in folks)
    assert lfw_splits(reversed([p for p, _ in rows])) == split_of  # order-free; seeded
    assert lfw_splits([p for p, _ in rows], seed=1) != split_of
    row_of = {f"{p.replace(' ', '_')}/{p.replace(' ', '_')}_{n:04d}.jpg": r for r, (p, n) in enumerate(rows)}
    train = splits["train"]
    assert train.attributes.names == LFW_NAMES and train.attributes.classes == [None] * 73
    assert train.attributes.values.dtype == np.float64
    assert np.allclose(train.attributes.values, [_lfw_values(row_of[f]) for f in train.files])
    assert "Aaron_Eckhart/Aaron_Eckhart_0009.jpg" not in sum((d.files for d in splits.values()), [])  # no row
    assert train.__getitems__([0, 1]).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"no split 'all'"):
        open_dataset(root, "all", 16)

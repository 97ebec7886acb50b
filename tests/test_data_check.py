"""`diti data check`, data.skip_unreadable and data.resize (bicubic | the official bilinear)."""

from __future__ import annotations

import io
import json
import logging

import lmdb
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diti.cli.main import app
from diti.config import DataConfig
from diti.data import open_dataset
from diti.data.check import check_dataset
from diti.data.images import fit_square


def _rgb(seed: int, size=(24, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def messy(tmp_path):
    """An image folder with one file of every kind the check reports, and plain ones."""
    root = tmp_path / "messy"
    (root / "sub").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(_rgb(i)).save(root / f"ok{i}.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    raw = io.BytesIO()
    Image.fromarray(_rgb(9, (64, 64))).save(raw, "JPEG")
    (root / "sub" / "truncated.jpg").write_bytes(raw.getvalue()[: len(raw.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    Image.fromarray(_rgb(5)[..., 0], "L").save(root / "gray.png")
    Image.fromarray(np.dstack([_rgb(6), np.full((24, 24), 128, np.uint8)]), "RGBA").save(root / "alpha.png")
    Image.fromarray(_rgb(7, (8, 12))).save(root / "small.png")
    Image.fromarray(_rgb(8)).save(root / "png_named.jpg", "PNG")
    (root / "notes.txt").write_text("not an image extension: ignored by the loader, not checked")
    return root


def test_check_lists_every_unreadable_and_odd_file(messy):
    report = check_dataset(messy, resolution=16, progress=False)
    found = {(f.kind, f.item.rsplit("/", 1)[-1]) for f in report.findings}
    assert found == {
        ("unreadable", "corrupt.png"), ("unreadable", "truncated.jpg"), ("unreadable", "empty.jpg"),
        ("converted", "gray.png"), ("converted", "alpha.png"), ("upsampled", "small.png"),
        ("extension", "png_named.jpg"),
    }
    assert report.checked == 11 and report.splits == ["train"] and report.format == "image-folder"
    assert {f.item.rsplit("/", 1)[-1] for f in report.unreadable} == {"corrupt.png", "truncated.jpg", "empty.jpg"}
    assert "alpha composited on white" in next(f.message for f in report.findings if "alpha" in f.item)
    assert "8x8 crop square upsampled to 16x16" in next(f.message for f in report.findings if "small" in f.item)
    # without a resolution nothing counts as upsampled; workers give the same findings
    again = check_dataset(messy, progress=False, workers=2)
    assert {(f.kind, f.item) for f in again.findings} == {
        (f.kind, f.item) for f in report.findings if f.kind != "upsampled"}


def test_check_command_exit_codes_and_json(messy, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(messy), "--resolution", "16", "--out", str(tmp_path / "c.json")])
    assert result.exit_code == 1, result.output
    assert "checked 11 images" in result.output and "3 unreadable" in result.output
    assert "corrupt.png" in result.output and "Traceback" not in result.output
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["counts"]["unreadable"] == 3 and len(saved["findings"]) == 7
    for name in ("corrupt.png", "sub/truncated.jpg", "empty.jpg"):
        (messy / name).unlink()
    result = runner.invoke(app, ["data", "check", str(messy)])
    assert result.exit_code == 0 and "0 unreadable" not in result.output and "converted" in result.output
    result = runner.invoke(app, ["data", "check", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not found" in result.output


def test_check_counts_the_images_of_the_generated_shapes_data(tmp_path):
    from diti.data import generate_shapes

    root = generate_shapes(tmp_path / "shapes", resolution=16, n_train=6, n_test=3, seed=0, progress=False)
    report = check_dataset(root, progress=False)
    assert report.format == "diti-array" and report.checked == 0 and report.stored == 9 and not report.findings
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "opened 9 images stored as decoded pixels (nothing to decode)" in result.output
    assert "checked 0 images" not in result.output


def test_check_decodes_lmdb_records_and_reports_a_split_that_cannot_open(tmp_path):
    root = tmp_path / "set.lmdb"
    env = lmdb.open(str(root), map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i in range(5):
            buf = io.BytesIO()
            Image.fromarray(_rgb(i)).save(buf, "PNG")
            txn.put(f"256-{i:05d}".encode(), buf.getvalue() if i != 3 else b"garbage")
        txn.put(b"length", b"5")
    env.close()
    report = check_dataset(root, progress=False)
    assert report.splits == ["train"] and report.checked == 5
    assert [(f.kind, f.item.endswith("key b'256-00003'")) for f in report.findings] == [("unreadable", True)]
    # a CelebA folder whose table lists a missing image: each split is one `error` finding
    celeba = tmp_path / "celeba"
    (celeba / "img_align_celeba").mkdir(parents=True)
    (celeba / "list_attr_celeba.txt").write_text("1\nSmiling\n000001.jpg 1\n")
    (celeba / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    report = check_dataset(celeba, progress=False)
    assert [f.kind for f in report.findings] == ["error"] * 3 and "missing" in report.findings[0].message


def test_skip_unreadable_replaces_the_file_and_names_it(messy, caplog):
    strict = open_dataset(messy, "train", 16)
    bad = strict.files.index("corrupt.png")
    with pytest.raises(ValueError, match="cannot read image .*corrupt.png"):
        strict.__getitems__([bad])
    ds = DataConfig(path=str(messy), resolution=16, skip_unreadable=True).open()
    with caplog.at_level(logging.WARNING, logger="diti.data.datasets"):
        batch = ds.__getitems__(list(range(len(ds))))
        ds.__getitems__([bad])  # warned once per file
    assert batch.shape == (len(ds), 3, 16, 16)
    # the corrupt file is replaced by the next readable item (deterministic, so resume stays exact)
    nxt = bad + 1
    while nxt < len(ds) and ds.files[nxt] in ("empty.jpg", "sub/truncated.jpg", "corrupt.png"):
        nxt += 1
    assert np.array_equal(batch[bad].numpy(), ds[nxt].numpy())
    warned = [r.getMessage() for r in caplog.records]
    assert sum("corrupt.png" in m for m in warned) == 1 and any("truncated.jpg" in m for m in warned)
    assert all("skip_unreadable" in m for m in warned)


def test_bilinear_is_the_official_crop_then_resize(tmp_path):
    im = Image.fromarray(_rgb(3, (40, 30)))  # 30 wide, 40 high: the centre square is rows 5-34
    box = (0, 5, 30, 35)
    official = np.asarray(im.crop(box).resize((16, 16), Image.Resampling.BILINEAR))
    assert np.array_equal(fit_square(im, 16, resize="bilinear"), official)
    default = fit_square(im, 16)
    assert np.array_equal(default, np.asarray(im.resize((16, 16), Image.Resampling.BICUBIC, box=box)))
    assert not np.array_equal(default, official)
    Image.fromarray(_rgb(3, (40, 30))).save(tmp_path / "a.png")
    cfg = DataConfig(path=str(tmp_path), resolution=16, resize="bilinear")
    x = cfg.open()[0]
    assert np.allclose(x.permute(1, 2, 0).numpy(), official / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match="unknown resize filter 'nearest'"):
        open_dataset(tmp_path, "train", 16, resize="nearest")

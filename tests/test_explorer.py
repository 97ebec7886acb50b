"""The counterfactual explorer: its callbacks (plain functions), `diti explore` over HTTP, and a real browser.

The model is the shipped 32 px DM with a shapes-quick encoder trained for 2 steps; its shift decoder's output
conv and z embedding are then set to random values (as test_counterfactual's tiny models are, only smaller),
so that z visibly changes the decoded image while the reconstructions still look like the images, and the
model is exported: `diti explore` serves the exported folder.
"""

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diti
from conftest import quick_cfg
from diti.app import explorer as explorer_module
from diti.app.explorer import MAX_UPLOAD_PIXELS, Explorer, private_files
from diti.data import generate_shapes
from diti.models.dm import shipped_dm
from diti.partition import Partition
from diti.training.jobs import train_diti

SRC = Path(__file__).resolve().parents[1] / "src"
STEPS = 10
CHROMIUM = Path("/usr/bin/chromium")
# as the project runs Debian's chromium headless: no sandbox as root, and none of its background connections
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def shapes32(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("shapes32"), resolution=32, n_train=32, n_test=16, seed=0,
                           progress=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shapes32):
    """An exported DiTi model (d=16, k=4) on the shipped DM, whose code visibly changes the decoded images."""
    root = tmp_path_factory.mktemp("explorer")
    run = train_diti(quick_cfg(shipped_dm(), shapes32, "train.steps=2", "train.batch_size=8"), root / "run")
    model = diti.load(run)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.model.decoder.conv_out.weight, std=0.005)
    torch.nn.init.normal_(model.model.decoder.z_embed.weight, std=1.0)
    return model.save_pretrained(root / "model")


@pytest.fixture(scope="module")
def explorer(exported, shapes32):
    model = diti.load(exported)
    return Explorer(model, model.dataset(shapes32, "test"), steps=STEPS)


# ------------------------------------------------------------------------------------------------
def test_callbacks_cache_inversions_and_redecode_only(explorer):
    a, message = explorer.pick(0)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8 and "image #0" in message
    assert np.array_equal(a, explorer.dataset.images([0])[0])  # exactly the stored image
    b, _ = explorer.pick(3.0)
    rec, message = explorer.reconstruct(a)
    assert rec.shape == (explorer.display, explorer.display, 3) and "inversion computed" in message
    assert "inversion cached" in explorer.reconstruct(Image.fromarray(a))[1]  # same content, other object
    misses = explorer.cache.misses
    one, message = explorer.counterfactual(a, b, [], [1, 3], 1.0)
    assert "chunks 1, 3 moved toward b by alpha 1.00" in message and "one cached, one computed" in message
    assert explorer.cache.misses == misses + 1
    other, message = explorer.counterfactual(a, b, [], [1, 3], 0.3)
    assert explorer.cache.misses == misses + 1 and "both cached" in message  # the slider only re-decodes
    assert np.abs(one.astype(int) - other.astype(int)).max() > 20
    # the page shows what the API computes, upscaled
    model = explorer.model
    api = model.counterfactual(a, b, chunks=[1, 3], alpha=0.3, mode="interpolate", steps=STEPS, output_type="np")[0]
    assert np.array_equal(other[:: explorer.display // 32, :: explorer.display // 32], api)
    zero, _ = explorer.counterfactual(a, b, [], [0, 1, 2, 3], 0.0)
    assert np.array_equal(zero, rec)  # alpha 0: a's reconstruction
    clipped = Explorer(model, steps=STEPS, clip_x0=True)
    assert np.array_equal(clipped.counterfactual(a, b, [], [1, 3], 0.3)[0][:: explorer.display // 32, :: explorer.display // 32],
                          model.counterfactual(a, b, chunks=[1, 3], alpha=0.3, mode="interpolate", steps=STEPS,
                                               output_type="np", clip_x0=True)[0])
    strip, message = explorer.strip(a, b)
    assert [label for _, label in strip] == [f"b's {g.label}" for g in model.groups()] and "4 swaps" in message


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ex, a: ex.counterfactual(a, a, [], [], 0.5), "the selection is empty"),
        (lambda ex, a: ex.counterfactual(a, None, [], [0], 0.5), "pick image b first"),
        (lambda ex, a: ex.counterfactual(None, None, None, [0], 0.5), "pick image a and b first"),
        (lambda ex, a: ex.counterfactual(a[..., :2], a, [], [0], 0.5), r"RGB arrays .*\(2 channels\)"),
        (lambda ex, a: ex.reconstruct(torch.zeros(3, 16, 16)), "must be 32x32, the model's resolution"),
        (lambda ex, a: ex.reconstruct(np.stack([a, a])), "give one image here, got a batch of 2"),
        (lambda ex, a: ex.strip(a, None), "pick image b first"),
        (lambda ex, a: ex.pick(16), r"index 16 is out of range: the data set has 16 images \(0..15\)"),
        (lambda ex, a: ex.pick(1.5), "must be a whole number"),
        (lambda ex, a: ex.pick(None), "enter the index of an image"),
        (lambda ex, a: ex.counterfactual(a, a, [], ["chunk 9: t 0-1, dims 0-1"], 0.5),
         r"no chunk is labelled 'chunk 9: t 0-1, dims 0-1'; the chunks are: chunk 0: t 0-249, dims 0-3; "),
        (lambda ex, a: Explorer(ex.model).pick(0), "start the explorer with --data DIR"),
    ],
)
def test_bad_input_is_a_message_not_an_exception(explorer, call, message):
    a = explorer.pick(0)[0]
    *outputs, status = call(explorer, a)
    assert status.startswith("**error:**") and re.search(message, status), status
    assert all(o is None or o == [] for o in outputs)


def png_header(width: int, height: int) -> bytes:
    """An 8-bit grayscale PNG that says it is width x height and holds no pixels (PIL opens it from its size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_the_chunk_labels_the_page_shows_select_what_the_indices_do(explorer):
    a, b = explorer.pick(0)[0], explorer.pick(3)[0]
    labels = [label for label, _ in explorer.chunk_choices()]
    by_label, message = explorer.counterfactual(a, b, [], [labels[1], labels[3]], 1.0)
    assert "chunks 1, 3 moved toward b" in message
    assert np.array_equal(by_label, explorer.counterfactual(a, b, [], [1, 3], 1.0)[0])


@pytest.mark.parametrize("workers, cached_edit_first", [(2, True), (1, False)])
def test_an_edit_of_cached_images_does_not_wait_behind_a_new_inversion(explorer, monkeypatch, workers,
                                                                       cached_edit_first):
    import threading

    ex = Explorer(explorer.model, explorer.dataset, steps=STEPS, workers=workers)
    a, b, new = (ex.pick(i)[0] for i in (0, 3, 5))
    ex.counterfactual(a, b, [], [1], 1.0)  # a and b inverted: cached
    slow_invert, started = ex.model.invert, threading.Event()

    def invert(*args, **kwargs):
        started.set()
        time.sleep(3)
        out = slow_invert(*args, **kwargs)
        done.append("new inversion")
        return out

    monkeypatch.setattr(ex.model, "invert", invert)
    done = []
    inverting = threading.Thread(target=ex.reconstruct, args=(new,))
    inverting.start()
    started.wait(10)
    ex.counterfactual(a, b, [], [1], 0.5)
    done.append("cached edit")
    inverting.join()
    assert (done[0] == "cached edit") == cached_edit_first, done
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Explorer(explorer.model, workers=0)


def test_uploads_that_cannot_be_used_are_a_message_beside_the_image(explorer, tmp_path, monkeypatch):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    bomb = tmp_path / "huge.png"  # 20000 x 20000: PIL refuses to open it (DecompressionBombError)
    bomb.write_bytes(png_header(20_000, 20_000))
    big = tmp_path / "big.png"  # 6000 x 6000: PIL opens it, over the explorer's pixel limit
    Image.new("L", (6000, 6000)).save(big)
    for path, message in [(text, r"cannot read image a \(notes.png\): it is not an image file"),
                          (bomb, r"image a \(huge.png\) has more than \d+ megapixels, over the limit of 25 megapixels"),
                          (big, r"image a \(big.png\) is 6000x6000 pixels, over the limit of 25 megapixels")]:
        recon, status = explorer.reconstruct(str(path), "image a")
        assert recon is None and re.match(rf"\*\*error:\*\* {message}", status), status
    assert 6000 * 6000 > MAX_UPLOAD_PIXELS
    monkeypatch.setattr(explorer_module, "MAX_UPLOAD_BYTES", 1000)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    assert re.search(r"image b \(n.png\) is 0.0 MB, over the limit of 0 MB",
                     explorer.counterfactual(explorer.pick(0)[0], str(tmp_path / "n.png"), [], [0], 1.0)[1])
    monkeypatch.undo()
    # a readable upload within the limits is fitted like any image: the same reconstruction as the array
    small = tmp_path / "a.png"
    Image.fromarray(explorer.pick(0)[0]).save(small)
    assert np.array_equal(explorer.reconstruct(str(small), "image a")[0], explorer.reconstruct(explorer.pick(0)[0])[0])


def test_a_failure_that_is_not_bad_input_is_still_one_message(explorer, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(explorer.model, "swap_each_group", broken)
    a = explorer.pick(0)[0]
    items, status = explorer.strip(a, a)
    assert items == [] and status == "**error:** RuntimeError: out of memory (the server's log has the details)"
    assert "explorer callback failed" in caplog.text and "out of memory" in caplog.text


def test_private_files_are_removed_on_exit_and_gradio_writes_there(monkeypatch):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    with pytest.raises(KeyboardInterrupt), private_files() as folder:
        assert folder.is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
        assert os.environ["GRADIO_TEMP_DIR"] == str(folder)
        (folder / "upload.png").write_bytes(b"x")
        raise KeyboardInterrupt  # Ctrl-C while serving
    assert not folder.exists() and "GRADIO_TEMP_DIR" not in os.environ
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, private_files() as folder:
        os.kill(os.getpid(), signal.SIGTERM)  # stopped while the page is being built
        time.sleep(5)
    assert stopped.value.code == 128 + signal.SIGTERM and not folder.exists()
    assert signal.getsignal(signal.SIGTERM) == before


def test_page_content(explorer):
    assert [label for label, _ in explorer.chunk_choices()] == [
        "chunk 0: t 0-249, dims 0-3", "chunk 1: t 250-499, dims 4-7", "chunk 2: t 500-749, dims 8-11",
        "chunk 3: t 750-999, dims 12-15"]
    assert explorer.stage_choices() == []  # balanced: one stage
    header, rows = explorer.partition_table()
    assert header[2] == "t-range" and rows[3] == [3, 0, "750-999", "12-15", 4]
    assert "no measured figures yet" in explorer.measured_markdown()
    items = explorer.gallery()
    assert len(items) == 16 and items[5][1] == "#5" and items[5][0].shape == (explorer.display, explorer.display, 3)
    assert explorer.default_indices() == (0, 1)  # a and b start as two different images
    paged = Explorer(explorer.model, explorer.dataset, steps=STEPS, gallery_size=5)
    assert paged.gallery_pages == 4 and [label for _, label in paged.gallery(3)] == ["#15"]
    assert [label for _, label in paged.gallery(1)] == ["#5", "#6", "#7", "#8", "#9"]
    assert paged.gallery_label(3) == "the data set: images 15-15 of 16 (page 4 of 4); a click picks one"
    with pytest.raises(ValueError, match="gallery page 4 is out of range: there are 4 pages"):
        paged.gallery(4)
    page, items, label, has_previous, has_next = paged.turn_page(2, 1)
    assert (page, [c for _, c in items], has_previous, has_next) == (3, ["#15"], True, False) and "page 4" in label
    assert paged.turn_page(3, 1)[0] == 3 and paged.turn_page(0, -1)[0] == 0 and not paged.turn_page(1, -1)[3]
    staged = diti.load(explorer.model.source)
    staged.model.partition = Partition(16, 4, 1000, (500, 1000), (6, 10))
    assert [label for label, _ in Explorer(staged).stage_choices()] == ["stage 0: t 0-499, dims 0-5",
                                                                       "stage 1: t 500-999, dims 6-15"]


def test_measured_figures_are_shown_when_the_run_has_them(exported, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(exported, model_dir)
    (model_dir / "eval").mkdir()
    probe = {"task": "multiclass", "names": ["shape"], "per_attribute": {"shape": {"ap": 0.5, "accuracy": 0.75}},
             "mean": {"ap": 0.5, "accuracy": 0.75}, "best_epoch": 3, "a_later_key": [1, 2]}
    disentangle = {"factors": ["shape"], "dci": {"disentanglement": 0.25}, "mig": {"mig": 0.125},
                   "alignment": {"group_labels": ["chunks 0-1", "chunks 2-3"], "group_importance_share": [[0.3], [0.7]]}}
    (model_dir / "eval" / "probe.json").write_text(json.dumps(probe))
    (model_dir / "eval" / "disentangle.json").write_text(json.dumps(disentangle))
    Image.new("RGB", (40, 30), (0, 128, 0)).save(model_dir / "eval" / "alignment.png")
    ex = Explorer(diti.load(model_dir))
    text = ex.measured_markdown()
    assert "| shape | 0.5000 | 0.7500 |" in text and "DCI disentanglement 0.2500" in text and "MIG 0.1250" in text
    assert "FactorVAE score -" in text  # missing from this file: shown as unknown, not invented
    assert ex.alignment() == (["dims", "shape"], [["chunks 0-1", "0.3000"], ["chunks 2-3", "0.7000"]])
    gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'diti[app]')")
    from diti.app.explorer import build_app

    demo = build_app(ex.model, explorer=ex)
    assert isinstance(demo, gr.Blocks) and "alignment" in {b.elem_id for b in demo.blocks.values()}


def test_build_app(explorer):
    gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'diti[app]')")
    from diti.app.explorer import build_app

    demo = build_app(explorer.model, explorer.dataset, steps=STEPS, explorer=explorer)
    assert isinstance(demo, gr.Blocks)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"image-a", "image-b", "recon-a", "counterfactual", "chunks", "alpha", "swap", "strip", "gallery",
            "partition", "status", "message-a", "message-b"} <= ids
    # the image inputs hand the callbacks their file unread (the explorer decodes it within its limits)
    image_a = next(b for b in demo.blocks.values() if b.elem_id == "image-a")
    assert image_a.preprocess(image_a.data_model(path="/nowhere/upload.png")) == "/nowhere/upload.png"
    assert image_a.preprocess(None) is None
    assert not (SRC / "diti" / "app" / "explorer.pyi").exists()  # gradio writes one beside a component subclass
    assert not demo.analytics_enabled
    # every model call waits in one queue that admits the explorer's workers at once
    model_calls = [fn for fn in demo.fns.values() if fn.concurrency_id == "model"]
    assert len(model_calls) == 5 and {fn.concurrency_limit for fn in model_calls} == {explorer.workers}
    index_b = next(b for b in demo.blocks.values() if b.elem_id == "index-b")
    assert index_b.value == 1 and index_b.precision is None  # 1.5 reaches pick, which refuses it


# ------------------------------------------------------------------------------------------------
# `diti explore` as a user starts it
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def explore_server(exported, shapes32, log: Path):
    """`diti explore MODEL --data DIR --port P` in a subprocess, its output in ``log``; yields (base URL, process),
    and stops it with SIGTERM (as a service manager does) at the end."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'diti[app]')")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        command = [sys.executable, "-m", "diti", "explore", str(exported), "--data", str(shapes32), "--port", str(port),
                   "--steps", str(STEPS), "--threads", "1"]
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 600  # a loaded 2-core machine has needed over 300 s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"diti explore exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"diti explore did not answer on {url} within 600 s:\n{log.read_text()}")
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(exported, shapes32, tmp_path_factory):
    """The URL of a `diti explore` server shared by the tests below."""
    with explore_server(exported, shapes32, tmp_path_factory.mktemp("server") / "explore.log") as (url, _):
        yield url


def test_explore_on_a_taken_port_says_so(exported):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'diti[app]')")
    from typer.testing import CliRunner

    from diti.cli.main import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["explore", str(exported), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot serve on 127.0.0.1:{port}" in result.output, result.output
    assert "Traceback" not in result.output and "http://" not in result.output  # refused before the banner
    result = CliRunner().invoke(app, ["explore", str(exported), "--data", "/nonexistent"])
    assert result.exit_code == 2 and "error:" in result.output
    result = CliRunner().invoke(app, ["explore", str(exported), "--threads", "0"])
    assert result.exit_code == 2 and "--threads must be >= 1" in result.output


def test_explore_serves_the_page(server):
    with urllib.request.urlopen(server, timeout=10) as response:
        assert response.status == 200
        assert "gradio" in response.read().decode().lower()


def _upload(url: str, name: str, payload: bytes) -> tuple[int, str]:
    """POST one file to gradio's upload route, as the page does; (HTTP status, body)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url.rstrip("/") + "/gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_server_stops_reading_an_upload_past_its_cap(server):
    """An upload past UPLOAD_CAP_FACTOR x MAX_UPLOAD_BYTES is refused by the server while it streams (413), not
    written whole and refused later; one within the message limit is taken."""
    cap = explorer_module.UPLOAD_CAP_FACTOR * explorer_module.MAX_UPLOAD_BYTES
    status, body = _upload(server, "over-the-cap.png", b"\0" * (cap + 1))
    assert status == 413 and "maximum allowed size" in body, (status, body)
    status, body = _upload(server, "small.png", b"\0" * 1000)
    assert status == 200 and "small.png" in body, (status, body)


def test_browser_picks_images_moves_the_slider_and_swaps(server, tmp_path, capsys):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: `make setup` installs Debian's chromium when run as root")
    sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    shot = tmp_path / "explorer.png"
    outside = []
    with sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(90_000)  # the page takes up to ~45 s to start on a loaded 2-core machine
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:", "blob:"))
                    else None)
            page.goto(server)
            # a and b start at two different indices; a fractional index is refused beside its box
            assert page.locator("#index-b input").input_value() == "1"
            page.locator("#index-a input").fill("1.5")
            page.locator("#show-a").click()
            page.locator("#message-a").get_by_text("must be a whole number, got 1.5").wait_for()
            # a by its index, b from the gallery
            page.locator("#index-a input").fill("0")
            page.locator("#show-a").click()
            page.locator("#gallery-target").get_by_label("b").check()
            page.locator("#gallery button.thumbnail-item").nth(3).click()
            page.locator("#recon-a img").wait_for()
            page.locator("#recon-b img").wait_for()
            # swapping nothing is refused in the page
            page.locator("#swap").click()
            page.locator("#status").get_by_text("the selection is empty").wait_for()
            for label in ("chunk 1: t 250-499, dims 4-7", "chunk 3: t 750-999, dims 12-15"):
                page.locator("#chunks").get_by_label(label).check()
            images = []
            for alpha in ("1", "0.3"):
                previous = page.locator("#counterfactual img").get_attribute("src") if images else ""
                page.locator("#alpha input[type=range]").fill(alpha)
                page.locator("#swap").click()
                page.wait_for_function(
                    "prev => { const i = document.querySelector('#counterfactual img');"
                    " return i && i.complete && i.naturalWidth > 0 && i.src !== prev; }", arg=previous)
                page.locator("#status").get_by_text(f"by alpha {float(alpha):.2f}").wait_for()
                src = page.locator("#counterfactual img").get_attribute("src")
                images.append(np.asarray(Image.open(BytesIO(page.request.get(src).body())).convert("RGB")))
            page.locator("#strip-button").click()
            page.locator("#strip img").nth(3).wait_for()
            # the strip's captions are whole ("b's chunk 0: t 0-249, dims 0-3"), not cut with an ellipsis
            cut = page.evaluate("() => [...document.querySelectorAll('#strip .caption-label')]"
                                ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)")
            captions = page.locator("#strip .caption-label").all_text_contents()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    with capsys.disabled():  # shown even when pytest captures output: where to look at the page
        print(f"\nexplorer screenshot: {shot}")
    assert images[0].shape == (160, 160, 3) and np.abs(images[0].astype(int) - images[1].astype(int)).max() > 20
    assert not outside, f"the page requested outside addresses: {outside[:5]}"
    assert shot.stat().st_size > 10_000
    assert len(captions) == 4 and "b's chunk 0: t 0-249, dims 0-3" in captions[0] and not cut, (captions, cut)


def test_browser_bad_uploads_are_messages_and_leave_no_files(exported, shapes32, tmp_path):
    """The acceptance test of the explorer's uploads: a file that is not an image and an image over the pixel limit
    are one sentence beside the image they were uploaded as, the server keeps answering, and after it stops (SIGTERM)
    none of the uploaded files is left on disk."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: `make setup` installs Debian's chromium when run as root")
    sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    tag = uuid.uuid4().hex[:12]  # names no other file on this machine has
    text = tmp_path / f"notes-{tag}.png"
    text.write_text("not an image, whatever the name says")
    big = tmp_path / f"big-{tag}.png"
    Image.new("L", (6000, 6000)).save(big)  # 36 megapixels, 36 kB on disk
    log = tmp_path / "explore.log"
    with explore_server(exported, shapes32, log) as (url, proc):
        banner = re.search(r"uploads and outputs are kept in (\S+) until then", log.read_text())
        assert banner, log.read_text()
        private = Path(banner.group(1))
        with sync.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(90_000)
                page.goto(url)
                # a good pick first, so that there is a success message for the failure to replace
                page.locator("#index-a input").fill("2")
                page.locator("#show-a").click()
                page.locator("#message-a").get_by_text("reconstruction in").wait_for()
                page.locator("#image-a input[type=file]").set_input_files(str(text))
                page.locator("#message-a").get_by_text(f"cannot read image a (notes-{tag}.png): it is not an image "
                                                       "file").wait_for()
                page.locator("#image-b input[type=file]").set_input_files(str(big))
                page.locator("#message-b").get_by_text(f"image b (big-{tag}.png) is 6000x6000 pixels, over the limit "
                                                       "of 25 megapixels").wait_for()
                message_a = page.locator("#message-a").inner_text()
                assert "reconstruction in" not in message_a and message_a.count("error") == 1, message_a
                assert page.locator(".toast-body").count() == 0  # no bare "Error" from gradio
                # the server still answers: b from its index, and its reconstruction
                page.locator("#index-b input").fill("1")
                page.locator("#show-b").click()
                page.locator("#message-b").get_by_text("reconstruction in").wait_for()
                page.locator("#recon-b img").wait_for()
            finally:
                browser.close()
        uploaded = sorted(private.rglob(f"*{tag}*"))
        assert {f.name for f in uploaded} == {text.name, big.name}, uploaded  # kept in the private folder only
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    assert "uploads and outputs are removed" in log.read_text(), log.read_text()
    assert not private.exists()
    shared = Path(tempfile.gettempdir()) / "gradio"
    if shared.is_dir():  # nothing in gradio's shared cache either
        assert not list(shared.rglob(f"*{tag}*"))

"""The Python API (diti.load / DiTiPipeline) and shareable exported models, on tiny 16 px runs."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import diti
from diti.cli.main import app
from diti.config.loader import dump_yaml, read_yaml
from diti.data.images import fit_square, to_rgb, to_tensor
from diti.evaluation.counterfactual import counterfactual_grid
from diti.inference import reconstruct

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STEPS = 5
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def python(code: str, cwd=None) -> str:
    """Run ``code`` in a fresh interpreter with this checkout's sources first on the path."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory, tiny_run):
    """A private copy of the session's tiny run (k=4, d=16) and its DM, which tests may move or extend."""
    root = tmp_path_factory.mktemp("api")
    shutil.copytree(tiny_run.parent / "dm", root / "dm")
    shutil.copytree(tiny_run, root / "run", ignore=shutil.ignore_patterns("eval"))
    set_dm(root / "run", root / "dm")
    return root / "run"


def set_dm(run: Path, dm: Path) -> None:
    """Point a run's config.yaml to another DM folder (as if the run had been copied to another machine)."""
    data = read_yaml(run / "config.yaml")
    (run / "config.yaml").write_text(dump_yaml({**data, "dm": str(dm)}))


@pytest.fixture(scope="module")
def model(run_copy):
    return diti.load(run_copy)


@pytest.fixture(scope="module")
def pair(model, shapes16):
    return model.images([0, 1, 2, 3], data=shapes16)


# ------------------------------------------------------------------------------------------------
def test_import_diti_is_cheap_and_the_acceptance_line_works(run_copy):
    assert python("import sys, diti; print('torch' in sys.modules)").strip() == "False"
    line = (f"import diti, numpy as np; m = diti.load({str(run_copy)!r}); "
            "images = np.zeros((2, 16, 16, 3), np.uint8); print(m.encode(images).shape)")
    assert python(line).strip() == "torch.Size([2, 16])"


def test_load_a_run(model, run_copy):
    assert model.kind == "DiTi" and model.partition.k == 4 and model.latent_dim == 16 and model.resolution == 16
    assert model.step == 4 and model.checkpoint == "step-00000004" and model.weights == "ema"
    assert model.config.partition.k == 4 and "DiTi (d=16, k=4" in repr(model)
    raw = diti.load(run_copy, ema=False)
    assert raw.weights == "raw" and not torch.equal(raw.model.encoder.fc.weight, model.model.encoder.fc.weight)


def test_every_input_kind_gives_the_same_code(model, shapes16):
    ds = model.dataset(shapes16, "test")
    arr = ds.images([0, 1])  # uint8 (2, 16, 16, 3)
    z = model.encode(to_tensor(arr))
    assert z.shape == (2, 16)
    assert torch.equal(model.encode(arr), z)
    assert torch.equal(model.encode([Image.fromarray(a) for a in arr]), z)
    one = model.encode(arr[0])  # a single image is a batch of one (which may round differently from two)
    assert one.shape == (1, 16) and torch.allclose(one, z[:1], atol=1e-6)
    assert torch.equal(model.encode(to_tensor(arr)[0]), one) and torch.equal(model.encode(Image.fromarray(arr[0])), one)
    # other sizes and modes are fitted exactly as the data loader fits files: RGB, centre square, bicubic
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 44, 4), dtype=np.uint8), "RGBA")
    expected = to_tensor(np.stack([fit_square(to_rgb(big), 16)]))
    assert torch.equal(model.preprocess(big).cpu(), expected)
    assert torch.equal(model.preprocess(np.asarray(to_rgb(big))).cpu(), expected)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(1, 3, 32, 32), "must be 16x16, the model's resolution"),
        (torch.zeros(2, 4, 16, 16), r"must be \(3, 16, 16\) or \(B, 3, 16, 16\); got shape \(2, 4, 16, 16\)"),
        (torch.full((1, 3, 16, 16), 255.0), r"must be in \[-1, 1\]; got values in \[255, 255\]"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "must be float"),
        (np.zeros((16, 16, 3)), "must be uint8"),
        (np.zeros((1, 16, 16, 4), np.uint8), r"RGB arrays .* \(4 channels\)"),
        (np.zeros((16, 16), np.uint8), "RGB arrays"),
        ([], "no images given"),
        ("image.png", "got str"),
    ],
)
def test_bad_images_are_refused_with_the_reason(model, images, message):
    with pytest.raises(ValueError, match=message):
        model.encode(images)


def test_counterfactuals_reuse_inversions_and_match_the_evaluation_code(model, pair):
    a, b = pair[:2], pair[2:]
    inv_a, inv_b = model.invert(a, STEPS), model.invert(b, STEPS)
    assert inv_a.z.shape == (2, 16) and inv_a.x_T.shape == (2, 3, 16, 16) and len(inv_a[1]) == 1
    rec = model.reconstruct(a, steps=STEPS, output_type="pt")
    assert torch.equal(rec, reconstruct(model.model, a, STEPS))
    assert torch.equal(model.reconstruct(inversion=inv_a, steps=STEPS, output_type="pt"), rec)
    clipped = model.reconstruct(inversion=inv_a, steps=STEPS, output_type="pt", clip_x0=True)
    assert torch.equal(clipped, reconstruct(model.model, a, STEPS, clip_x0=True)) and clipped.abs().max() <= 1
    mask = model.select_dims(chunks=[2, 3])
    grid = counterfactual_grid(model.model, a, b, mask, alphas=(0.0, 0.5), num_steps=STEPS)
    half = model.counterfactual(a, b, chunks=[2, 3], alpha=0.5, mode="interpolate", steps=STEPS, output_type="pt")
    assert torch.equal(half, grid["images"][:, 1])
    reused = model.counterfactual(chunks=[2, 3], alpha=0.5, mode="interpolate", steps=STEPS, inversion_a=inv_a,
                                  inversion_b=inv_b, output_type="pt")
    assert torch.equal(reused, half)
    zero = model.counterfactual(chunks=[2, 3], alpha=0.0, mode="interpolate", steps=STEPS, inversion_a=inv_a,
                                inversion_b=inv_b, output_type="pt")
    assert torch.equal(zero, rec)  # alpha 0 with a's x_T is a's reconstruction
    pil = model.counterfactual(a[0], b[0], stages=[0], steps=STEPS)
    assert len(pil) == 1 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    assert model.counterfactual(a, b, dims=[0, 5], x_T="slerp", steps=STEPS, output_type="np").shape == (2, 16, 16, 3)
    strip = model.swap_each_group(inversion_a=inv_a, inversion_b=inv_b, steps=STEPS, output_type="pt")
    assert [g.label for g, _ in strip] == [g.label for g in model.groups()]
    first = model.counterfactual(dims=list(range(*strip[0][0].dim_range)), steps=STEPS, inversion_a=inv_a,
                                 inversion_b=inv_b, output_type="pt")
    assert torch.allclose(strip[0][1], first, rtol=1e-4, atol=1e-4)  # the strip decodes all groups as one batch


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunks=[0], alpha=0.5), "mode='swap' replaces the dims"),
        (dict(chunks=[0], mode="interpolate", alpha=1.5), r"alpha must be in \[0, 1\]"),
        (dict(chunks=[]), "the selection is empty"),
        (dict(chunks=[7]), "chunk index 7 is out of range"),
        (dict(chunks=[0], stages=[0]), "exactly one of chunks, stages, dims"),
        (dict(chunks=[0], mode="mix"), "unknown counterfactual mode"),
        (dict(chunks=[0], output_type="jpeg"), "unknown output_type"),
        (dict(chunks=[0], steps=STEPS + 1), "made with 5 DDIM steps but this call decodes with steps=6"),
    ],
)
def test_bad_counterfactual_arguments(model, pair, kwargs, message):
    inv = model.invert(pair[:1], STEPS)
    with pytest.raises(ValueError, match=message):
        model.counterfactual(**{"steps": STEPS, "inversion_a": inv, "inversion_b": inv, **kwargs})


def test_manipulate_with_a_fitted_or_saved_direction(model, pair, shapes16, run_copy):
    with pytest.raises(ValueError, match="attribute 'colour' not found"):
        model.probmask("colour", shapes16)
    edited = model.manipulate(pair[:2], "shape", 2.0, data=shapes16, target_class=1, d_prime=4, steps=STEPS,
                              output_type="pt")
    assert edited.shape == (2, 3, 16, 16)
    direction = model.probmask("shape", shapes16, target_class=1, d_prime=4)
    same = model.manipulate(pair[:2], strength=0.0, probmask=direction, steps=STEPS, output_type="pt")
    assert torch.equal(same, model.reconstruct(pair[:2], steps=STEPS, output_type="pt"))
    # `diti manipulate` saves the direction with its checkpoint; the API reads it back without any data
    invoke("manipulate", run_copy, "--data", shapes16, "--attribute", "shape", "--target-class", 1, "--d-prime", 4,
           "--steps", 3, "--images", "0")
    saved = json.loads((run_copy / "eval" / "manipulate-shape.json").read_text())
    assert saved["checkpoint"] == "step-00000004"
    fresh = diti.load(run_copy)
    fresh.config.data.path = None  # no data of its own: the saved direction is the only source
    got = fresh.probmask("shape", target_class=1, d_prime=4)
    assert got.mask_dims.tolist() == saved["mask_dims"] and np.allclose(got.weights, saved["weights"])
    with pytest.raises(ValueError, match=r"editing 'scale' needs labelled images .* pass data=DIR"):
        fresh.manipulate(pair[:1], "scale", steps=STEPS)
    with pytest.raises(ValueError, match="give the attribute to edit"):
        fresh.manipulate(pair[:1], steps=STEPS)


def test_export_is_self_contained(tmp_path, run_copy, model, pair, shapes16):
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    invoke("probe", run, "--data", shapes16, "--epochs", 2)
    disentangle = {  # the schema of `diti disentangle` (numbers made up here), plus a key a later diti may add
        "factors": ["shape", "texture"], "dci": {"disentanglement": 0.25, "completeness": 0.5,
                                                  "informativeness_test": 0.75},
        "mig": {"mig": 0.125}, "factor_vae": {"eval_accuracy": 0.625}, "new_metric": {"x": 1},
        "alignment": {"group_labels": ["chunk 0: t 0-249, dims 0-3", "chunks 1-3: t 250-999, dims 4-15"],
                      "group_importance_share": [[0.1, 0.9], [0.9, 0.1]]},
    }
    (run / "eval" / "disentangle.json").write_text(json.dumps(disentangle))
    (run / "eval" / "fidelity.json").write_text("{not json")
    source = diti.load(run)
    source.save_probmask(source.probmask("shape", shapes16, target_class=1, d_prime=4),
                         run / "eval" / "manipulate-shape.json")
    (run / "eval" / "manipulate-scale.json").write_text(json.dumps({"checkpoint": "step-00000001"}))  # stale
    out = invoke("export", run, "--out", tmp_path / "export")
    assert "exported DiTi (d=16, k=4" in out
    export = tmp_path / "export"
    assert not list(tmp_path.glob(".export.tmp-export"))
    index = json.loads((export / "model_index.json").read_text())
    assert index["_class_name"] == "DiTiPipeline" and index["checkpoint"] == "step-00000004"
    assert sorted(index["eval"]) == ["disentangle.json", "fidelity.json", "manipulate-shape.json", "probe.json"]
    cfg = (export / "config.yaml").read_text()
    assert "dm: null" in cfg and str(tmp_path) not in cfg and "format: diti-array" in cfg
    # no path of this machine anywhere in the folder's text files: provenance by folder names
    assert index["source"] == {"run": "run", "dm": Path(source.config.dm).name, "data": shapes16.name}
    here = {str(Path(p).resolve().parent) for p in (tmp_path, run, source.config.dm, shapes16)}
    for text in (export / "model_index.json", export / "README.md", export / "config.yaml"):
        assert not [p for p in here if p in text.read_text()], text
    card = (export / "README.md").read_text()
    probe = json.loads((run / "eval" / "probe.json").read_text())
    assert "| 3 | 0 | 750-999 | 12-15 | 4 |" in card  # the partition table
    mean_row = next(line for line in card.splitlines() if line.startswith("| **mean** |"))
    assert all(f"{v:.4f}" in mean_row for v in probe["mean"].values())
    assert "DCI disentanglement 0.2500" in card and "| chunks 1-3: t 250-999, dims 4-15 | 0.9000 | 0.1000 |" in card
    # the frozen DM is a diffusers pipeline folder diffusers itself opens
    from diffusers import DDPMPipeline

    assert DDPMPipeline.from_pretrained(export / "dm").unet.config.sample_size == 16
    # move it, remove everything it came from, and open it (in a fresh process, offline)
    moved = tmp_path / "elsewhere" / "shared-model"
    moved.parent.mkdir()
    shutil.move(str(export), str(moved))
    shutil.rmtree(run)
    dm_dir = Path(model.config.dm)
    hidden = dm_dir.with_name("dm-hidden")
    dm_dir.rename(hidden)
    try:
        np.save(tmp_path / "x.npy", pair.cpu().numpy())
        z = python(f"import diti, numpy as np, torch; m = diti.load({str(moved)!r}); "
                   f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})); print(m.encode(x).tolist())")
    finally:
        hidden.rename(dm_dir)
    assert np.allclose(json.loads(z), model.encode(pair).tolist(), atol=1e-6)
    loaded = diti.load(moved)
    assert loaded.metrics["disentangle"]["new_metric"] == {"x": 1} and "fidelity" not in loaded.metrics
    assert torch.equal(loaded.counterfactual(pair[0], pair[1], chunks=[1], steps=STEPS, output_type="pt"),
                       model.counterfactual(pair[0], pair[1], chunks=[1], steps=STEPS, output_type="pt"))
    assert loaded.probmask("shape", target_class=1, d_prime=4).d_prime == 4  # the saved direction came along
    # the command line takes an exported folder wherever it takes a run
    assert "encoded 64 images to 16 dims" in invoke("encode", moved, "--data", shapes16, "--out", tmp_path / "z.npy")


def test_export_and_load_refuse_what_does_not_fit(tmp_path, run_copy, model):
    export = model.save_pretrained(tmp_path / "export")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        model.save_pretrained(export)
    weights = export / "encoder" / "model.safetensors"
    tensors = load_file(weights)
    tensors["fc.weight"] = tensors["fc.weight"][:8]
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"encoder.fc.weight has shape \(8, 512\), but the model built from the config "
                                         r"expects \(16, 512\)"):
        diti.load(export)
    del tensors["fc.bias"]
    save_file(tensors, weights)
    with pytest.raises(ValueError, match=r"missing \['fc.bias'\]"):
        diti.load(export)
    index = json.loads((export / "model_index.json").read_text())
    (export / "model_index.json").write_text(json.dumps({**index, "export_format": 7}))
    with pytest.raises(ValueError, match="export format 7; this diti"):
        diti.load(export)
    with pytest.raises(ValueError, match="not a diti run folder .* nor a model folder written by `diti export`"):
        diti.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        diti.load(tmp_path / "nope")


def test_an_export_is_opened_by_the_components_its_model_index_names(tmp_path, model):
    export = model.save_pretrained(tmp_path / "export")
    index = json.loads((export / "model_index.json").read_text())
    (export / "model_index.json").write_text(json.dumps({**index, "shift_decoder": ["diti", "OtherDecoder"]}))
    with pytest.raises(ValueError, match=r"names 'shift_decoder' \['diti', 'OtherDecoder'\]"):
        diti.load(export)


def test_a_run_whose_dm_moved_loads_with_dm(tmp_path, run_copy, model, pair, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    downloaded = tmp_path / "downloads" / "ddpm"  # as a user's copy of a diffusers DM folder would be
    shutil.copytree(model.config.dm, downloaded)
    set_dm(run, tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"frozen DM of .* is not found .* with dm=\.\.\."):
        diti.load(run)
    moved = diti.load(run, dm=downloaded)
    assert torch.equal(moved.encode(pair), model.encode(pair))
    result = runner.invoke(app, ["encode", str(run), "--data", str(tmp_path), "--out", str(tmp_path / "z.npy")])
    assert result.exit_code == 2 and "--dm" in result.output and "Traceback" not in result.output


def test_reconstruct_command(run_copy, shapes16, tmp_path):
    out = invoke("reconstruct", run_copy, "--data", shapes16, "--images", "0, 3", "--steps", 3,
                 "--out", tmp_path / "r.png")
    mse = [float(v) for v in re.search(r"\(([^)]*)\)", out).group(1).split(", ")]
    assert len(mse) == 2 and all(m >= 0 for m in mse) and "wrote" in out
    with Image.open(tmp_path / "r.png") as im:
        assert im.height > 2 * 64
    result = runner.invoke(app, ["reconstruct", str(run_copy), "--data", str(shapes16), "--images", "99"])
    assert result.exit_code == 2 and "image index 99 is out of range" in result.output
    result = runner.invoke(app, ["reconstruct", str(run_copy), "--images", "0"])
    assert result.exit_code == 2 and "give the data folder it indexes" in result.output


def test_readme_python_example_runs_verbatim(tmp_path, run_copy, shapes16, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    (tmp_path / "runs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "runs" / "diti").symlink_to(run_copy)
    (tmp_path / "data" / "shapes").symlink_to(shapes16)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    with Image.open(tmp_path / "swap.png") as im:
        assert im.size == (16, 16)


def test_pdae_runs_load_and_edit_too(tmp_path, run_copy, pair, shapes16):
    from conftest import quick_cfg
    from diti.app.explorer import Explorer
    from diti.training.jobs import train_diti

    dm = diti.load(run_copy).config.dm
    run = train_diti(quick_cfg(dm, shapes16, "train.steps=1", "partition.k=1"), tmp_path / "pdae")
    pdae = diti.load(run)
    assert pdae.kind == "PDAE" and pdae.partition.k == 1 and "PDAE (d=16, k=1" in pdae.describe()
    inv_a, inv_b = pdae.invert(pair[:1], STEPS), pdae.invert(pair[1:2], STEPS)
    everything = pdae.counterfactual(chunks=[0], steps=STEPS, inversion_a=inv_a, inversion_b=inv_b, output_type="pt")
    assert torch.equal(everything, pdae.counterfactual(dims=list(range(16)), steps=STEPS, inversion_a=inv_a,
                                                       inversion_b=inv_b, output_type="pt"))
    strip = pdae.swap_each_group(inversion_a=inv_a, inversion_b=inv_b, steps=STEPS)
    assert [g.dim_range for g, _ in strip] == [(0, 4), (4, 8), (8, 12), (12, 16)]  # PDAE: slices of z
    assert Explorer(pdae).chunk_choices() == [("chunk 0: all t, dims 0-15", 0)]

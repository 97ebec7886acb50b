"""The shipped DMs: the sha256 that README.md and each asset's own README name is that of the file shipped."""

import hashlib
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "src" / "diti" / "assets"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", sorted(p.name for p in ASSETS.glob("dm-*") if p.is_dir()))
def test_readmes_name_the_sha256_of_the_shipped_weights(name):
    weights = ASSETS / name / "unet" / "diffusion_pytorch_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert digest in README.read_text(), f"README.md does not name the sha256 of {name} ({digest})"
    assert digest in (ASSETS / name / "README.md").read_text().replace("\n", "").replace(" ", "")
    assert weights.stat().st_size <= 10 * 2**20  # at most 10 MB shipped per DM

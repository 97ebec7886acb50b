"""The shipped DMs: the sha256 that README.md and each asset's own README name is that of the file shipped."""

import hashlib
import json
import re
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


def test_shapes_v2_crossing_times_have_one_source():
    """The t at which the shipped 16-px DM loses each shapes-v2 factor: README.md quotes its attribute_loss.json
    (grid crossing times, as the DM's card does), and `diti data shapes --help` points to the card."""
    crossing = json.loads((ASSETS / "dm-shapes2-16" / "attribute_loss.json").read_text())["crossing_t"]
    text = " ".join(README.read_text().split())
    first, last = min(crossing.values()), max(crossing.values())
    assert f"from a 1-pixel grain at t = {crossing['grain']} to the background colour at t = " \
           f"{crossing['background_color']}" in text and (first, last) == (crossing["grain"], crossing["background_color"])
    quoted = re.search(r"loses each factor \((grain \d+, .*?background \d+):", text).group(1)
    numbers = [int(n) for n in re.findall(r"\d+", quoted)]
    assert sorted(set(numbers)) == sorted(set(crossing.values())), quoted
    card = (ASSETS / "dm-shapes2-16" / "README.md").read_text()
    assert all(re.search(rf"\| {name} \| {t} \|", card) for name, t in crossing.items())

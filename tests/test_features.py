import numpy as np
import pytest

from diti.data import Attributes
from diti.evaluation.features import load_features, save_features


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_round_trip(tmp_path, suffix):
    z = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    attrs = Attributes(["a", "b"], np.array([[0, 1], [1, 0], [2, 1], [0, 0], [1, 1]]), [["x", "y", "z"], ["n", "m"]])
    save_features(tmp_path / f"f{suffix}", z, attrs)
    z2, a2 = load_features(tmp_path / f"f{suffix}")
    np.testing.assert_array_equal(z, z2)
    assert a2.names == ["a", "b"] and a2.classes == attrs.classes
    np.testing.assert_array_equal(a2.values, attrs.values)


def test_without_attributes_and_bad_suffix(tmp_path):
    z = np.zeros((3, 2), np.float32)
    save_features(tmp_path / "f.npy", z)
    assert load_features(tmp_path / "f.npy")[1] is None
    with pytest.raises(ValueError, match=".npy or .safetensors"):
        save_features(tmp_path / "f.txt", z)
    with pytest.raises(FileNotFoundError):
        load_features(tmp_path / "missing.npy")

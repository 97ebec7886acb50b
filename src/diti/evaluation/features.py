"""Encode a data set with a trained encoder, and save/load the features with their attribute table.

Formats, by the output file's extension:
- ``.npy``: features (N, d) float32; the attribute table, if the data has one, goes to ``<stem>.attributes.csv``
  beside it.
- ``.safetensors``: ``features`` and ``attributes`` tensors in one file, attribute names and class names in
  its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

from ..data import Attributes, collate_images


@torch.no_grad()
def encode_dataset(
    encoder: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """z for every image of ``dataset``, in order: (N, d) float32."""
    encoder.eval()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_images
    )
    chunks = []
    for x in tqdm(loader, desc="encode", disable=not progress, unit="batch"):
        chunks.append(encoder(x.to(device)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, getattr(encoder, "latent_dim", 0)), np.float32)



def save_features(path: str | Path, features: np.ndarray, attributes: Attributes | None = None) -> list[Path]:
    """Write features (and attributes) to ``path``; returns the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, features.astype(np.float32))
        written = [path]
        if attributes is not None:
            csv = attributes_path(path)
            attributes.to_csv(csv)
            written.append(csv)
            meta = {"names": attributes.names, "classes": attributes.classes}
            csv.with_suffix(".json").write_text(json.dumps(meta))
            written.append(csv.with_suffix(".json"))
        return written
    if path.suffix == ".safetensors":
        tensors = {"features": features.astype(np.float32)}
        meta = {"format": "diti-features"}
        if attributes is not None:
            tensors["attributes"] = np.asarray(attributes.values)
            meta["attributes"] = json.dumps({"names": attributes.names, "classes": attributes.classes})
        save_file(tensors, str(path), metadata=meta)
        return [path]
    raise ValueError(f"feature file must end in .npy or .safetensors, got {path.name}")


def attributes_path(npy: Path) -> Path:
    return npy.with_name(npy.stem + ".attributes.csv")


def load_features(path: str | Path) -> tuple[np.ndarray, Attributes | None]:
    """(features (N, d), attributes or None) from a file written by ``save_features``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    if path.suffix == ".npy":
        features = np.load(path, allow_pickle=False)
        csv = attributes_path(path)
        attributes = None
        if csv.is_file():
            meta_file = csv.with_suffix(".json")
            classes = json.loads(meta_file.read_text())["classes"] if meta_file.is_file() else None
            attributes = Attributes.from_csv(csv, classes=classes)
        return features, attributes
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        tensors = load_file(str(path))
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
        attributes = None
        if "attributes" in tensors:
            info = json.loads(meta["attributes"])
            attributes = Attributes(info["names"], tensors["attributes"], info["classes"])
        return tensors["features"], attributes
    raise ValueError(f"feature file must end in .npy or .safetensors, got {path.name}")

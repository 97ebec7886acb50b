"""Evaluation of a trained run: cached features per split, and the probe job behind ``diti probe``.

Results go to ``RUN/eval/`` (``probe.json``, ``disentangle.json``, figures), where ``diti report`` finds them.
Features are cached in ``RUN/eval/features/<split>[-flip].npy`` with a sidecar naming the data set, split
and checkpoint they came from; a cache that does not match is recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data import Attributes
from ..training.checkpoint import latest_checkpoint
from .features import encode_dataset, load_features, save_features
from .probe import ProbeResult, linear_probe

EVAL_DIR = "eval"


def eval_dir(run: str | Path) -> Path:
    path = Path(run) / EVAL_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def probe_task(attributes: Attributes) -> str:
    """multiclass / binary / regression from the attribute table (ValueError for a mixed table)."""
    kinds = {attributes.is_categorical(i) for i in range(len(attributes.names))}
    if kinds == {True}:
        two = all(attributes.num_classes(i) == 2 for i in range(len(attributes.names)))
        return "binary" if two else "multiclass"
    if kinds == {False}:
        return "regression"
    raise ValueError(
        "the attribute table mixes categorical and continuous columns; pass --task and --columns to probe "
        "one kind at a time"
    )


class _Flipped(torch.utils.data.Dataset):
    """A data set's images mirrored left-right (for the probe's flip augmentation)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i].flip(-1)

    def __getitems__(self, indices):
        return self.dataset.__getitems__(indices).flip(-1)


def run_features(
    model, cfg, run: str | Path, data: str | Path, split: str, device: str | torch.device = "cpu",
    batch_size: int = 256, flipped: bool = False, progress: bool = True,
) -> tuple[np.ndarray, Attributes | None]:
    """z of every image of ``data``/``split`` with the run's encoder, cached in RUN/eval/features/."""
    dataset = cfg.data.open(split, data)
    ckpt = latest_checkpoint(Path(run) / "checkpoints")
    key = {"data": str(Path(data).resolve()), "split": split, "flipped": flipped,
           "checkpoint": ckpt.name if ckpt else None, "n": len(dataset)}
    folder = eval_dir(run) / "features"
    folder.mkdir(exist_ok=True)
    stem = split + ("-flip" if flipped else "")
    path, meta = folder / f"{stem}.npy", folder / f"{stem}.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
        return load_features(path)
    source = _Flipped(dataset) if flipped else dataset
    z = encode_dataset(model.encoder, source, batch_size=batch_size, device=device, progress=progress)
    save_features(path, z, dataset.attributes)
    meta.write_text(json.dumps(key))
    return z, dataset.attributes


def select_columns(attributes: Attributes, columns: list[str] | None) -> Attributes:
    if not columns:
        return attributes
    missing = [c for c in columns if c not in attributes.names]
    if missing:
        raise ValueError(f"unknown attribute(s) {missing}; the data has {attributes.names}")
    idx = [attributes.names.index(c) for c in columns]
    classes = None if attributes.classes is None else [attributes.classes[i] for i in idx]
    return Attributes(list(columns), np.asarray(attributes.values)[:, idx], classes)


def probe_features(
    train: tuple[np.ndarray, Attributes],
    test: tuple[np.ndarray, Attributes],
    valid: tuple[np.ndarray, Attributes] | None = None,
    task: str = "auto",
    columns: list[str] | None = None,
    train_flipped: np.ndarray | None = None,
    **kwargs,
) -> ProbeResult:
    """linear_probe on feature/attribute pairs, choosing the task from the attribute table."""
    attrs = {}
    for name, pair in (("train", train), ("test", test), ("valid", valid)):
        if pair is None:
            continue
        if pair[1] is None:
            raise ValueError(f"the {name} features have no attribute table to probe")
        attrs[name] = (pair[0], select_columns(pair[1], columns))
    task = probe_task(attrs["train"][1]) if task == "auto" else task
    as_pair = {k: (z, a.values) for k, (z, a) in attrs.items()}
    return linear_probe(as_pair["train"], as_pair["test"], task, names=attrs["train"][1].names,
                        valid=as_pair.get("valid"), train_flipped=train_flipped, **kwargs)


def probe_run(
    run: str | Path, data: str | Path, train_split: str = "train", test_split: str = "test",
    valid_split: str | None = None, device: str | torch.device = "cpu", hflip: bool = False,
    progress: bool = True, **probe_kwargs,
) -> ProbeResult:
    """Encode the splits with the run's EMA encoder, probe, and write RUN/eval/probe.json."""
    from ..training.jobs import load_diti_run

    model, cfg = load_diti_run(run, device=device)
    feats = {s: run_features(model, cfg, run, data, s, device, progress=progress)
             for s in {train_split, test_split, *([valid_split] if valid_split else [])}}
    flipped = run_features(model, cfg, run, data, train_split, device, flipped=True, progress=progress)[0] if hflip else None
    result = probe_features(feats[train_split], feats[test_split], feats.get(valid_split) if valid_split else None,
                            train_flipped=flipped, progress=progress, device=device, **probe_kwargs)
    (eval_dir(run) / "probe.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result

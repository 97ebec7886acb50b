"""Evaluation jobs on a trained run: cached features per split, and the probe, disentanglement, fidelity and
attribute-loss jobs behind ``diti probe``, ``diti disentangle``, ``diti fidelity`` and ``diti attribute-loss``.

Results go to ``RUN/eval/`` (their files: ``diti.folders.results``), where ``diti report`` finds them.
Features are cached in ``RUN/eval/features/<split>[-flip].npy`` with a sidecar naming the data set, split
and checkpoint they came from; a cache that does not match is recomputed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Attributes
from ..folders import DisentangleResult, ProbeResult, eval_dir, latest_checkpoint, load_diti_run
from ..folders.files import write_json
from ..folders.layout import CHECKPOINTS, CONFIG, DM, FACTOR_CLASSIFIER, FEATURES
from ..inference import chunk_groups, dim_groups
from .features import encode_dataset, load_features, save_features
from .probe import linear_probe


def say(text: str, progress: bool = True) -> None:
    """One line on stderr naming the stage a long job starts (written above any open progress bar), so that no
    stage of a command passes in silence; nothing when ``progress`` is off."""
    if progress:
        tqdm.write(text, file=sys.stderr)
        sys.stderr.flush()


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
    batch_size: int = 256, flipped: bool = False, progress: bool = True, dataset=None,
) -> tuple[np.ndarray, Attributes | None]:
    """z of every image of ``data``/``split`` with the run's encoder, cached in RUN/eval/features/
    (``dataset``: that split already opened)."""
    dataset = cfg.data.open(split, data) if dataset is None else dataset
    ckpt = latest_checkpoint(Path(run) / CHECKPOINTS)
    key = {"data": str(Path(data).resolve()), "split": split, "flipped": flipped,
           "checkpoint": ckpt.name if ckpt else None, "n": len(dataset)}
    folder = eval_dir(run) / FEATURES
    folder.mkdir(exist_ok=True)
    stem = split + ("-flip" if flipped else "")
    path, meta = folder / f"{stem}.npy", folder / f"{stem}.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()) == key:
        say(f"codes of the {stem} split: cached in {path}", progress)
        return load_features(path)
    say(f"encoding the {stem} split ({len(dataset)} images)", progress)
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


def open_distinct_splits(cfg, data: str | Path, splits) -> dict:
    """split -> its opened data set; refuses splits that are the same images (a plain image folder has no
    split: every split name opens the whole folder), which would test a probe or a metric on its own
    training codes."""
    seen: dict[tuple, str] = {}
    sets = {}
    for split in dict.fromkeys(s for s in splits if s):
        ds = sets[split] = cfg.data.open(split, data)
        files = getattr(ds, "files", None)
        if files is None:
            continue
        key = (str(Path(getattr(ds, "root", "")).resolve()), tuple(files))
        if key in seen:
            raise ValueError(f"{data}: the {seen[key]!r} and {split!r} splits are the same {len(files)} images (a "
                             "folder without train/ and test/ subfolders has no split), so the evaluation would "
                             "test on its training set; put the images in train/ and test/ subfolders")
        seen[key] = split
    return sets


def probe_run(
    run: str | Path, data: str | Path, train_split: str = "train", test_split: str = "test",
    valid_split: str | None = None, device: str | torch.device = "cpu", hflip: bool = False,
    progress: bool = True, out: str | Path | None = None, **probe_kwargs,
) -> ProbeResult:
    """Encode the splits with the run's EMA encoder, probe, and write RUN/eval/probe.json (and ``out``, if
    given)."""
    model, cfg = load_diti_run(run, device=device)
    sets = open_distinct_splits(cfg, data, [train_split, test_split, valid_split])
    feats = {s: run_features(model, cfg, run, data, s, device, progress=progress, dataset=ds)
             for s, ds in sets.items()}
    flipped = run_features(model, cfg, run, data, train_split, device, flipped=True, progress=progress,
                           dataset=sets[train_split])[0] if hflip else None
    result = probe_features(feats[train_split], feats[test_split], feats.get(valid_split) if valid_split else None,
                            train_flipped=flipped, progress=progress, device=device, **probe_kwargs)
    result.write(eval_dir(run))
    if out is not None:
        write_json(result.to_dict(), out)
    return result


def probe_saved(
    features: str | Path, test_features: str | Path, out: str | Path, valid_features: str | Path | None = None,
    **probe_kwargs,
) -> ProbeResult:
    """probe_features on saved codes (``diti encode`` files), from any model; writes the result to ``out``."""
    valid = load_features(valid_features) if valid_features else None
    result = probe_features(load_features(features), load_features(test_features), valid, **probe_kwargs)
    write_json(result.to_dict(), out)
    return result


def disentangle_features(
    train: tuple[np.ndarray, Attributes], test: tuple[np.ndarray, Attributes], partition,
    protocol="reference", reference_partition=None, max_groups: int = 5, seed: int = 0,
    progress: bool = True, n_jobs: int | None = None, with_dci: bool = True, **probe_kwargs,
) -> dict:
    """DCI, MIG, FactorVAE, their chunk- and stage-level versions, and the partition-attribute alignment: the
    content of disentangle.json (``DisentangleResult.from_dict`` reads it typed).

    ``with_dci=False`` computes MIG and FactorVAE only (DCI's classifiers dominate the cost); the DCI, chunk
    level and alignment entries are then None.

    ``protocol``: the sample counts, a name in ``disentanglement.PROTOCOLS`` ("reference" is
    disentanglement_lib's) or a ``Protocol``.
    DCI's classifiers are fitted on training codes and scored on test codes; MIG and FactorVAE use the
    training codes (the larger pool, as disentanglement_lib draws all three from one data set).
    Chunk level: the DCI importance summed over each chunk's dims (``chunk_groups``; PDAE with
    ``reference_partition`` on that run's chunks) and over each stage (``dim_groups``: partition stages, chunk
    groups for a one-stage partition), with DCI D and C computed over those groups. Alignment: each factor's
    share of importance per stage group and per chunk, and the probe accuracy from each stage group's dims.
    """
    from ..folders.results import Alignment, ChunkLevel, DCIScores, FactorVAEScores, MIGScores
    from ..partition import Partition
    from .disentanglement import (
        Protocol,
        alignment,
        chunk_pca,
        dci,
        factor_vae_score,
        get_protocol,
        grouped_dci,
        mig,
        subsample_rows,
    )

    proto = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    (z_tr, a_tr), (z_te, a_te) = train, test
    if a_tr is None or a_te is None:
        raise ValueError("disentanglement metrics need the known factors of the train and test images")
    if z_tr.shape[1] != partition.latent_dim:
        raise ValueError(f"the codes have {z_tr.shape[1]} dims but the partition has d = {partition.latent_dim}")
    reduced = None
    if proto.chunk_reduce == "pca":
        # one dim per chunk (PDAE: per chunk of the reference partition); the metrics below then see a code of k
        # dims in k one-dim chunks, so per-dim and chunk-level values coincide
        groups = chunk_groups(partition, reference_partition)
        z_tr, z_te, explained = chunk_pca(z_tr, z_te, [g.dim_range for g in groups])
        reduced = {"method": "pca", "chunks": [g.label for g in groups], "explained_variance_ratio": explained}
        partition, reference_partition = Partition(len(groups), len(groups), partition.timesteps), None
    elif proto.chunk_reduce is not None:
        raise ValueError(f"unknown chunk reduction {proto.chunk_reduce!r}; known: pca")
    categorical = [i for i in range(len(a_tr.names)) if a_tr.is_categorical(i)]
    if not categorical:
        raise ValueError("disentanglement metrics need categorical factors; this attribute table has none")
    names = [a_tr.names[i] for i in categorical]
    f_tr, f_te = np.asarray(a_tr.values)[:, categorical], np.asarray(a_te.values)[:, categorical]
    rows = subsample_rows(len(z_tr), proto.mig_max_rows, seed)
    say(f"MIG on {len(rows)} codes of {z_tr.shape[1]} dims, {len(names)} factors", progress)
    mig_result = mig(z_tr[rows], f_tr[rows])
    say(f"FactorVAE score ({proto.factor_vae_train_votes} training and {proto.factor_vae_eval_votes} evaluation "
        "votes)", progress)
    fv = factor_vae_score(z_tr, f_tr, seed=seed, batch_size=proto.factor_vae_batch,
                          num_train_votes=proto.factor_vae_train_votes, num_eval_votes=proto.factor_vae_eval_votes,
                          num_variance_rows=proto.factor_vae_variance_rows)
    mig_scores = MIGScores.from_dict(mig_result.to_dict())
    fv_scores = FactorVAEScores.from_dict(fv.to_dict())
    used = {**proto.to_dict(), "mig_rows": int(len(rows)), "mig_split": "train", "factor_vae_split": "train",
            "seed": seed, **({"chunk_reduction": reduced} if reduced else {})}
    if not with_dci:
        return DisentangleResult({**used, "dci": "not computed"}, names, mig_scores, fv_scores, None, None, None,
                                 None, None).to_dict()
    say(f"DCI: one gradient-boosted classifier per factor ({len(names)}) on "
        f"{min(len(z_tr), proto.dci_max_train or len(z_tr))} codes", progress)
    d = dci(z_tr, f_tr, z_te, f_te, seed=seed, progress=progress, max_train=proto.dci_max_train,
            max_test=proto.dci_max_test, n_jobs=n_jobs)

    layout = reference_partition if reference_partition is not None else partition
    stages = [g for g in dim_groups(layout, max_groups) if g.dim_range[1] > g.dim_range[0]]
    chunks = chunk_groups(partition, reference_partition)
    stage_ranges, chunk_ranges = [g.dim_range for g in stages], [g.dim_range for g in chunks]
    group_probe = np.zeros((len(stages), len(names)))
    say(f"probes of each dim group ({len(stages)} groups x {len(names)} factors) for the alignment", progress)
    for g, (lo, hi) in enumerate(stage_ranges):
        res = linear_probe((z_tr[:, lo:hi], f_tr), (z_te[:, lo:hi], f_te), "multiclass", names=names, seed=seed,
                           **probe_kwargs)
        group_probe[g] = [res.per_attribute[n]["accuracy"] for n in names]
    chunk_level = grouped_dci(d.importance, chunk_ranges)
    stage_level = grouped_dci(d.importance, stage_ranges)
    return DisentangleResult(
        protocol={**used, "dci_train_rows": d.num_train, "dci_test_rows": d.num_test,
                  "gbt_seeding": f"GradientBoostingClassifier(random_state={seed}) for every factor"},
        factors=names, mig=mig_scores, factor_vae=fv_scores, num_train=d.num_train,
        dci=DCIScores.from_dict({k: v for k, v in d.to_dict().items() if k != "importance"}),
        importance=d.importance.tolist(),
        chunk_level=ChunkLevel(
            source=("chunks of the reference partition" if reference_partition is not None and layout.k > 1
                    else "the partition's chunks" if layout.k > 1 else "equal slices of z (k = 1)"),
            chunk_labels=[g.label for g in chunks], chunk_dim_ranges=[list(r) for r in chunk_ranges],
            chunk_importance=chunk_level["importance"], disentanglement=chunk_level["disentanglement"],
            completeness=chunk_level["completeness"], stage_labels=[g.label for g in stages],
            stage_dim_ranges=[list(r) for r in stage_ranges], stage_importance=stage_level["importance"],
            stage_disentanglement=stage_level["disentanglement"], stage_completeness=stage_level["completeness"],
        ),
        alignment=Alignment(
            group_labels=[g.label for g in stages], group_dim_ranges=[list(r) for r in stage_ranges],
            group_importance_share=alignment(d.importance, stage_ranges).tolist(),
            group_probe_accuracy=group_probe.tolist(), chunk_labels=[g.label for g in chunks],
            chunk_dim_ranges=[list(r) for r in chunk_ranges],
            chunk_importance_share=alignment(d.importance, chunk_ranges).tolist(),
        ),
    ).to_dict()


def plot_alignment(result: DisentangleResult, path: Path, title: str) -> Path:
    """Two heatmaps: importance share and probe accuracy per dim group (rows) and factor (columns)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    al = result.alignment
    panels = [("share of DCI importance", al.group_importance_share), ("probe accuracy", al.group_probe_accuracy)]
    fig = Figure(figsize=(4 + 1.1 * len(result.factors), 1.2 + 0.9 * len(al.group_labels) * 2))
    for p, (name, matrix) in enumerate(panels):
        ax = fig.add_subplot(2, 1, p + 1)
        m = np.asarray(matrix, dtype=float)
        ax.imshow(m, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
        ax.set_yticks(range(len(al.group_labels)), al.group_labels, fontsize=7)
        ax.set_xticks(range(len(result.factors)), result.factors if p else [], rotation=30, ha="right",
                      fontsize=8)
        ax.set_title(f"{title}: {name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def partition_of(source: str | Path, latent_dim: int | None = None):
    """The partition recorded by a run folder (its config.yaml) or a YAML config file."""
    from ..config import DiTiConfig, build_config

    source = Path(source)
    config = source / CONFIG if source.is_dir() else source
    if not config.is_file():
        raise FileNotFoundError(f"no config found at {config} (give a run folder or a YAML config)")
    cfg = build_config(DiTiConfig, None, config, [])
    part = cfg.partition.build(cfg.diffusion.timesteps)
    if latent_dim is not None and part.latent_dim != latent_dim:
        raise ValueError(f"{source} has a partition of d = {part.latent_dim}, the codes have {latent_dim} dims")
    return part


def write_disentangle(result: dict, out: Path, title: str) -> DisentangleResult:
    """disentangle.json and alignment.png in ``out`` for a ``disentangle_features`` result; returns it typed."""
    typed = DisentangleResult.from_dict(result)
    typed.write(out)
    plot_alignment(typed, out / DisentangleResult.FIGURE, title)
    return typed


def disentangle_run(
    run: str | Path, data: str | Path, train_split: str = "train", test_split: str = "test",
    device: str | torch.device = "cpu", progress: bool = True, reference: str | Path | None = None,
    out: str | Path | None = None, **kwargs,
) -> DisentangleResult:
    """disentangle_features on the run's codes; writes RUN/eval/disentangle.json and alignment.png (and the same
    two files to the folder ``out``, if given).

    ``reference``: a run (or config) whose partition gives the dim groups of the chunk-level metrics (for a
    PDAE run compared with a DiTi run).
    """
    say(f"loading {run}", progress)
    model, cfg = load_diti_run(run, device=device)
    sets = open_distinct_splits(cfg, data, [train_split, test_split])
    train = run_features(model, cfg, run, data, train_split, device, progress=progress, dataset=sets[train_split])
    test = run_features(model, cfg, run, data, test_split, device, progress=progress, dataset=sets[test_split])
    ref = partition_of(reference, model.partition.latent_dim) if reference is not None else None
    result = disentangle_features(train, test, model.partition, reference_partition=ref, progress=progress, **kwargs)
    say(f"writing {DisentangleResult.FILE} and {DisentangleResult.FIGURE}", progress)
    typed = write_disentangle(result, eval_dir(run), Path(run).name)
    if out is not None:
        write_disentangle(result, Path(out), Path(run).name)
    return typed


def disentangle_saved(
    features: str | Path, test_features: str | Path, out: str | Path, partition: str | Path | None = None,
    reference: str | Path | None = None, progress: bool = True, **kwargs,
) -> DisentangleResult:
    """disentangle_features on saved codes (``diti encode`` files: .npy + attribute table), from any model.

    ``partition``: the run or config whose partition the codes follow (default: one chunk, k = 1, like PDAE);
    ``reference``: as in ``disentangle_run``. Writes OUT/disentangle.json and OUT/alignment.png.
    """
    from ..partition import Partition

    train, test = load_features(features), load_features(test_features)
    if train[0].shape[1] != test[0].shape[1]:
        raise ValueError(f"{features} has {train[0].shape[1]} dims but {test_features} has {test[0].shape[1]}")
    d = train[0].shape[1]
    part = partition_of(partition, d) if partition is not None else Partition(d, 1, 1000)
    ref = partition_of(reference, d) if reference is not None else None
    result = disentangle_features(train, test, part, reference_partition=ref, progress=progress, **kwargs)
    result["features"] = {"train": str(features), "test": str(test_features),
                          "partition": str(partition) if partition is not None else "k = 1 (none given)"}
    say(f"writing {DisentangleResult.FILE} and {DisentangleResult.FIGURE}", progress)
    return write_disentangle(result, Path(out), Path(features).stem)


def format_disentangle(result: DisentangleResult) -> str:
    """The numbers of a disentanglement result as text (what ``diti disentangle`` prints)."""
    dci_, mig_, fv, proto, cl = result.dci, result.mig, result.factor_vae, result.protocol, result.chunk_level
    chunk_c = "n/a (one group)" if cl.completeness is None else f"{cl.completeness:.4f}"
    lines = [
        f"protocol {proto['name']}: GBT fitted on {proto['dci_train_rows']} train codes, scored on "
        f"{proto['dci_test_rows']} test codes; MIG on {proto['mig_rows']} train codes; FactorVAE "
        f"{proto['factor_vae_train_votes']}/{proto['factor_vae_eval_votes']} votes",
        f"DCI disentanglement {dci_.disentanglement:.4f}  completeness {dci_.completeness:.4f}  "
        f"informativeness (test acc) {dci_.informativeness_test:.4f}",
        f"chunk level ({len(cl.chunk_labels)} groups, {cl.source}): disentanglement "
        f"{cl.disentanglement:.4f}  completeness {chunk_c}",
        f"MIG {mig_.mig:.4f}   FactorVAE score {fv.eval_accuracy:.4f} ({fv.num_active_dims} active dims)",
        "",
        "share of each factor's importance held by each dim group (rows) / probe accuracy from the group alone:",
    ]
    al = result.alignment
    width = max(len(label) for label in al.group_labels)
    lines.append(" " * width + "  " + "  ".join(f"{n[:12]:>12}" for n in result.factors))
    for label, share, acc in zip(al.group_labels, al.group_importance_share, al.group_probe_accuracy,
                                 strict=True):
        cells = "  ".join(f"{s:>5.2f} / {a:.2f}" for s, a in zip(share, acc, strict=True))
        lines.append(f"{label:<{width}}  {cells}")
    return "\n".join(lines)


def factor_classifier(path: str | Path, train_set, test_set, epochs: int = 3, seed: int = 0,
                      device: str | torch.device = "cpu"):
    """The factor classifier saved at ``path``, or a new one trained on ``train_set`` and saved there."""
    from .fidelity import load_factor_classifier, save_factor_classifier, train_factor_classifier

    path = Path(path)
    if path.is_file():
        clf, info = load_factor_classifier(path)
        return clf.to(device), info
    clf, info = train_factor_classifier(train_set, epochs=epochs, seed=seed, device=device, test=test_set,
                                        progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_factor_classifier(clf, path, extra=info)
    return clf, info


def fidelity_run(
    run: str | Path, data: str | Path, num_pairs: int = 256, num_steps: int = 50, max_groups: int = 4,
    classifier: str | Path | None = None, classifier_epochs: int = 3, seed: int = 0,
    device: str | torch.device = "cpu", clip_x0: bool = False,
):
    """Counterfactual fidelity of a run on data with known factors: writes RUN/eval/fidelity.json (with the
    factor classifier's scores) and fidelity.png. The classifier is read from ``classifier`` (default
    RUN/eval/factor_classifier.safetensors), or trained and saved there."""
    from .fidelity import counterfactual_fidelity, plot_fidelity

    model, cfg = load_diti_run(run, device=device)
    train_set, test_set = cfg.data.open("train", data), cfg.data.open("test", data)
    clf, info = factor_classifier(classifier or eval_dir(run) / FACTOR_CLASSIFIER, train_set,
                                  test_set, classifier_epochs, seed, device)
    result = counterfactual_fidelity(model, clf, test_set, num_pairs=num_pairs, num_steps=num_steps, seed=seed,
                                     max_groups=max_groups, clip_x0=clip_x0)
    result.classifier = info
    out = eval_dir(run)
    result.write(out)
    plot_fidelity(result, out / result.FIGURE, title=Path(run).name)
    return result


def attribute_loss_run(
    dm: str | Path, data: str | Path, out: str | Path, split: str = "train", max_pairs: int = 64,
    num_noise: int = 2, threshold: float = 0.25, seed: int = 0, device: str | torch.device = "cpu",
):
    """The frozen DM's attribute loss against t (``attribute_loss``) on data with known factors; writes
    OUT/attribute_loss.json and attribute_loss.png. ``dm``: a DM folder, or a ``diti train`` run (its DM and
    schedule are used)."""
    from ..config import DiffusionConfig, DiTiConfig
    from ..data import open_dataset
    from ..folders import is_run, read_run_config
    from ..models.dm import dm_resolution, load_dm
    from .attribute_loss import attribute_loss
    from .figures import plot_attribute_loss

    dm, diffusion = Path(dm), DiffusionConfig()
    if is_run(dm) and (dm / CONFIG).is_file() and not (dm / DM).is_dir():
        run_cfg = read_run_config(dm, DiTiConfig)
        dm, diffusion = Path(run_cfg.dm), run_cfg.diffusion
    schedule = diffusion.build()
    unet = load_dm(dm, schedule).to(device)
    dataset = open_dataset(data, split, dm_resolution(unet))
    result = attribute_loss(unet, schedule, dataset, max_pairs=max_pairs, num_noise=num_noise, threshold=threshold,
                            seed=seed, device=device, progress=True)
    result.write(out)
    plot_attribute_loss(result.to_dict(), Path(out) / result.FIGURE)
    return result

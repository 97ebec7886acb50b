"""Shareable models: the self-contained folder ``diti export`` writes and ``diti.load`` opens.

The folder is the contract (the layout of a diffusers pipeline folder); nothing in it points outside it:

    DIR/model_index.json                   {"_class_name": "DiTiPipeline", "export_format": 1, the components,
                                            the checkpoint and weights it holds, where it came from}
    DIR/config.yaml                        the run's resolved config (dm and data paths cleared: see below)
    DIR/dm/                                the frozen DM, a diffusers pipeline folder (model_index.json, unet/,
                                            scheduler/), loadable by diffusers itself
    DIR/encoder/model.safetensors          the encoder E (EMA weights unless exported with --raw)
    DIR/shift_decoder/model.safetensors    the trainable part of the shift decoder G (without the frozen DM)
    DIR/eval/                              the run's measured figures, when it has them (probe.json, ...)
    DIR/README.md                          the model card: what it is, the partition table, measured figures

The model is rebuilt from config.yaml, never from code defaults, and every tensor of the two safetensors
files must have the shape the config implies (a mismatch names the tensor). The folder is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import diffusers
import torch

from .. import __version__
from ..config.loader import ConfigError, dump_yaml, from_dict, read_yaml, to_dict
from ..config.schema import DiTiConfig
from ..models.diti import DiTiModel
from ..models.dm import load_dm, save_dm
from ..training.checkpoint import load_tensors, save_tensors

CLASS_NAME = "DiTiPipeline"
EXPORT_FORMAT = 1
INDEX = "model_index.json"
WEIGHTS = "model.safetensors"
# eval/ files copied into an export when the run has them
EVAL_FILES = ("probe.json", "disentangle.json", "fidelity.json", "alignment.png", "fidelity.png")


def is_export(path: str | Path) -> bool:
    """Whether ``path`` holds a folder written by ``write_export`` (a model_index.json naming DiTiPipeline)."""
    index = Path(path) / INDEX
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("_class_name") == CLASS_NAME
    except (ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------------------------------
# Writing
def write_export(pipe, out: str | Path) -> Path:
    """Write ``pipe`` (a DiTiPipeline) as a self-contained folder at ``out`` (which must not hold anything)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    tmp = out.with_name(f".{out.name}.tmp-export")
    if tmp.exists():
        shutil.rmtree(tmp)  # a previous export that was interrupted
    tmp.mkdir(parents=True)
    try:
        model: DiTiModel = pipe.model
        # 1. the components
        save_dm(model.dm, tmp / "dm", model.schedule)
        meta = {"format": "diti-export", "diti_version": __version__, "checkpoint": pipe.checkpoint or "",
                "weights": pipe.weights}
        (tmp / "encoder").mkdir()
        save_tensors(tmp / "encoder" / WEIGHTS, model.encoder.state_dict(), {**meta, "component": "encoder"})
        (tmp / "shift_decoder").mkdir()
        save_tensors(tmp / "shift_decoder" / WEIGHTS, model.decoder.trainable_state_dict(),
                     {**meta, "component": "shift_decoder"})
        # 2. the resolved config, with nothing that points outside the folder
        cfg = copy.deepcopy(pipe.config)
        source = {"run": str(pipe.source.resolve()) if pipe.source else None, "dm": cfg.dm, "data": cfg.data.path}
        cfg.dm, cfg.data.path, cfg.data.attributes = None, None, None
        cfg.data.format = pipe.data_format  # keeps the input crop rule (CelebA) once the data is gone
        (tmp / "config.yaml").write_text(dump_yaml(to_dict(cfg)))
        # 3. the measured figures and the saved ProbMask directions of these weights
        copied = _copy_eval(pipe, tmp / "eval")
        index = {
            "_class_name": CLASS_NAME,
            "_diti_version": __version__,
            "export_format": EXPORT_FORMAT,
            "kind": pipe.kind,
            "config": "config.yaml",
            "dm": ["diffusers", "DDPMPipeline"],
            "encoder": ["diti", "Encoder"],
            "shift_decoder": ["diti", "ShiftDecoder"],
            "checkpoint": pipe.checkpoint,
            "weights": pipe.weights,
            "eval": copied,
            "source": source,
            "versions": {"diti": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=2))
        (tmp / "README.md").write_text(model_card(pipe, index, out.name))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _copy_eval(pipe, dest: Path) -> list[str]:
    src = pipe.source / "eval" if pipe.source is not None else None
    if src is None or not src.is_dir():
        return []
    names = [n for n in EVAL_FILES if (src / n).is_file()]
    for path in sorted(src.glob("manipulate-*.json")):
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(saved, dict) and pipe.checkpoint and saved.get("checkpoint") == pipe.checkpoint:
            names.append(path.name)  # ProbMask directions fitted on these very weights
    if names:
        dest.mkdir()
        for n in names:
            shutil.copy2(src / n, dest / n)
    return names


# ----------------------------------------------------------------------------------------------------
# Reading
def read_export(path: str | Path, device: str | torch.device = "cpu", dm: str | Path | None = None):
    """(DiTiModel in eval mode, DiTiConfig, the model_index dict) of an exported folder."""
    path = Path(path)
    try:
        index = json.loads((path / INDEX).read_text())
    except ValueError as err:
        raise ValueError(f"{path / INDEX} is not valid JSON: {err}") from None
    if index.get("export_format") != EXPORT_FORMAT:
        raise ValueError(
            f"{path} was exported by diti {index.get('_diti_version', '?')} in export format "
            f"{index.get('export_format')}; this diti ({__version__}) reads format {EXPORT_FORMAT}"
        )
    cfg_file = path / index.get("config", "config.yaml")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path} has no {cfg_file.name} (the resolved config the model is rebuilt from)")
    cfg = from_dict(DiTiConfig, read_yaml(cfg_file))
    try:
        cfg.validate()
    except ConfigError as err:
        raise ValueError(f"{cfg_file}: {err}") from None
    schedule = cfg.diffusion.build()
    dm_dir = Path(dm) if dm is not None else path / "dm"
    cfg.dm = str(dm_dir.resolve())
    model = DiTiModel.from_config(cfg, load_dm(dm_dir, schedule))
    state = {}
    for component, prefix, module in (("encoder", "encoder.", model.encoder), ("shift_decoder", "decoder.", None)):
        tensors = load_tensors(path / component / WEIGHTS)
        expected = module.state_dict() if module is not None else model.decoder.trainable_state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{path / component / WEIGHTS} does not fit the model that config.yaml describes: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )
        state.update({prefix + k: v for k, v in tensors.items()})
    model.load_trainable_state_dict(state)
    return model.to(device).eval(), cfg, index


# ----------------------------------------------------------------------------------------------------
# The model card
def model_card(pipe, index: dict, name: str) -> str:
    """README.md of an export folder called ``name``: what the model is, how to load it, the partition, the
    measured figures."""
    cfg, part = pipe.config, pipe.partition
    layout = ("balanced" if part.stages is None else
              f"stages {', '.join(map(str, part.stages))} with {', '.join(map(str, part.dims_per_stage))} dims")
    what = ("PDAE: k = 1, every dim of z is used at every time-step" if part.k == 1 else
            f"DiTi: z split into k = {part.k} chunks tied to time-step ranges ({layout}), mode {cfg.partition.mode}")
    train = cfg.train
    trained = (f"{pipe.step} steps ({pipe.step * train.batch_size} images)" if pipe.step is not None
               else "an unknown number of steps")
    source = index.get("source") or {}
    lines = [
        f"# {pipe.kind} model `{name}`",
        "",
        f"A {pipe.kind} representation model exported by diti {__version__} from the run `{pipe.name}`: an "
        f"encoder E mapping a "
        f"{pipe.resolution} px image to a code z of d = {part.latent_dim} dims, and a shift decoder G on a frozen "
        f"DDPM ({what}). {pipe.weights.upper()} weights after {trained} of batch {train.batch_size} (lr "
        f"{train.lr:g}, EMA {train.ema_decay:g}, seed {train.seed}; the config asks for {train.steps} steps).",
        "",
        "## Use",
        "",
        "```python",
        "import diti",
        f'model = diti.load("{name}", device="cpu")       # this folder; nothing is downloaded',
        "z = model.encode(images)                        # (B, d): PIL images, uint8 arrays or tensors in [-1, 1]",
        "model.counterfactual(a, b, chunks=[0], alpha=1.0)  # a with b's chunk 0: PIL images",
        "```",
        "",
        f"Or in a browser: `diti explore {name} --data DIR`.",
        "",
        "## Partition of z",
        "",
        "| chunk | stage | t-range | dims | n |",
        "|---|---|---|---|---|",
    ]
    for row in part.describe():
        dims = f"{row['dim_start']}-{row['dim_end'] - 1}" if row["dims"] else "-"
        lines.append(f"| {row['chunk']} | {row['stage']} | {row['t_first']}-{row['t_last']} | {dims} | {row['dims']} |")
    lines += ["", f"d = {part.latent_dim}, k = {part.k}, T = {part.timesteps}, {layout}.", "", "## Measured", ""]
    measured = pipe.metrics
    sections = [s for s in (probe_markdown(measured.get("probe")), disentangle_markdown(measured.get("disentangle")))
                if s]
    if sections:
        for s in sections:
            lines += [*s, ""]
        lines.append(f"The source files are in `eval/` ({', '.join(index.get('eval') or [])}).")
    else:
        lines.append("The run had no evaluation results when it was exported (`diti probe RUN --data DIR` and "
                     "`diti disentangle RUN --data DIR` write them; export again afterwards).")
    lines += [
        "",
        "## Files",
        "",
        "- `model_index.json`: the components and where the model came from",
        "- `config.yaml`: the resolved config the model is rebuilt from (dm and data paths cleared)",
        "- `dm/`: the frozen DM, a diffusers pipeline folder",
        "- `encoder/model.safetensors`, `shift_decoder/model.safetensors`: the trained weights",
        "",
        "## Provenance",
        "",
        f"- source run: `{source.get('run')}`",
        f"- frozen DM: `{source.get('dm')}`",
        f"- training data: `{source.get('data')}` ({pipe.data_format or 'format unknown'}, {pipe.resolution} px)",
        f"- versions: diti {__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}; exported "
        f"{index.get('exported')}",
        "",
    ]
    return "\n".join(lines)


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def probe_markdown(probe) -> list[str] | None:
    """The linear-probe table from probe.json (per attribute and mean), or None if it has no usable rows."""
    if not isinstance(probe, dict) or not isinstance(probe.get("per_attribute"), dict):
        return None
    rows = {k: v for k, v in probe["per_attribute"].items() if isinstance(v, dict)}
    if not rows:
        return None
    metrics = list(dict.fromkeys(m for v in rows.values() for m in v))
    out = [f"Linear probes on frozen z (task {probe.get('task', '?')}, test split; `eval/probe.json`):", "",
           "| attribute | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in rows.items():
        out.append(f"| {name} | " + " | ".join(_num(values.get(m)) for m in metrics) + " |")
    mean = probe.get("mean")
    if isinstance(mean, dict):
        out.append("| **mean** | " + " | ".join(_num(mean.get(m)) for m in metrics) + " |")
    return out


def disentangle_markdown(result) -> list[str] | None:
    """DCI / MIG / FactorVAE and the stage-factor alignment from disentangle.json, or None."""
    if not isinstance(result, dict):
        return None
    dci = result.get("dci") if isinstance(result.get("dci"), dict) else {}
    mig = result.get("mig") if isinstance(result.get("mig"), dict) else {}
    fv = result.get("factor_vae") if isinstance(result.get("factor_vae"), dict) else {}
    out = [
        "Disentanglement (`eval/disentangle.json`): "
        f"DCI disentanglement {_num(dci.get('disentanglement'))}, completeness {_num(dci.get('completeness'))}, "
        f"informativeness {_num(dci.get('informativeness_test'))}; MIG {_num(mig.get('mig'))}; FactorVAE score "
        f"{_num(fv.get('eval_accuracy'))}."
    ]
    table = alignment_table(result)
    if table:
        header, rows = table
        out += ["", "Share of each factor's DCI importance held by each group of dims:", "",
                "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def alignment_table(result) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of the group x factor importance shares in a disentangle.json, or None."""
    if not isinstance(result, dict) or not isinstance(result.get("alignment"), dict):
        return None
    al, factors = result["alignment"], result.get("factors")
    labels, shares = al.get("group_labels"), al.get("group_importance_share")
    if not (isinstance(factors, list) and isinstance(labels, list) and isinstance(shares, list)):
        return None
    if len(labels) != len(shares) or any(not isinstance(r, list) or len(r) != len(factors) for r in shares):
        return None
    rows = [[str(label), *(_num(v) for v in row)] for label, row in zip(labels, shares, strict=True)]
    return ["dims", *map(str, factors)], rows

"""Shareable models: what ``diti export`` (``DiTiPipeline.save_pretrained``) puts in the folder and the model card.

The folder's layout is the contract of ``diti.folders`` (folders/layout.py); ``diti.folders.write_export``
writes it and ``diti.folders.load_model`` (behind ``diti.load``) opens it. This module chooses the eval/
files an export carries (the results of the model, ``OF = "model"``, with their figures, and the ProbMask directions fitted on
the exported weights) and writes the README.md that describes the model.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch

from .. import __version__
from ..evaluation.markdown import disentangle_markdown, probe_markdown
from ..folders import RESULTS, DisentangleResult, ProbeResult, SavedProbMask
from ..folders import write_export as write_folder
from ..folders.layout import EVAL


def write_export(pipe, out: str | Path) -> Path:
    """Write ``pipe`` (a DiTiPipeline) as a self-contained folder at ``out`` (which must not hold anything)."""
    return write_folder(out, pipe.model, pipe.config, pipe.kind, pipe.checkpoint, pipe.weights, pipe.source,
                        pipe.data_format, exported_eval_files(pipe), lambda index, name: model_card(pipe, index, name))


def exported_eval_files(pipe) -> list[Path]:
    """The eval/ files of ``pipe``'s folder an export carries: the exported results, their figures, and the
    ProbMask directions fitted on these very weights."""
    src = pipe.source / EVAL if pipe.source is not None else None
    if src is None or not src.is_dir():
        return []
    exported = [cls for cls in RESULTS if cls.OF == "model"]
    names = [cls.FILE for cls in exported] + [cls.FIGURE for cls in exported if cls.FIGURE]
    files = [src / n for n in names if (src / n).is_file()]
    for path in sorted(src.glob(SavedProbMask.GLOB)):
        saved = SavedProbMask.read(path)
        if saved is not None and pipe.checkpoint and saved.checkpoint == pipe.checkpoint:
            files.append(path)
    return files


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
    measured = pipe.results
    sections = [s for s in (probe_markdown(measured.get(ProbeResult)),
                            disentangle_markdown(measured.get(DisentangleResult))) if s]
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

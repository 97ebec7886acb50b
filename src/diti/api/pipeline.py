"""DiTiPipeline: one object for a trained DiTi or PDAE model, for notebooks, the command line and the explorer.

It owns its components, as a diffusers pipeline does: the frozen DM, the encoder E and the shift decoder G (EMA
weights by default), the time-step partition of z and the resolved config. It is built from a folder, and the
folder is the contract: a ``diti train`` run folder, or a self-contained folder written by ``save_pretrained``
(``diti export``), see ``diti.api.export``.

    import diti
    model = diti.load("runs/diti")                     # or an exported folder; dm=... overrides the DM folder
    z = model.encode(images)                           # (B, d); PIL images, uint8 arrays or tensors in [-1, 1]
    inv_a, inv_b = model.invert(a), model.invert(b)    # DDIM inversions (z, x_T): pass them to reuse them
    model.counterfactual(a, b, chunks=[0, 1])          # a with b's chunks 0 and 1 -> PIL images
    model.counterfactual(chunks=[0, 1], alpha=0.5, mode="interpolate",
                         inversion_a=inv_a, inversion_b=inv_b)        # decodes only

Every method that decodes takes ``steps`` (DDIM steps; an inversion passed in must have been made with the
same number) and ``clip_x0`` (clip the predicted x_0 to [-1, 1] at every decoding step, as the official
samplers do; off by default, never in the inversion), and returns ``output_type`` "pil" (a list of PIL images), "np" (uint8 (B, R, R, 3)) or "pt"
(float (B, 3, R, R), not clipped). Inputs are described in ``diti.api.images``. Bad input raises ValueError
(or FileNotFoundError for a missing file) with a message that names the problem.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import inference
from ..config.schema import DiTiConfig
from ..data.formats import CELEBA_ALIGNED_SIZE, CELEBA_BOX, detect_format
from ..data.images import Box, open_image
from ..evaluation import counterfactual as cf
from ..evaluation import manipulate as pm
from ..evaluation.features import encode_dataset
from ..folders import RESULTS, Result, SavedProbMask, load_model
from ..folders.files import write_json
from ..folders.layout import CHECKPOINTS, EVAL
from ..inference import DimGroup, Inversion
from ..models.diti import DiTiModel
from ..partition import Partition
from .images import check_output_type, from_model_output, to_model_input

DEFAULT_STEPS = 100


class DiTiPipeline:
    """A trained DiTi / PDAE model with its frozen DM, partition and config (module docstring)."""

    def __init__(
        self,
        model: DiTiModel,
        config: DiTiConfig,
        source: str | Path | None = None,
        checkpoint: str | None = None,
        weights: str = "ema",
        data_format: str | None = None,
    ):
        self.model = model.eval()
        self.config = config
        self.source = Path(source) if source is not None else None
        self.checkpoint = checkpoint  # e.g. "step-00000500": which training step the weights are from
        self.weights = weights  # "ema" or "raw"
        self.data_format = data_format or config.data.format
        self._probmasks: dict[tuple, pm.ProbMaskResult] = {}

    # ------------------------------------------------------------------------------------------------
    # Loading and saving
    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dm: str | Path | None = None, ema: bool = True
    ) -> DiTiPipeline:
        """Open a ``diti train`` run folder (its latest checkpoint) or a folder written by ``save_pretrained``.

        ``dm``: the frozen DM's folder (a diffusers UNet2DModel or pipeline folder, e.g. a downloaded one) when
        it is not where the run says; nothing is downloaded. ``ema``: the EMA weights (default) or the raw ones
        (run folders only; an export holds the weights it was written with).
        """
        loaded = load_model(path, device=device, ema=ema, dm=dm)
        data_format = _detect(loaded.config) if loaded.layout == "run" else None
        return cls(loaded.model, loaded.config, loaded.folder, loaded.checkpoint, loaded.weights, data_format)

    def save_pretrained(self, out: str | Path) -> Path:
        """Write a self-contained folder (``diti.api.export``) that ``from_pretrained`` opens anywhere."""
        from .export import write_export

        return write_export(self, out)

    def to(self, device: str | torch.device) -> DiTiPipeline:
        self.model.to(device)
        return self

    # ------------------------------------------------------------------------------------------------
    # What the model is
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def partition(self) -> Partition:
        return self.model.partition

    @property
    def resolution(self) -> int:
        return self.model.encoder.resolution

    @property
    def channels(self) -> int:
        return int(self.model.dm.config.in_channels)

    @property
    def latent_dim(self) -> int:
        return self.partition.latent_dim

    @property
    def kind(self) -> str:
        """"PDAE" for k = 1 (every dim at every t), else "DiTi"."""
        return "PDAE" if self.partition.k == 1 else "DiTi"

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else "model"

    @property
    def step(self) -> int | None:
        """The training step of the weights, from the checkpoint name (None when unknown)."""
        if self.checkpoint and self.checkpoint.startswith("step-"):
            return int(self.checkpoint.removeprefix("step-"))
        return None

    def describe(self) -> str:
        """One line: kind, partition, resolution, weights."""
        part = self.partition
        layout = "balanced" if part.stages is None else f"stages {list(part.stages)}"
        step = f", step {self.step}" if self.step is not None else ""
        return (f"{self.kind} (d={part.latent_dim}, k={part.k}, {layout}, mode {self.model.mode}), "
                f"{self.resolution} px, {self.weights} weights{step}")

    def __repr__(self) -> str:
        return f"DiTiPipeline({self.name!r}: {self.describe()})"

    @property
    def results(self) -> dict[type[Result], Result]:
        """The measured results the folder holds in eval/ that an export carries (probe, disentangle, fidelity),
        typed (``diti.folders.results``), by class. Files that are missing or unreadable are left out."""
        out = {}
        for cls in RESULTS:
            if cls.OF != "model" or self.source is None:
                continue
            try:
                result = cls.read(self.source / EVAL)
            except ValueError:
                continue
            if result is not None:
                out[cls] = result
        return out

    @property
    def metrics(self) -> dict[str, dict]:
        """The same files as ``results``, as the JSON they hold (keys a later diti may add included), by name
        ("probe", "disentangle", "fidelity"). Files that are missing, unreadable or not a JSON object are left
        out."""
        out = {}
        for cls in RESULTS:
            if cls.OF != "model" or self.source is None:
                continue
            data = _read_json(self.source / EVAL / cls.FILE)
            if isinstance(data, dict):
                out[cls.FILE.removesuffix(".json")] = data
        return out

    def figure(self, name: str) -> Path | None:
        """The path of a figure the folder holds in eval/ (e.g. "alignment.png"), or None."""
        path = self.source / EVAL / name if self.source is not None else None
        return path if path is not None and path.is_file() else None

    # ------------------------------------------------------------------------------------------------
    # Images in and out
    @property
    def crop_boxes(self) -> dict[tuple[int, int], Box]:
        """Boxes cropped from input images of a given size before fitting: CelebA's official crop of the
        178x218 aligned images when the run was trained on CelebA (``celeba`` or ``lmdb`` data), else none."""
        return {CELEBA_ALIGNED_SIZE: CELEBA_BOX} if self.data_format in ("celeba", "lmdb") else {}

    def preprocess(self, images) -> torch.Tensor:
        """The model's input (B, C, R, R) in [-1, 1] on its device (``diti.api.images``)."""
        resize = getattr(self.config.data, "resize", "bicubic")
        return to_model_input(images, self.resolution, self.channels, self.crop_boxes, resize).to(self.device)

    def postprocess(self, x: torch.Tensor, output_type: str = "pil"):
        return from_model_output(x, output_type)

    def dataset(self, data: str | Path, split: str = "test"):
        """One split of a data folder, opened like the run's data (format detected, at the model's resolution)."""
        return self.config.data.open(split, data)

    def images(self, specs: Sequence[int | str | Path], data: str | Path | None = None, split: str = "test"):
        """Images (B, C, R, R) on the model's device, each given as an index into ``data``/``split`` or as the
        path of an image file (fitted like the data set's images)."""
        if isinstance(specs, (int, str, Path)):
            specs = [specs]
        if not len(specs):
            raise ValueError("no images given (an empty list)")
        dataset = None
        out = []
        for spec in specs:
            text = str(spec).strip()
            if isinstance(spec, (int, np.integer)) or text.isdigit():
                if data is None:
                    raise ValueError(f"image {text} is an index: give the data folder it indexes (data=...)")
                dataset = dataset or self.dataset(data, split)
                index = int(text)
                if not 0 <= index < len(dataset):
                    raise ValueError(f"image index {index} is out of range: the {split!r} split has {len(dataset)} images")
                out.append(dataset[index])
            else:
                path = Path(text)
                if not path.is_file():
                    raise FileNotFoundError(f"image file not found: {path} (nor is it a data-set index)")
                out.append(self.preprocess(open_image(path))[0].cpu())
        return torch.stack(out).to(self.device)

    # ------------------------------------------------------------------------------------------------
    # Codes, inversions, decoding
    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """z = E(x_0): (B, d) on the model's device."""
        return self.model.encode(self.preprocess(images))

    def encode_dataset(self, dataset, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """z of every image of a data set (``dataset(...)``), in order: (N, d) float32."""
        return encode_dataset(self.model.encoder, dataset, batch_size=batch_size, device=self.device, progress=progress)

    def invert(self, images, steps: int = DEFAULT_STEPS, progress: bool = False) -> Inversion:
        """The code z and the deterministic DDIM inversion x_T of each image (with eps' and z's per-t mask)."""
        return inference.invert(self.model, self.preprocess(images), steps, progress)

    def decode(
        self, z: torch.Tensor, x_T: torch.Tensor, steps: int = DEFAULT_STEPS, output_type: str = "pil",
        batch_size: int | None = None, progress: bool = False, clip_x0: bool = False,
    ):
        """DDIM decoding of x_T (B, C, R, R) with the code z (B, d)."""
        check_output_type(output_type)
        z, x_T = z.to(self.device), x_T.to(self.device)
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (B, {self.latent_dim}); got shape {tuple(z.shape)}")
        shape = (self.channels, self.resolution, self.resolution)
        if x_T.dim() != 4 or tuple(x_T.shape[1:]) != shape:
            raise ValueError(f"x_T must be (B, {', '.join(map(str, shape))}); got shape {tuple(x_T.shape)}")
        return self.postprocess(inference.decode(self.model, z, x_T, steps, batch_size, progress, clip_x0), output_type)

    def reconstruct(
        self, images=None, steps: int = DEFAULT_STEPS, inversion: Inversion | None = None, output_type: str = "pil",
        progress: bool = False, clip_x0: bool = False,
    ):
        """DDIM reconstruction: invert (unless ``inversion`` is given) and decode with the image's own code."""
        check_output_type(output_type)
        inv = self._inversion(images, inversion, steps, "inversion", progress)
        return self.decode(inv.z, inv.x_T, steps, output_type, progress=progress, clip_x0=clip_x0)

    def _inversion(self, images, inversion: Inversion | None, steps: int, name: str, progress: bool) -> Inversion:
        if inversion is None:
            if images is None:
                raise ValueError(f"give the images or their inversion ({name}=model.invert(images, steps))")
            return self.invert(images, steps, progress)
        if not isinstance(inversion, Inversion):
            raise ValueError(f"{name} must be an Inversion (from model.invert); got {type(inversion).__name__}")
        if inversion.steps != steps:
            raise ValueError(
                f"{name} was made with {inversion.steps} DDIM steps but this call decodes with steps={steps}; "
                f"pass steps={inversion.steps} or invert again"
            )
        if inversion.z.shape[-1] != self.latent_dim:
            raise ValueError(f"{name} holds codes of {inversion.z.shape[-1]} dims; this model has d={self.latent_dim}")
        return Inversion(inversion.z.to(self.device), inversion.x_T.to(self.device), steps)

    # ------------------------------------------------------------------------------------------------
    # Counterfactuals
    def select_dims(
        self, chunks: Sequence[int] | None = None, stages: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Boolean mask (d,) of the dims of the given chunks, stages or explicit dims (exactly one of them)."""
        return inference.select_dims(self.partition, chunks=chunks, stages=stages, dims=dims)

    def selection_group(
        self, chunks: Sequence[int] | None = None, stages: Sequence[int] | None = None,
        dims: Sequence[int] | None = None, label: str | None = None,
    ) -> DimGroup:
        """The contiguous dims of the given chunks, stages or dims as one row of a counterfactual figure."""
        return inference.selection_group(self.partition, chunks, stages, dims, label)

    def groups(self, max_groups: int = 4) -> list[DimGroup]:
        """The standard rows of a counterfactual figure: the stages, or groups of chunks (PDAE: dim slices)."""
        return inference.dim_groups(self.partition, max_groups)

    def counterfactual(
        self,
        a=None,
        b=None,
        *,
        chunks: Sequence[int] | None = None,
        stages: Sequence[int] | None = None,
        dims: Sequence[int] | None = None,
        alpha: float | None = None,
        mode: str = "swap",
        x_T: str = "keep",
        steps: int = DEFAULT_STEPS,
        inversion_a: Inversion | None = None,
        inversion_b: Inversion | None = None,
        output_type: str = "pil",
        progress: bool = False,
        clip_x0: bool = False,
    ):
        """a with the selected dims of z taken from b (``mode="swap"``) or moved toward b by ``alpha``
        (``mode="interpolate"``: (1 - alpha) z_a + alpha z_b on those dims, default alpha 0.5), decoded from
        a's x_T (``x_T="keep"``) or from slerp(x_T(a), x_T(b), alpha) (``x_T="slerp"``).

        Select with exactly one of ``chunks``, ``stages``, ``dims``; a and b are images (one each, or batches of
        pairs) or None when their inversions are given. alpha 0 with x_T kept is the reconstruction of a.
        """
        check_output_type(output_type)
        alpha = inference.edit_alpha(mode, x_T, alpha)
        mask = self.select_dims(chunks, stages, dims)
        if not mask.any():
            raise ValueError("the selection is empty: choose at least one chunk, stage or dim that holds dims")
        inv_a = self._inversion(a, inversion_a, steps, "inversion_a", progress)
        inv_b = self._inversion(b, inversion_b, steps, "inversion_b", progress)
        cells = inference.counterfactuals(inv_a, inv_b, [mask], [alpha], x_T)
        return self.postprocess(cells.decode(self.model, steps, progress=progress, clip_x0=clip_x0)[0, 0], output_type)

    def swap_each_group(
        self, a=None, b=None, *, x_T: str = "keep", steps: int = DEFAULT_STEPS, max_groups: int = 4,
        inversion_a: Inversion | None = None, inversion_b: Inversion | None = None, output_type: str = "pil",
        progress: bool = False, clip_x0: bool = False,
    ) -> list[tuple[DimGroup, object]]:
        """For each group of ``groups(max_groups)`` (stages, chunk groups, or PDAE's dim slices), a with that
        group swapped from b: [(group, images)], all groups decoded as one batch."""
        check_output_type(output_type)
        inference.check_modes("swap", x_T)
        groups = [g for g in self.groups(max_groups) if g.dim_range[1] > g.dim_range[0]]
        inv_a = self._inversion(a, inversion_a, steps, "inversion_a", progress)
        inv_b = self._inversion(b, inversion_b, steps, "inversion_b", progress)
        cells = inference.counterfactuals(inv_a, inv_b, [g.mask(self.latent_dim) for g in groups], [1.0], x_T)
        out = cells.decode(self.model, steps, progress=progress, clip_x0=clip_x0)  # all groups in one batch
        return [(g, self.postprocess(out[i, 0], output_type)) for i, g in enumerate(groups)]

    # ------------------------------------------------------------------------------------------------
    # Attribute manipulation (ProbMask)
    def features(self, data: str | Path, split: str = "train", progress: bool = False):
        """(z (N, d), Attributes or None) of a data split; cached in RUN/eval/features/ for a run folder."""
        if self.source is not None and (self.source / CHECKPOINTS).is_dir():
            from ..evaluation.runs import run_features

            return run_features(self.model, self.config, self.source, data, split, self.device, progress=progress)
        dataset = self.dataset(data, split)
        return self.encode_dataset(dataset, progress=progress), dataset.attributes

    def probmask(
        self, attribute: str, data: str | Path | None = None, split: str = "train", target_class: int | None = None,
        d_prime: int = 16, seed: int = 0, progress: bool = False,
    ) -> pm.ProbMaskResult:
        """The ProbMask direction of a binary attribute (or one class of a categorical one vs the rest).

        Without ``data``: the one ``diti manipulate`` saved for this checkpoint (eval/manipulate-ATTR.json), else
        one fitted on the run's own training data when that folder exists. Fitted results are kept in memory.
        """
        key = (attribute, target_class, d_prime, None if data is None else str(Path(data).resolve()), split, seed)
        if key in self._probmasks:
            return self._probmasks[key]
        result = self._saved_probmask(attribute, target_class, d_prime) if data is None else None
        if result is None:
            if data is None:
                data = self.config.data.path if self.config.data.path and Path(self.config.data.path).exists() else None
            if data is None:
                raise ValueError(
                    f"editing {attribute!r} needs labelled images to fit its ProbMask direction: pass data=DIR (a "
                    f"data set whose attribute table has {attribute!r}) or probmask=...; this model has no data "
                    f"folder of its own and no saved ProbMask for it (eval/manipulate-{attribute}.json, written by "
                    "`diti manipulate` and carried by `diti export`)"
                )
            z, attrs = self.features(data, split, progress)
            if attrs is None or attribute not in attrs.names:
                raise ValueError(f"attribute {attribute!r} not found; the data has "
                                 f"{attrs.names if attrs is not None else 'no attribute table'}")
            labels = np.asarray(attrs.values)[:, attrs.names.index(attribute)]
            result = pm.fit_probmask(z, labels, d_prime=d_prime, target_class=target_class, seed=seed,
                                     progress=progress)
        self._probmasks[key] = result
        return result

    def _saved_probmask(self, attribute: str, target_class: int | None, d_prime: int) -> pm.ProbMaskResult | None:
        saved = SavedProbMask.read(self.source / EVAL / SavedProbMask.file(attribute)) if self.source else None
        target = "label == 1" if target_class is None else f"class {target_class} vs rest"
        if saved is None or saved.checkpoint != self.checkpoint or self.checkpoint is None:
            return None  # a direction fitted on other weights (or of unknown origin) would edit the wrong dims
        if saved.target != target or saved.d_prime != d_prime:
            return None
        result = pm.ProbMaskResult.from_dict(saved.direction)
        return result if len(result.weights) == self.latent_dim else None

    def save_probmask(self, result: pm.ProbMaskResult, path: str | Path, **extra) -> Path:
        """Write a ProbMask result as JSON with the checkpoint it belongs to (what ``probmask`` reads back), plus
        ``extra`` keys (e.g. how the figure beside it was decoded)."""
        return write_json(SavedProbMask(result.to_dict(), self.checkpoint, extra).to_dict(), path)

    def manipulate(
        self,
        images=None,
        attribute: str | None = None,
        strength: float = 1.5,
        *,
        probmask: pm.ProbMaskResult | None = None,
        data: str | Path | None = None,
        split: str = "train",
        target_class: int | None = None,
        d_prime: int = 16,
        steps: int = DEFAULT_STEPS,
        inversion: Inversion | None = None,
        output_type: str = "pil",
        progress: bool = False,
        clip_x0: bool = False,
    ):
        """Move z along the attribute's ProbMask direction by ``strength`` (standard deviations of the code
        along it; negative moves away) and decode from each image's own x_T. The direction is ``probmask`` or
        ``probmask(attribute, data, split, target_class, d_prime)``."""
        check_output_type(output_type)
        if probmask is None:
            if attribute is None:
                raise ValueError("give the attribute to edit (attribute=...) or a fitted ProbMask (probmask=...)")
            probmask = self.probmask(attribute, data, split, target_class, d_prime, progress=progress)
        if len(probmask.weights) != self.latent_dim:
            raise ValueError(f"the ProbMask has {len(probmask.weights)} dims; this model has d={self.latent_dim}")
        inv = self._inversion(images, inversion, steps, "inversion", progress)
        z = pm.edit_codes(inv.z, probmask, [float(strength)])[0]
        return self.decode(z, inv.x_T, steps, output_type, progress=progress, clip_x0=clip_x0)

    # ------------------------------------------------------------------------------------------------
    # Figures (what the command line writes)
    def counterfactual_figure(self, x_a, x_b, path: str | Path, **kwargs) -> Path:
        """``diti.evaluation.counterfactual.counterfactual_figure`` on two batches of images."""
        return cf.counterfactual_figure(self.model, self.preprocess(x_a), self.preprocess(x_b), path, **kwargs)

    def standard_counterfactual_figure(self, dataset, path: str | Path, num_pairs: int = 4, seed: int = 0,
                                       **kwargs) -> Path:
        """The counterfactual figure on ``num_pairs`` seeded random pairs of a data set."""
        return cf.standard_counterfactual_figure(self.model, dataset, path, num_pairs=num_pairs, seed=seed, **kwargs)

    def manipulation_figure(self, images, result: pm.ProbMaskResult, path: str | Path, **kwargs) -> Path:
        return pm.manipulation_figure(self.model, self.preprocess(images), result, path, **kwargs)

    def reconstruction_figure(
        self, images, path: str | Path, steps: int = DEFAULT_STEPS, cell: int = 64, progress: bool = False,
        clip_x0: bool = False,
    ) -> tuple[Path, list[float]]:
        """Real images (top row) and their DDIM reconstructions (bottom row); returns (path, MSE per image)."""
        from ..evaluation.grids import save_image_grid

        x = self.preprocess(images)
        rec = self.reconstruct(x, steps, output_type="pt", progress=progress, clip_x0=clip_x0)
        mse = ((rec - x.cpu()) ** 2).flatten(1).mean(1).tolist()
        labels = [f"{i}: mse {m:.4f}" for i, m in enumerate(mse)]
        title = f"{self.kind} {self.name}: DDIM reconstruction, {steps} steps"
        grid = save_image_grid(path, torch.cat([x.cpu(), rec]), len(x), row_labels=["real", "reconstruction"],
                               col_labels=labels, cell=cell, title=title)
        return grid, mse


def load(
    path: str | Path, device: str | torch.device = "cpu", dm: str | Path | None = None, ema: bool = True
) -> DiTiPipeline:
    """``DiTiPipeline.from_pretrained``: a run folder or an exported folder (``dm`` overrides the DM folder)."""
    return DiTiPipeline.from_pretrained(path, device=device, dm=dm, ema=ema)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _detect(cfg: DiTiConfig) -> str | None:
    """The run's data format: the configured one, else detected from its data folder when that still exists."""
    if cfg.data.format or not cfg.data.path or not Path(cfg.data.path).is_dir():
        return cfg.data.format
    try:
        return detect_format(cfg.data.path)
    except (ValueError, OSError):
        return None




__all__ = ["DEFAULT_STEPS", "DiTiPipeline", "Inversion", "load"]

"""Typed configs for every job. Defaults live here and only here; presets are small overrides.

The DiTi defaults are the official CelebA64 recipe (docs/method.md): d = 512, k = 64, imbalanced stages
50/100/300/500/1000 with dims 10/25/327/100/50, stop_grad, Adam 1e-4, global batch 128, EMA 0.9999.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..diffusion.schedule import NoiseSchedule
from ..partition import Partition
from .loader import ConfigError


@dataclass
class DiffusionConfig:
    """The linear-beta DDPM schedule (must match the frozen DM's)."""

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def build(self) -> NoiseSchedule:
        try:
            return NoiseSchedule(self.timesteps, self.beta_start, self.beta_end)
        except ValueError as err:
            raise ConfigError(f"diffusion: {err}") from None


@dataclass
class PartitionConfig:
    """How z is split into chunks tied to time-step ranges (k = 1 is PDAE)."""

    latent_dim: int = 512
    k: int = 64
    stages: list[int] | None = field(default_factory=lambda: [50, 100, 300, 500, 1000])
    dims_per_stage: list[int] | None = field(default_factory=lambda: [10, 25, 327, 100, 50])
    mode: Literal["base", "stop_grad", "dual"] = "stop_grad"
    # How stages and dims_per_stage are set when a run starts (training/partition_rule.py; docs/method.md):
    # given (as written above), balanced (none), official (the paper's stages and dims scaled to T and d),
    # attribute_loss (dims at the DM's crossings in rule_source, an attribute_loss.json) or removed_loss (dims
    # where a PDAE run removes loss: rule_source is that run's folder, or the JSON `diti partition
    # --from-removed-loss RUN --out FILE` wrote, or auto: `diti train` first trains a PDAE run of rule_source_steps
    # steps on the same data and DM in RUN/rule-source). The resolved stages and dims, and the source's path, are
    # written to RUN/config.yaml; the rules that read no source (given, balanced, official) drop it.
    rule: Literal["given", "balanced", "official", "attribute_loss", "removed_loss"] = "given"
    rule_source: str | None = None
    rule_source_steps: int = 500  # rule_source=auto: steps of the PDAE run the removed-loss rule reads
    floor_dims: int = 1  # attribute_loss / removed_loss: dims every chunk keeps

    @property
    def trains_source(self) -> bool:
        """Whether `diti train` first trains this rule's source (the removed-loss rule with rule_source=auto)."""
        return self.rule == "removed_loss" and self.rule_source == "auto"

    def build(self, timesteps: int) -> Partition:
        if self.rule_source == "auto" and self.rule == "attribute_loss":
            raise ConfigError("partition.rule_source=auto (a PDAE run trained first) is for partition.rule="
                              "removed_loss; the attribute-loss rule reads an attribute_loss.json")
        if self.rule_source_steps < 1:
            raise ConfigError(f"partition.rule_source_steps must be >= 1, got {self.rule_source_steps}")
        try:
            return Partition(self.latent_dim, self.k, timesteps, self.stages, self.dims_per_stage)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass
class ObjectiveConfig:
    """The DiTi loss. The official recipe is uniform t ~ U{0..T-1} and lambda(t) = snr^0.1 / (1 + snr).

    Departures (documented options for small-budget experiments, never the default): ``weighting: uniform``
    (1 for every t) and ``timestep_sampling: stage_balanced | chunk_balanced`` (every partition stage, or
    every chunk, receives the same share of the sampled t; uniform inside it). At small t both c(t) and
    lambda(t) are near 0, so with the official recipe the early chunks receive almost no training signal.

    Faster optimisation with the official objective's expectation (training/timesteps.py):
    ``timestep_sampling: loss_aware | loss_removed`` (importance sampling of t by the running second moment
    of the loss, or of the loss the decoder removes, each sample weighted by 1 / (T p(t)); uniform until
    every t has ``importance_history`` losses, then mixed with ``importance_uniform`` of the uniform
    distribution) and ``draws_per_image: m`` (m stratified (t, eps) draws per image, the encoder run once).

    ``loss_normalization: chunk`` (a departure): each draw's loss is also divided by the running mean of the
    loss in its t's chunk (an exponential mean with ``normalization_decay`` per step), so every chunk's share
    of the objective has a comparable scale however small c(t) and lambda(t) make its loss
    (training/timesteps.py, ``ChunkNormalizedSampler``). It combines with every sampling above.
    """

    weighting: Literal["official", "uniform"] = "official"
    timestep_sampling: Literal["uniform", "stage_balanced", "chunk_balanced", "loss_aware", "loss_removed"] = "uniform"
    draws_per_image: int = 1
    importance_history: int = 10
    importance_uniform: float = 0.1
    loss_normalization: Literal["none", "chunk"] = "none"
    normalization_decay: float = 0.99

    def summary(self) -> str:
        """One line for reports: ``official``, or the options that differ from the official objective."""
        parts = []
        if self.weighting != "official":
            parts.append(f"loss weight {self.weighting} (departure)")
        if self.timestep_sampling in ("stage_balanced", "chunk_balanced"):
            parts.append(f"t {self.timestep_sampling.replace('_', '-')} (departure)")
        elif self.timestep_sampling != "uniform":
            parts.append(f"t by importance ({self.timestep_sampling})")
        if self.draws_per_image > 1:
            parts.append(f"{self.draws_per_image} draws per image")
        if self.loss_normalization != "none":
            parts.append(f"loss normalised per {self.loss_normalization} (decay {self.normalization_decay}, departure)")
        return ", ".join(parts) or "official"


@dataclass
class EncoderConfig:
    """Convolutional encoder: one stride-2 conv per entry of ``channels`` (official CelebA64 design).

    ``init``: ``default`` (PyTorch's init of every layer) or ``official`` (the same, but each attention block's
    output projection starts at zero, as in the official encoder).
    """

    channels: list[int] = field(default_factory=lambda: [64, 128, 128, 128])
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    attn_heads: int = 4
    norm_groups: int = 32
    init: Literal["default", "official"] = "default"


@dataclass
class DecoderConfig:
    """Shift decoder built from the frozen DM; z_embed_dim None = the DM's time-embedding width.

    ``init``: how the trainable mid/up copy starts. ``dm_copy`` (diti's default): from the DM's weights.
    ``official``: as the official ShiftUNet, from a fresh random init in which every residual block's output
    conv and every attention output projection are zero. The output conv is zero in both, so G = 0 at step 0.
    """

    z_embed_dim: int | None = None
    init: Literal["dm_copy", "official"] = "dm_copy"
    # Under train.mixed_precision=bf16, run the frozen DM's forward (eps_theta and the features the trainable
    # copy reads) in float32 all the same; only E and G run in bf16. The loss's target eps - eps_theta is small
    # where the DM is good, and bf16's rounding of eps_theta is of its size: with the frozen forward in bf16
    # the codes learned a subtle factor (close object hues) much more slowly (benchmarks/RESULTS.md).
    frozen_fp32: bool = True


@dataclass
class UNetConfig:
    """A diffusers UNet2DModel for ``diti pretrain``; attention at the levels listed in attention_levels."""

    block_out_channels: list[int] = field(default_factory=lambda: [64, 128, 128])
    layers_per_block: int = 1
    attention_levels: list[int] = field(default_factory=lambda: [1])
    norm_num_groups: int = 32
    attention_head_dim: int = 32
    resnet_time_scale_shift: Literal["default", "scale_shift"] = "scale_shift"
    dropout: float = 0.0


@dataclass
class DataConfig:
    """Where the training images come from. resolution None = the DM's sample size; format None = detected
    from the folder (diti-array, celeba, lfw, lmdb, shapes3d, dsprites, mpi3d, cars3d, image-folder; `diti
    data formats`); attributes: an attribute table that replaces the format's own.

    resize: ``bicubic`` (diti's default) or ``bilinear`` (the official pipeline: crop, then bilinear).
    skip_unreadable: replace an image that cannot be decoded by the next readable one, with a logged warning
    naming the file (off: training stops with an error naming it; ``diti data check`` lists them all first).
    num_workers: DataLoader worker processes; None = 0 on CPU, min(8, CPU cores) when training on CUDA.
    """

    path: str | None = None
    split: str = "train"
    resolution: int | None = None
    format: str | None = None
    attributes: str | None = None
    hflip: bool = False
    resize: Literal["bicubic", "bilinear"] = "bicubic"
    skip_unreadable: bool = False
    num_workers: int | None = None

    def open(self, split: str | None = None, path: str | None = None):
        """The data set of ``split`` (default: the training split) at this config's resolution.

        With another ``path``, the format is detected there rather than taken from this config.
        """
        from ..data import open_dataset

        same = path is None or str(path) == str(self.path)
        return open_dataset(
            self.path if path is None else path, split or self.split, self.resolution,
            attributes=self.attributes if same else None, format=self.format if same else None,
            resize=self.resize, skip_unreadable=self.skip_unreadable,
        )


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. batch_size is the global batch (all processes, all accumulation steps)."""

    steps: int = 300_000
    batch_size: int = 128
    lr: float = 1e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float = 0.9999
    # decay_t = min(ema_decay, (1 + step) / (10 + step)): lets short runs have a useful EMA; a no-op after
    # ~10^5 steps at 0.9999. Set false for the plain EMA of the official code.
    ema_warmup: bool = True
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast where the device computes in bf16 natively, else float32 (training/precision.py);
    # resolved when a run starts, so that RUN/config.yaml names the precision that ran
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    grad_accum_steps: int = 1
    compile: bool = False  # torch.compile the training module (checkpoints stay uncompiled weights)
    channels_last: bool = False  # NHWC memory format for the models and images (slower on an H200: docs/gpu.md)
    progress: bool = True
    # training/tracking.py: the log in TensorBoard (RUN/logs/) or wandb as well as RUN/metrics.jsonl, and
    # every image_every steps a grid of reconstructions (DiTi) or samples (DDPM); 0: no images
    log_with: Literal["none", "tensorboard", "wandb"] = "none"
    image_every: int = 1000

    def validate(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "log_every": self.log_every,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "grad_accum_steps": self.grad_accum_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.image_every < 0:
            raise ConfigError(f"train.image_every must be >= 0 (0: no images), got {self.image_every}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"train.adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.device == "cpu" and self.mixed_precision == "fp16":
            raise ConfigError("train.mixed_precision=fp16 needs a GPU; use bf16 on CPU")
        if self.batch_size % self.grad_accum_steps:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by grad_accum_steps={self.grad_accum_steps}"
            )


@dataclass
class DiTiConfig:
    """``diti train``: an encoder and shift decoder on a frozen DM."""

    dm: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.diffusion.build()
        self.partition.build(self.diffusion.timesteps)
        self.train.validate()
        if any(c < 1 for c in self.encoder.channels) or not self.encoder.channels:
            raise ConfigError(f"encoder.channels must be positive widths, got {self.encoder.channels}")
        obj = self.objective
        if obj.draws_per_image < 1:
            raise ConfigError(f"objective.draws_per_image must be >= 1, got {obj.draws_per_image}")
        if obj.importance_history < 1 or not 0 < obj.importance_uniform <= 1:
            raise ConfigError(f"objective.importance_history must be >= 1 and importance_uniform in (0, 1], got "
                              f"{obj.importance_history} and {obj.importance_uniform}")
        if not 0 < obj.normalization_decay < 1:
            raise ConfigError(f"objective.normalization_decay must be in (0, 1), got {obj.normalization_decay}")


@dataclass
class PretrainConfig:
    """``diti pretrain``: a DDPM (UNet2DModel) to freeze later."""

    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-4, ema_decay=0.999))

    def validate(self) -> None:
        self.diffusion.build()
        self.train.validate()
        levels = len(self.unet.block_out_channels)
        bad = [i for i in self.unet.attention_levels if not 0 <= i < levels]
        if bad:
            raise ConfigError(f"unet.attention_levels {bad} out of range for {levels} levels")
        if any(c % self.unet.norm_num_groups for c in self.unet.block_out_channels):
            raise ConfigError(
                f"unet.block_out_channels {self.unet.block_out_channels} must be multiples of "
                f"norm_num_groups={self.unet.norm_num_groups}"
            )

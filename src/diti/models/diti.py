"""DiTiModel: frozen DM + encoder E + shift decoder G + time-step partition, and its training loss.

``forward(x0, t, noise)`` is the training objective (so a DDP wrapper sees it); ``encode`` gives z;
``eps_fn(z)`` gives the shifted noise predictor used by DDIM inversion and decoding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import UNet2DModel
from torch import nn

from ..config.schema import DiTiConfig
from ..diffusion.losses import LossOutput, ddpm_per_sample, shift_per_sample, timestep_weights
from ..diffusion.schedule import NoiseSchedule, extract
from ..partition import Partition
from .dm import dm_resolution
from .encoder import Encoder
from .shift_decoder import ShiftDecoder


class DiTiModel(nn.Module):
    def __init__(
        self,
        dm: UNet2DModel,
        encoder: Encoder,
        partition: Partition,
        schedule: NoiseSchedule,
        mode: str = "stop_grad",
        z_embed_dim: int | None = None,
        weighting: str = "official",
        decoder_init: str = "dm_copy",
        frozen_fp32: bool = True,
    ):
        super().__init__()
        if mode not in ("base", "stop_grad", "dual"):
            raise ValueError(f"unknown partition mode {mode!r}; expected base, stop_grad or dual")
        if partition.timesteps != schedule.timesteps:
            raise ValueError(f"partition has T={partition.timesteps} but the schedule has T={schedule.timesteps}")
        if encoder.latent_dim != partition.latent_dim:
            raise ValueError(f"encoder gives d={encoder.latent_dim} but the partition has d={partition.latent_dim}")
        self.encoder = encoder
        self.decoder = ShiftDecoder(dm, partition.latent_dim, z_embed_dim, decoder_init, frozen_fp32)
        self.schedule = schedule
        self.partition = partition
        self.mode = mode
        self.register_buffer("loss_weight", timestep_weights(schedule, weighting), persistent=False)
        # the partition's (T, d) masks as buffers: they follow the module's device, and forward builds nothing
        for name, mask in zip(("mask_cum", "mask_prev", "mask_cur"), partition.masks("cpu"), strict=True):
            self.register_buffer(name, mask.clone(), persistent=False)

    @classmethod
    def from_config(cls, cfg: DiTiConfig, dm: UNet2DModel, schedule: NoiseSchedule | None = None) -> DiTiModel:
        """The one factory from a (validated) config and a loaded DM to the model; ``schedule``: the config's
        noise schedule when the caller has built it already (None: built here)."""
        schedule = cfg.diffusion.build() if schedule is None else schedule
        resolution = cfg.data.resolution or dm_resolution(dm)
        if resolution != dm_resolution(dm):
            raise ValueError(f"data.resolution={resolution} but the DM was trained at {dm_resolution(dm)}")
        encoder = Encoder(
            resolution=resolution,
            latent_dim=cfg.partition.latent_dim,
            in_channels=dm.config.in_channels,
            channels=cfg.encoder.channels,
            attn_resolutions=cfg.encoder.attn_resolutions,
            norm_groups=cfg.encoder.norm_groups,
            attn_heads=cfg.encoder.attn_heads,
            init=cfg.encoder.init,
        )
        partition = cfg.partition.build(cfg.diffusion.timesteps)
        return cls(dm, encoder, partition, schedule, cfg.partition.mode, cfg.decoder.z_embed_dim, cfg.objective.weighting,
                   cfg.decoder.init, cfg.decoder.frozen_fp32)

    # ------------------------------------------------------------------------------------------------
    @property
    def dm(self) -> UNet2DModel:
        return self.decoder.dm

    @property
    def masks(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cum, prev, cur), each (T, d), on the module's device (Partition.masks)."""
        return self.mask_cum, self.mask_prev, self.mask_cur

    def train(self, mode: bool = True) -> DiTiModel:
        super().train(mode)
        self.decoder.train(mode)  # keeps the frozen DM in eval mode
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.decoder.trainable_parameters()]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder and decoder weights, without the frozen DM (which the run's config points to)."""
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        state.update({f"decoder.{k}": v for k, v in self.decoder.trainable_state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load encoder and decoder weights; a tensor whose shape disagrees with the model is named."""
        expected = self.trainable_state_dict()
        for name, tensor in state.items():
            if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(
                    f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, but the model built from the "
                    f"config expects {tuple(expected[name].shape)}"
                )
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("decoder.dm.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    # ------------------------------------------------------------------------------------------------
    def encode(self, x0: torch.Tensor) -> torch.Tensor:
        """z = E(x_0): (B, C, R, R) in [-1, 1] -> (B, d)."""
        return self.encoder(x0)

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> LossOutput:
        """The DiTi loss for a batch x0 (B, C, R, R) at time-steps t (B * m,) with noise eps (B * m, C, R, R).

        m >= 1 draws per image: rows i * m .. i * m + m - 1 of t and noise belong to image i, which is encoded
        once. ``baseline`` is the same weighted loss with G = 0 (the frozen DM alone), per draw.
        """
        m, rest = divmod(len(t), len(x0))
        if rest or m < 1 or len(noise) != len(t):
            raise ValueError(f"t ({len(t)}) and noise ({len(noise)}) must hold m draws for each of the "
                             f"{len(x0)} images")
        z = self.encoder(x0)
        if m > 1:
            x0, z = x0.repeat_interleave(m, 0), z.repeat_interleave(m, 0)
        x_t = self.schedule.q_sample(x0, t, noise)
        frozen = self.decoder.frozen_features(x_t, t)  # no grad: the DM is frozen
        modes = ("base", "stop_grad") if self.mode == "dual" else (self.mode,)
        per_sample = sum(
            shift_per_sample(self.schedule, frozen.eps, self.decoder.shift(frozen, self.partition.apply(z, t, mode, self.masks)),
                             noise, t, self.loss_weight)
            for mode in modes
        )
        with torch.no_grad():  # lambda(t) ||eps - eps_theta||^2: what the loss is with G = 0
            baseline = self.loss_weight[t] * ddpm_per_sample(frozen.eps, noise) * len(modes)
        return LossOutput(per_sample.mean(), per_sample, t, baseline)

    def eps_fn(self, z: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The noise predictor DDIM uses with code z (B, d): eps' = eps_theta - sqrt(1 - abar_t) G(x_t, t, z~).

        z~ keeps the chunks of time-steps <= t (docs/method.md, "DDIM inversion and decoding"). z None: the plain DM.
        """

        def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if z is None:
                return self.dm(x_t, t).sample
            frozen = self.decoder.frozen_features(x_t, t)
            shift = self.decoder.shift(frozen, self.partition.apply(z, t, "base", self.masks))
            return frozen.eps - extract(self.schedule.sqrt_one_minus_abar, t, x_t.shape) * shift

        return eps

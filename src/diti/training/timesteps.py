"""Time-step samplers: where each training draw's t comes from, and with which weight.

One interface serves every run (``TimestepSampler``): the loader makes the random draws a sampler asks for in
its workers (``loader_draws``: the step's t, eps and flips, and for a stratified sampler its uniforms), the
training loop turns each micro-batch into (t, weights) on the device (``timesteps``) and reports the losses
(``update``); the state lives on the device (``to``) and in every checkpoint (``state_dict``). Which sampler a
run uses is ``objective.timestep_sampling`` (with ``objective.draws_per_image``), built by ``build_sampler``:

- ``IndependentSampler``: one independent draw per image from a fixed p, made by the loader itself
  (``torch.randint`` for uniform p, ``torch.multinomial`` for the stage- and chunk-balanced departures), weight 1;
- ``TimestepSampler``: stratified inverse-CDF draws from a fixed p (several draws per image);
- ``LossAwareSampler``: stratified draws from a p that follows the loss, weighted back to the uniform mean.

The official objective is the mean over t ~ U{0..T-1} of the per-sample loss l(t). Two options change how t
is drawn while keeping that expectation (docs/method.md, "Faster optimisation"):

- **Importance sampling** (``objective.timestep_sampling: loss_aware | loss_removed``): t ~ p(t) and each
  sample's loss is weighted by w(t) = 1 / (T p(t)), so that E_p[w l] = E_uniform[l]. ``loss_aware`` puts p
  in proportion to the root of the running second moment of l(t), as improved DDPM's loss-second-moment
  resampler: the history of the last ``history`` losses of every t, uniform until every t has that many,
  and a uniform floor (p = (1 - u) p_loss + u / T). ``loss_removed`` does the same with the part of the loss
  the shift decoder removes, r = l_DM(t) - l(t), where l_DM is the frozen DM's own loss on the same x_t (G = 0):
  it ignores the error no decoder can remove.
- **Several draws per image** (``objective.draws_per_image: m``): each image gets m (t, eps) draws, one in
  each of m strata of equal probability under p (inverse-CDF sampling of u_j ~ U[j/m, (j+1)/m)); the encoder
  runs once per image, the frozen DM and the decoder m times, and the loss is the mean over all draws (the
  official scale). Under uniform p and m = k the strata are exactly the chunks' t-ranges, so with stop_grad
  every chunk learns from every image at every step.

Draws are a pure function of (seed, step), as every other draw of a run, and a sampler's state is saved in
the checkpoint, so that a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .randomness import draw_noise, generator, step_noise

# an arbitrary key that keeps these draws apart from the loader's (t, eps, flips) of the same step
_STREAM = 0x7157


def draw_uniforms(batch: int, draws: int, seed: int, step: int) -> torch.Tensor:
    """u (batch * draws,) float64: one uniform in each stratum [j / draws, (j + 1) / draws) per image, a pure
    function of (seed, step). Rows b * draws .. b * draws + draws - 1 are image b's. The training loader draws
    these in its workers (training/loader.py); the sampler turns them into t on the device (``from_uniforms``)."""
    g = generator(seed, step, _STREAM)
    u = (torch.arange(draws, dtype=torch.float64)[None, :] + torch.rand(batch, draws, generator=g,
                                                                        dtype=torch.float64)) / draws
    return u.reshape(-1)


@dataclass(frozen=True)
class LoaderDraws:
    """What the training loader draws for one step's global batch, in its workers, on the CPU (picklable).

    Always t, eps and the flips of ``step_noise``: t uniform (``torch.randint``) or, with ``probs`` (T,), from
    p (``torch.multinomial``). ``uniforms``: also the stratified uniforms ``u`` (``draw_uniforms``) that a
    stratified sampler turns into t on the device; with ``draws`` > 1, each draw's own eps (``draw_noise``).
    Every tensor has a whole number of rows per image of the global batch.
    """

    probs: torch.Tensor | None = None
    uniforms: bool = False
    draws: int = 1

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"draws per image must be >= 1, got {self.draws}")
        if self.draws > 1 and not self.uniforms:
            raise ValueError("several draws per image need the step's uniforms (a stratified sampler)")

    def __call__(self, batch: int, image_shape: tuple[int, ...], timesteps: int, seed: int, step: int
                 ) -> dict[str, torch.Tensor]:
        """{"t", "noise", "flip"[, "u"]} of the step's global batch."""
        t, noise, flip = step_noise(batch, image_shape, timesteps, step, seed, self.probs)
        out = {"t": t, "noise": noise, "flip": flip}
        if self.uniforms:
            out["u"] = draw_uniforms(batch, self.draws, seed, step)
            if self.draws > 1:
                out["noise"] = draw_noise(batch, self.draws, image_shape, seed, step)
        return out


class TimestepSampler:
    """Stratified inverse-CDF draws of t from a fixed distribution p (T,), with importance weights; the base
    of every sampler (the interface the training loop calls, module docstring).

    ``reweight``: weight each draw by 1 / (T p(t)) (importance sampling of the uniform objective); False keeps
    weight 1, i.e. the objective becomes the mean under p (the stage- and chunk-balanced departures).
    ``draws``: draws per image in training, one in each of ``draws`` strata of equal probability.

    The sampler's tensors live on one device (``to``); ``timesteps``, ``from_uniforms`` and ``update`` run there
    without any host read, so a training step on a GPU never waits on them.
    """

    uses_baseline = False  # whether ``update`` needs the frozen DM's own per-sample loss

    def __init__(self, probs: torch.Tensor, reweight: bool, draws: int = 1):
        probs = torch.as_tensor(probs, dtype=torch.float64)
        if probs.ndim != 1 or (probs < 0).any() or not torch.isclose(probs.sum(), torch.ones((), dtype=torch.float64)):
            raise ValueError("timestep probabilities must be a non-negative vector summing to 1")
        if draws < 1:
            raise ValueError(f"draws per image must be >= 1, got {draws}")
        self.timesteps = len(probs)
        self.reweight = reweight
        self.draws = draws
        self._probs = probs

    def loader_draws(self) -> LoaderDraws:
        """The draws the loader makes for this sampler: the stratified uniforms (and one eps per draw)."""
        return LoaderDraws(uniforms=True, draws=self.draws)

    def timesteps_of(self, batch: dict[str, torch.Tensor], device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """t and the importance weights (None: every weight 1, the plain mean) of a loader micro-batch, on
        ``device``."""
        return self.from_uniforms(batch["u"].to(device, non_blocking=True))

    @property
    def device(self) -> torch.device:
        return self._probs.device

    def to(self, device: torch.device | str) -> TimestepSampler:
        """Move the sampler's state to ``device`` (in place); returns self."""
        self._probs = self._probs.to(device)
        return self

    def probs(self) -> torch.Tensor:
        """The current p (T,) float64, on the sampler's device."""
        return self._probs

    def from_uniforms(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t (n,) int64 and weights (n,) float32 for uniforms u (n,) in [0, 1), on the sampler's device: the first
        t whose CDF exceeds u (a t of probability 0 is never drawn)."""
        p = self.probs()
        u = u.to(p.device, non_blocking=True)
        cdf = torch.cumsum(p, 0)
        cdf = cdf / cdf[-1]
        t = torch.searchsorted(cdf, u, right=True).clamp_(max=self.timesteps - 1)
        weights = 1.0 / (self.timesteps * p[t]) if self.reweight else torch.ones_like(u)
        return t, weights.float()

    def draw(self, batch: int, draws: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t (batch * draws,) int64 and weights (batch * draws,) float32 for one step's global batch.

        Rows b * draws .. b * draws + draws - 1 are image b's draws, one per stratum [j / draws, (j + 1) / draws).
        """
        return self.from_uniforms(draw_uniforms(batch, draws, seed, step))

    def update(self, t: torch.Tensor, loss: torch.Tensor, baseline: torch.Tensor | None = None) -> None:
        """Record per-sample losses (unweighted) at their t; a fixed distribution ignores them."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class IndependentSampler(TimestepSampler):
    """One independent draw of t per image, made by the loader (``LoaderDraws``): t ~ U{0..T-1} by
    ``torch.randint`` (``probs`` None: the official sampling, and the DDPM's), or t ~ ``probs`` by
    ``torch.multinomial`` (the stage- and chunk-balanced departures); weight 1 (the plain mean).
    """

    def __init__(self, timesteps: int, probs: torch.Tensor | None = None):
        uniform = torch.full((timesteps,), 1.0 / timesteps, dtype=torch.float64)
        super().__init__(uniform if probs is None else probs, reweight=False, draws=1)
        self._loader_probs = None if probs is None else torch.as_tensor(probs, dtype=torch.float64).clone()

    def loader_draws(self) -> LoaderDraws:
        return LoaderDraws(probs=self._loader_probs)  # on the CPU, for the loader's workers

    def timesteps_of(self, batch: dict[str, torch.Tensor], device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return batch["t"].to(device, non_blocking=True), None


class LossAwareSampler(TimestepSampler):
    """p(t) proportional to sqrt(E[s(t)^2]) over the last ``history`` values of a statistic s at every t.

    ``statistic``: ``loss`` (s = l, the loss-second-moment resampler) or ``removed`` (s = l_DM - l, the loss
    the decoder removes). Uniform until every t holds ``history`` values; then mixed with the uniform
    distribution by ``uniform_mix``, a floor p >= uniform_mix / T that bounds the weights: w <= 1 / uniform_mix.

    The history is a (T, history) ring buffer on the sampler's device, written by tensor operations (several
    values of one t in a batch take consecutive slots in batch order, as a loop over the batch would), and the
    warm-up test is a device-side ``where``: nothing is read back to the host during training.
    """

    def __init__(self, timesteps: int, statistic: str = "loss", history: int = 10, uniform_mix: float = 0.1,
                 draws: int = 1):
        if statistic not in ("loss", "removed"):
            raise ValueError(f"unknown importance statistic {statistic!r}; expected 'loss' or 'removed'")
        if history < 1:
            raise ValueError(f"importance history must be >= 1, got {history}")
        if not 0 < uniform_mix <= 1:
            raise ValueError(f"importance uniform_mix must be in (0, 1], got {uniform_mix}")
        super().__init__(torch.full((timesteps,), 1.0 / timesteps, dtype=torch.float64), reweight=True, draws=draws)
        self.statistic, self.history, self.uniform_mix = statistic, history, uniform_mix
        self.uses_baseline = statistic == "removed"
        # the ring buffers of every t, flat, plus one scratch slot that takes the writes a batch overrides
        self._buffer = torch.zeros(timesteps * history + 1, dtype=torch.float64)
        self.count = torch.zeros(timesteps, dtype=torch.int64)  # values ever recorded per t

    @property
    def values(self) -> torch.Tensor:
        """The ring buffer (T, history): the last ``history`` values of the statistic at every t."""
        return self._buffer[:-1].view(self.timesteps, self.history)

    def to(self, device: torch.device | str) -> LossAwareSampler:
        super().to(device)
        self._buffer, self.count = self._buffer.to(device), self.count.to(device)
        return self

    def warmed_up(self) -> bool:
        """Whether every t holds ``history`` values (a host read: for tests and reports, not the step)."""
        return bool((self.count >= self.history).all())

    def probs(self) -> torch.Tensor:
        T = self.timesteps
        uniform = torch.full((T,), 1.0 / T, dtype=torch.float64, device=self._buffer.device)
        root = torch.sqrt(torch.mean(self.values**2, dim=1))
        total = root.sum()
        p = (1 - self.uniform_mix) * root / total + self.uniform_mix / T
        p = p / p.sum()
        usable = (self.count >= self.history).all() & torch.isfinite(total) & (total > 0)
        return torch.where(usable, p, uniform)

    def update(self, t: torch.Tensor, loss: torch.Tensor, baseline: torch.Tensor | None = None) -> None:
        if self.statistic == "removed":
            if baseline is None:
                raise ValueError("the loss_removed sampler needs the frozen DM's own per-sample loss")
            value = baseline.double() - loss.double()
        else:
            value = loss.double()
        device = self._buffer.device
        t, value = t.to(device), value.to(device)
        n = len(t)
        # rank of each sample among the earlier samples of the same t (batch order), by a stable sort
        order = torch.sort(t, stable=True).indices
        sorted_t = t[order]
        positions = torch.arange(n, device=device)
        is_start = torch.ones(n, dtype=torch.bool, device=device)
        is_start[1:] = sorted_t[1:] != sorted_t[:-1]
        group_start = torch.cummax(torch.where(is_start, positions, torch.zeros_like(positions)), 0).values
        rank = torch.empty_like(positions)
        rank[order] = positions - group_start
        seen = torch.zeros(self.timesteps, dtype=torch.int64, device=device).index_add_(0, t, torch.ones_like(t))
        # a t drawn more than ``history`` times keeps its last ``history`` values, as sequential writes would; the
        # overridden ones go to the scratch slot (no boolean indexing: its size would be read by the host)
        keep = rank >= seen[t] - self.history
        slot = t * self.history + (self.count[t] + rank) % self.history
        scratch = torch.full_like(slot, self.timesteps * self.history)
        self._buffer.index_put_((torch.where(keep, slot, scratch),), value)
        self.count += seen

    def state_dict(self) -> dict:
        # JSON-able and exact: Python floats round-trip through repr (read at checkpoints only)
        return {"statistic": self.statistic, "history": self.history, "uniform_mix": self.uniform_mix,
                "values": self.values.cpu().tolist(), "count": self.count.cpu().tolist()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        for key in ("statistic", "history", "uniform_mix"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the checkpoint's sampler has {key}={state[key]!r}, the config {getattr(self, key)!r}")
        device = self._buffer.device
        values = torch.tensor(state["values"], dtype=torch.float64, device=device).reshape(-1)
        if len(values) != self.timesteps * self.history:
            raise ValueError(f"the checkpoint's sampler holds {len(values)} values, expected "
                             f"{self.timesteps} x {self.history}")
        self._buffer = torch.cat([values, torch.zeros(1, dtype=torch.float64, device=device)])
        self.count = torch.tensor(state["count"], dtype=torch.int64, device=device)


class ChunkNormalizedSampler:
    """A sampler whose draws' weights are also divided by the running mean of the loss in their t's chunk: each
    chunk's expected loss is normalised to about 1, so every chunk learns at a comparable scale (a departure from
    the paper, ``objective.loss_normalization: chunk``; docs/method.md, "Giving every chunk a signal").

    ``base``: the sampler that draws t (any of this module's); its weights are kept and multiplied.
    ``chunk_of_t`` (T,): the chunk of every t. q_c is the mass of chunk c under the distribution whose mean the
    base objective is (uniform for an importance sampler, its p otherwise). m_c, the chunk's mean loss under
    it, is an exponential running mean over steps (``decay`` per step, bias corrected as Adam's moments) of
    s_c / (n q_c), s_c the sum of those of the step's n per-sample losses (``update``: unweighted, or under an
    importance sampler weighted by 1 / (T p(t))) whose t lies in chunk c: an unbiased estimate at every step,
    also when a chunk has no draw. The weight of a draw at t in chunk c is w_c = (1 / m_c) / Z,
    Z = sum_c q_c / m_c: the expected weight is 1 and each chunk's share of the objective is about q_c. Until
    every chunk has a positive mean, every weight is 1 (the base objective). A step's weights use the means
    before its losses. Everything runs on the sampler's device; the means go into the checkpoint (exact
    float64), so a resumed run is bit-identical.
    """

    def __init__(self, base: TimestepSampler, chunk_of_t, decay: float = 0.99):
        if not 0 < decay < 1:
            raise ValueError(f"the normalisation's decay must be in (0, 1), got {decay}")
        self.base, self.decay = base, float(decay)
        self.timesteps, self.draws = base.timesteps, base.draws
        self.uses_baseline = base.uses_baseline
        self._chunk = torch.as_tensor(chunk_of_t, dtype=torch.int64)
        if self._chunk.shape != (self.timesteps,) or (self._chunk < 0).any():
            raise ValueError(f"chunk_of_t must give a chunk >= 0 for each of the {self.timesteps} time-steps")
        self.chunks = int(self._chunk.max()) + 1
        # q_c: each chunk's mass under the base objective's target distribution (uniform for an importance
        # sampler, its fixed p otherwise); constant, as every sampler that does not reweight has a fixed p
        target = torch.full((self.timesteps,), 1.0 / self.timesteps, dtype=torch.float64) if base.reweight \
            else base.probs().cpu()
        self.mass = torch.zeros(self.chunks, dtype=torch.float64).index_add_(0, self._chunk, target)
        self.ema = torch.zeros(self.chunks, dtype=torch.float64)  # running mean of s_c / n
        self.debias = torch.zeros((), dtype=torch.float64)  # 1 - decay^n, n the updates so far

    @property
    def device(self) -> torch.device:
        return self.ema.device

    def to(self, device: torch.device | str) -> ChunkNormalizedSampler:
        self.base.to(device)
        self._chunk, self.mass, self.ema, self.debias = (x.to(device) for x in
                                                         (self._chunk, self.mass, self.ema, self.debias))
        return self

    def loader_draws(self) -> LoaderDraws:
        return self.base.loader_draws()

    def probs(self) -> torch.Tensor:
        return self.base.probs()

    def means(self) -> torch.Tensor:
        """m_c (chunks,) float64; 0 before the first update and for a chunk of mass 0."""
        scale = self.debias * self.mass
        ok = scale > 0
        return torch.where(ok, self.ema / torch.where(ok, scale, torch.ones_like(scale)), torch.zeros_like(scale))

    def chunk_weights(self) -> torch.Tensor:
        """w_c (chunks,) float64 (all 1 until every chunk of positive mass has a positive mean)."""
        m = self.means()
        ready = ((m > 0) | (self.mass == 0)).all()
        inverse = torch.where(m > 0, 1.0 / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(m))
        w = inverse / (self.mass * inverse).sum()  # 0 / 0 before the first update: replaced by 1 below
        return torch.where(ready, w, torch.ones_like(w))

    def _normalise(self, t: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.chunk_weights()[self._chunk[t]].float()
        return t, w if weights is None else weights * w

    def timesteps_of(self, batch: dict[str, torch.Tensor], device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._normalise(*self.base.timesteps_of(batch, device))

    def draw(self, batch: int, draws: int, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._normalise(*self.base.draw(batch, draws, seed, step))

    def update(self, t: torch.Tensor, loss: torch.Tensor, baseline: torch.Tensor | None = None) -> None:
        t = t.to(self.device)
        # an importance sampler's draws are weighted by 1 / (T p(t)), p the one they were drawn from (before the
        # base's update), so that s_c / n estimates q_c times the chunk's mean under the uniform target
        w = (1.0 / (self.timesteps * self.base.probs()[t]) if self.base.reweight
             else torch.ones(len(t), dtype=torch.float64, device=self.device))
        self.base.update(t, loss, baseline)
        share = torch.zeros_like(self.ema).index_add_(0, self._chunk[t], w * loss.to(self.device, torch.float64))
        self.ema = self.decay * self.ema + (1 - self.decay) * share / len(t)
        self.debias = self.decay * self.debias + (1 - self.decay)

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "decay": self.decay,
                "ema": self.ema.cpu().tolist(), "debias": float(self.debias)}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state["decay"] != self.decay or len(state["ema"]) != self.chunks:
            raise ValueError(f"the checkpoint's normalisation has decay {state['decay']} over {len(state['ema'])} "
                             f"chunks, the config {self.decay} over {self.chunks}")
        self.base.load_state_dict(state["base"])
        self.ema = torch.tensor(state["ema"], dtype=torch.float64, device=self.device)
        self.debias = torch.tensor(state["debias"], dtype=torch.float64, device=self.device)


# objective.timestep_sampling -> the statistic of an importance sampler; any other name is a fixed distribution
# of the partition (Partition.timestep_probs: uniform, stage_balanced, chunk_balanced)
IMPORTANCE = {"loss_aware": "loss", "loss_removed": "removed"}


# what a training run's t comes from (``build_sampler``)
Sampler = TimestepSampler | ChunkNormalizedSampler


def build_sampler(kind: str, partition, history: int = 10, uniform_mix: float = 0.1, draws: int = 1,
                  normalization: str = "none", decay: float = 0.99) -> Sampler:
    """The sampler of ``objective.timestep_sampling`` = ``kind`` with ``draws`` (t, eps) draws per image.

    Importance sampling (``IMPORTANCE``) keeps ``history`` losses of every t and a ``uniform_mix`` floor; a
    fixed distribution is drawn by the loader with one draw per image, stratified with several.
    ``normalization`` (``objective.loss_normalization``): ``chunk`` wraps it in ``ChunkNormalizedSampler``
    (running means with ``decay``); ``none`` keeps it."""
    if normalization not in ("none", "chunk"):
        raise ValueError(f"unknown loss normalization {normalization!r}; expected 'none' or 'chunk'")
    if kind in IMPORTANCE:
        sampler = LossAwareSampler(partition.timesteps, IMPORTANCE[kind], history, uniform_mix, draws)
    elif draws > 1:
        sampler = TimestepSampler(partition.timestep_probs(kind), reweight=False, draws=draws)
    else:
        sampler = IndependentSampler(partition.timesteps, None if kind == "uniform" else partition.timestep_probs(kind))
    return ChunkNormalizedSampler(sampler, partition.chunk_of_t, decay) if normalization == "chunk" else sampler

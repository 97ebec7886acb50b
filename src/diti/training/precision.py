"""``train.mixed_precision: auto``: bf16 autocast where the hardware computes in bf16, float32 elsewhere.

bf16 autocast runs the forward passes in bfloat16 while weights, optimizer state, EMA and checkpoints stay
float32 (training/trainer.py). In a DiTi/PDAE run the frozen DM's forward stays float32 even then
(``decoder.frozen_fp32``, default true): the loss's target eps - eps_theta is small where the DM is good, and
rounding eps_theta to bf16 adds an error of that size; on the converged benchmark a fully-bf16 step made
the code learn the close object hues much more slowly, the float32 frozen forward did not
(benchmarks/RESULTS.md). Only the encoder and the shift decoder then run in bf16. It pays off only where the hardware has bf16 arithmetic: a CUDA GPU that
supports it (Ampere and newer), or a CPU with the AVX512-BF16 or AMX instructions, which oneDNN's bf16
convolutions use. Elsewhere bf16 is emulated and slower than float32, so ``auto`` falls back to float32 and
says why in one log line. The run's resolved config (``RUN/config.yaml``) records the precision that ran.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def training_device(device: str) -> torch.device:
    """The device accelerate will train on for ``train.device`` (``auto``: CUDA when torch sees it)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` computes in bf16 natively, a sentence saying what was found)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(device)} supports bf16"
        return False, f"{torch.cuda.get_device_name(device)} does not support bf16"
    if device.type == "cpu":
        if not torch.backends.mkldnn.is_available():
            return False, "this torch build has no oneDNN (mkldnn), whose kernels run bf16 on the CPU"
        if torch.cpu._is_amx_tile_supported():
            return True, "the CPU has AMX tiles"
        if torch.cpu._is_avx512_bf16_supported():
            return True, "the CPU has the AVX512-BF16 instructions"
        return False, "the CPU has neither the AVX512-BF16 nor the AMX instructions (bf16 would be emulated)"
    return False, f"no bf16 check for device type {device.type!r}"


def resolve_mixed_precision(mixed_precision: str, device: str) -> str:
    """``auto`` -> ``bf16`` where ``bf16_support`` holds on the training device, else ``no`` (float32) with a
    warning naming the reason; any other value is returned as it is."""
    if mixed_precision != "auto":
        return mixed_precision
    target = training_device(device)
    ok, why = bf16_support(target)
    if ok:
        logger.info("train.mixed_precision=auto: bf16 autocast (%s)", why)
        return "bf16"
    logger.warning("train.mixed_precision=auto: training in float32, because %s; "
                   "--set train.mixed_precision=bf16 forces bf16", why)
    return "no"

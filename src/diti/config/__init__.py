"""Typed configs, their strict loader and the presets."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from .loader import ConfigError, from_dict, merge, parse_overrides, read_yaml, to_dict
from .presets import DITI_PRESETS, PRETRAIN_PRESETS, preset
from .schema import (
    DataConfig,
    DecoderConfig,
    DiffusionConfig,
    DiTiConfig,
    EncoderConfig,
    PartitionConfig,
    PretrainConfig,
    TrainConfig,
    UNetConfig,
)

C = TypeVar("C", DiTiConfig, PretrainConfig)

PRESET_TABLES = {DiTiConfig: DITI_PRESETS, PretrainConfig: PRETRAIN_PRESETS}


def build_config(
    cls: type[C],
    preset_name: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
) -> C:
    """defaults (or ``base``) < preset < YAML file < overrides, then validated."""
    data = base if base is not None else to_dict(cls())
    data = merge(data, preset(PRESET_TABLES[cls], preset_name))
    if file is not None:
        data = merge(data, read_yaml(file))
    data = merge(data, parse_overrides(overrides))
    cfg = from_dict(cls, data)
    cfg.validate()
    return cfg


__all__ = [
    "ConfigError",
    "DataConfig",
    "DecoderConfig",
    "DiffusionConfig",
    "DiTiConfig",
    "EncoderConfig",
    "PartitionConfig",
    "PretrainConfig",
    "TrainConfig",
    "UNetConfig",
    "build_config",
    "from_dict",
    "to_dict",
]

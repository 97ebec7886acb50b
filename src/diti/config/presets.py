"""Named presets: small overrides of the defaults in schema.py, one table per job kind.

Resolution order when a job's config is built: defaults < preset < YAML file < ``--set key=value``.
"""

from __future__ import annotations

# A tiny model for tests and smoke runs (16 px, seconds per step on a laptop CPU).
_QUICK_UNET = {
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "attention_levels": [1],
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}
_QUICK_TRAIN = {"steps": 20, "batch_size": 16, "log_every": 5, "checkpoint_every": 10, "ema_decay": 0.99}

# The embedded-data demo: 32 px shapes, a 1.1M-parameter UNet. Sized so that `make demo` (DiTi and PDAE with
# equal budgets) fits in 25 minutes on 2 CPU cores; see README for what it measures.
_SHAPES_UNET = {
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "attention_levels": [1],
    "norm_num_groups": 16,
    "attention_head_dim": 32,
}

PRETRAIN_PRESETS: dict[str, dict] = {
    "shapes-quick": {"unet": _QUICK_UNET, "train": {**_QUICK_TRAIN, "lr": 1e-3}},
    "shapes-demo": {
        "unet": _SHAPES_UNET,
        "train": {"steps": 8000, "batch_size": 64, "lr": 2e-4, "ema_decay": 0.999, "checkpoint_every": 500,
                  "log_every": 100},
    },
}

DITI_PRESETS: dict[str, dict] = {
    "shapes-quick": {
        "partition": {"latent_dim": 16, "k": 4, "stages": None, "dims_per_stage": None, "mode": "stop_grad"},
        "encoder": {"channels": [16, 32], "attn_resolutions": [], "norm_groups": 8},
        "train": {**_QUICK_TRAIN, "lr": 1e-3},
    },
    "shapes-demo": {
        "partition": {"latent_dim": 64, "k": 8, "stages": None, "dims_per_stage": None, "mode": "stop_grad"},
        "encoder": {"channels": [32, 64, 64], "attn_resolutions": [], "norm_groups": 16},
        "train": {"steps": 600, "batch_size": 64, "lr": 1e-3, "ema_decay": 0.999, "checkpoint_every": 200,
                  "log_every": 50},
    },
}


def preset(table: dict[str, dict], name: str | None) -> dict:
    """The override dict of a preset (empty for None); ValueError listing the known ones."""
    if name is None:
        return {}
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(table))}")
    return table[name]

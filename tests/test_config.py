import pytest

from diti.config import ConfigError, DiTiConfig, PretrainConfig, build_config, from_dict, to_dict
from diti.config.loader import parse_overrides, parse_yaml


def test_defaults_are_the_official_recipe():
    cfg = DiTiConfig()
    cfg.validate()
    assert (cfg.partition.latent_dim, cfg.partition.k, cfg.partition.mode) == (512, 64, "stop_grad")
    assert cfg.partition.stages == [50, 100, 300, 500, 1000]
    assert cfg.partition.dims_per_stage == [10, 25, 327, 100, 50]
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.ema_decay) == (1e-4, 128, 0.9999)
    assert cfg.encoder.channels == [64, 128, 128, 128]


def test_yaml_reads_exponent_floats_as_floats():
    data = parse_yaml("lr: 1e-4\nother: 3E5\nname: 1e4x\n")
    assert data == {"lr": 1e-4, "other": 3e5, "name": "1e4x"}
    cfg = build_config(DiTiConfig, overrides=["train.lr=2e-4"])
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)


def test_round_trip():
    cfg = build_config(DiTiConfig, "shapes-quick")
    assert from_dict(DiTiConfig, to_dict(cfg)) == cfg


def test_unknown_key_is_rejected_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.batchsize'.*did you mean 'batch_size'"):
        from_dict(DiTiConfig, {"train": {"batchsize": 64}})
    with pytest.raises(ConfigError, match="unknown config key 'partitoin'"):
        from_dict(DiTiConfig, {"partitoin": {}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"lr": "fast"}}, r"train.lr: expected a number, got str"),
        ({"train": {"steps": 1.5}}, r"train.steps: expected an integer, got float"),
        ({"train": {"steps": True}}, r"train.steps: expected an integer, got bool"),
        ({"partition": {"stages": "50,1000"}}, r"partition.stages"),
        ({"partition": {"dims_per_stage": [1, "a"]}}, r"partition.dims_per_stage\[1\]: expected an integer"),
        ({"partition": {"mode": "detach"}}, r"partition.mode: 'detach' is not one of"),
        ({"train": {"progress": "yes"}}, r"train.progress: expected true/false"),
        ({"encoder": 3}, r"encoder: expected a mapping"),
    ],
)
def test_wrong_types_are_rejected(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DiTiConfig, data)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["partition.stages=[50,100,900]", "partition.dims_per_stage=[10,25,477]"], "last stage must end at T=1000"),
        (["partition.dims_per_stage=[10,25,327,100,49]"], "sum to 511, not latent_dim=512"),
        (["partition.k=3"], "k=3 is smaller than the number of stages"),
        (["train.batch_size=10", "train.grad_accum_steps=3"], "not divisible by grad_accum_steps"),
        (["train.lr=0"], "train.lr must be > 0"),
    ],
)
def test_bad_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(DiTiConfig, overrides=overrides)


def test_precedence_defaults_preset_file_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  lr: 5e-4\n  steps: 7\n")
    cfg = build_config(DiTiConfig, "shapes-quick", f, ["train.steps=9"])
    assert cfg.partition.latent_dim == 16  # preset
    assert cfg.train.lr == 5e-4  # file over preset
    assert cfg.train.steps == 9  # override over file
    assert cfg.train.adam_betas == [0.9, 0.999]  # default


def test_unknown_preset_and_bad_override():
    with pytest.raises(ValueError, match="unknown preset 'nope'; available"):
        build_config(DiTiConfig, "nope")
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["train.lr"])


def test_pretrain_config_checks_unet():
    with pytest.raises(ConfigError, match="attention_levels"):
        build_config(PretrainConfig, overrides=["unet.attention_levels=[5]"])
    with pytest.raises(ConfigError, match="multiples of norm_num_groups"):
        build_config(PretrainConfig, overrides=["unet.block_out_channels=[30,60]"])


@pytest.mark.parametrize(
    "name, resolution, k, mode, steps",
    [
        ("celeba64-diti64", 64, 64, "base", 296_875),
        ("celeba64-diti64-stopgrad", 64, 64, "stop_grad", 468_750),
        ("celeba64-pdae", 64, 1, "base", 296_875),
        ("ffhq128-diti64", 128, 64, "base", 500_000),
        ("bedroom128-diti64", 128, 64, "base", 546_875),
    ],
)
def test_paper_presets(name, resolution, k, mode, steps):
    cfg = build_config(DiTiConfig, name)
    assert (cfg.data.resolution, cfg.partition.k, cfg.partition.mode, cfg.train.steps) == (resolution, k, mode, steps)
    assert cfg.train.batch_size == 128 and cfg.train.lr == 1e-4 and cfg.train.ema_decay == 0.9999
    assert cfg.data.hflip
    if k > 1:
        assert cfg.partition.stages == [50, 100, 300, 500, 1000]
        assert cfg.partition.dims_per_stage == [10, 25, 327, 100, 50]
    if resolution == 128:
        assert cfg.encoder.channels == [64, 128, 256, 256, 256]


def test_yaml_bool_words_are_read_back_as_the_option_they_spell():
    # YAML 1.1 reads an unquoted `no` as False; for a Literal field it is the option "no".
    cfg = build_config(DiTiConfig, None, overrides=["train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        build_config(DiTiConfig, None, overrides=["train.mixed_precision=yes"])


@pytest.mark.parametrize("data, factors", [("shapes3d64", 6), ("dsprites64", 5), ("mpi3d64", 7), ("cars3d64", 3)])
def test_disentanglement_benchmark_presets(data, factors):
    from diti.models.dm import build_unet

    dm = build_config(PretrainConfig, data)
    assert dm.data.resolution == 64 and dm.unet.block_out_channels == [64, 128, 256, 256]
    assert dm.unet.layers_per_block == 2 and dm.unet.attention_levels == [2, 3]
    assert (dm.train.steps, dm.train.batch_size) == (100_000, 128)
    assert 27e6 < sum(p.numel() for p in build_unet(dm.unet, 64).parameters()) < 28e6  # docs/method.md: 27.7M
    for method, k in (("diti", factors), ("pdae", 1)):
        cfg = build_config(DiTiConfig, f"{data}-{method}")
        assert (cfg.partition.latent_dim, cfg.partition.k, cfg.partition.stages) == (32 * factors, k, None)
        assert cfg.partition.mode == ("stop_grad" if k > 1 else "base")
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr) == (25_000, 128, 1e-4)
        assert not cfg.data.hflip and cfg.encoder.attn_resolutions == []  # a flip would change the factors
        # the CPU trial sizes
        assert build_config(DiTiConfig, f"{data}-{method}", overrides=["data.resolution=16"]).data.resolution == 16

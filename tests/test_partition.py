import pytest
import torch

from diti.partition import Partition, official_celeba_partition

# docs/method.md ("The partition") lists the 64 end dims: 2,4,6,10, 18,26,35, 60,85,...,335 (step 25),362,
# 370,378,...,450 (step 8),462, 463,464,...,493, 512 -- written out here by hand from that description.
OFFICIAL_END_DIMS = (
    [2, 4, 6, 10]
    + [18, 26, 35]
    + list(range(60, 336, 25)) + [362]
    + list(range(370, 451, 8)) + [462]
    + list(range(463, 494)) + [512]
)


def test_official_partition_end_dims():
    assert len(OFFICIAL_END_DIMS) == 64
    p = Partition(512, 64, 1000, [50, 100, 300, 500, 1000], [10, 25, 327, 100, 50])
    assert p.chunk_end_dims == OFFICIAL_END_DIMS
    assert [p.stage_of_chunk.count(j) for j in range(5)] == [4, 3, 13, 12, 32]
    assert p.chunk_t_ranges[3] == (47, 62)  # "chunk 3 covers t = 47..62"
    assert official_celeba_partition() == p


def test_chunk_of_t_uses_float_division():
    p = Partition(512, 64, 1000)
    assert len(p.chunk_of_t) == 1000
    # T / k = 15.625: t = 15 -> chunk 0, 16 -> 1, 31 -> 1, 32 -> 2, 46 -> 2, 47 -> 3, 999 -> 63
    assert [p.chunk_of_t[t] for t in (0, 15, 16, 31, 32, 46, 47, 62, 63, 999)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 63]
    assert p.chunk_of_t == sorted(p.chunk_of_t)


def test_balanced_partition():
    p = Partition(512, 64, 1000)
    assert p.chunk_end_dims == [8 * (i + 1) for i in range(64)]
    p = Partition(10, 3, 1000)
    assert p.chunk_end_dims == [3, 6, 10]  # int(10 / 3 * (i + 1))
    assert p.chunk_t_ranges == [(0, 333), (334, 666), (667, 999)]


def test_k1_is_pdae():
    p = Partition(32, 1, 1000)
    assert set(p.chunk_of_t) == {0} and p.chunk_end_dims == [32]
    z = torch.randn(5, 32)
    t = torch.randint(0, 1000, (5,))
    assert torch.equal(p.apply(z, t, "base"), z)
    assert torch.equal(p.apply(z, t, "stop_grad"), z)


def test_masks_are_cumulative_in_t():
    p = official_celeba_partition()
    cum, prev, cur = p.masks()
    assert cum.shape == (1000, 512)
    assert torch.all(cum[1:] >= cum[:-1])  # a dim once used stays used for larger t
    assert torch.equal(prev + cur, cum)
    assert int(cum[0].sum()) == 2 and int(cum[999].sum()) == 512


def test_base_masking_keeps_chunks_up_to_t():
    p = official_celeba_partition()
    z = torch.randn(3, 512)
    out = p.apply(z, torch.tensor([0, 50, 999]), "base")
    assert out.ne(0).sum(1).tolist() == [2, 10, 512]
    torch.testing.assert_close(out[1, :10], z[1, :10])


@pytest.mark.parametrize("t", [0, 47, 63, 120, 999])
def test_gradient_routing(t):
    p = official_celeba_partition()
    idx = p.chunk_of_t[t]
    start, end = p.chunk_start_dims[idx], p.chunk_end_dims[idx]
    weights = torch.randn(1, 512)
    for mode, expected_lo in (("stop_grad", start), ("base", 0)):
        z = torch.randn(1, 512, requires_grad=True)
        (p.apply(z, torch.tensor([t]), mode) * weights).sum().backward()
        nonzero = z.grad[0].ne(0).nonzero().flatten()
        # stop_grad: only the chunk of t's own range; base: every chunk <= idx
        assert nonzero.min().item() == expected_lo and nonzero.max().item() == end - 1
        assert len(nonzero) == end - expected_lo


def test_stop_grad_forward_equals_base():
    p = Partition(64, 8, 1000, [100, 1000], [16, 48])
    z, t = torch.randn(6, 64), torch.randint(0, 1000, (6,))
    assert torch.equal(p.apply(z, t, "stop_grad"), p.apply(z, t, "base"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stages=[50, 100, 900], dims_per_stage=[4, 4, 8]), "last stage must end at T=1000"),
        (dict(stages=[50, 1000], dims_per_stage=[4, 4]), "sum to 8, not latent_dim=16"),
        (dict(k=1, stages=[50, 1000], dims_per_stage=[4, 12]), "smaller than the number of stages"),
        (dict(k=4, stages=[50, 100, 1000], dims_per_stage=[4, 4, 8]), "no chunk starts in the stage"),
        (dict(stages=[100, 50, 1000], dims_per_stage=[4, 4, 8]), "strictly increasing"),
        (dict(stages=[100, 1000]), "together"),
        (dict(k=0), "k must be in"),
        (dict(k=17), "k <= latent_dim"),
    ],
)
def test_bad_partitions_are_rejected(kwargs, message):
    args = dict(latent_dim=16, k=8, timesteps=1000, stages=None, dims_per_stage=None) | kwargs
    with pytest.raises(ValueError, match=message):
        Partition(**args)


def test_table_and_json():
    p = Partition(16, 4, 1000)
    table = p.format_table()
    assert "0-249" in table and "12-15" in table and "balanced" in table
    assert p.to_json() == {"chunk_end_dims": [4, 8, 12, 16], "chunk_of_t": [t // 250 for t in range(1000)]}


def test_balanced_end_dims_do_not_lose_a_dim_to_float_rounding():
    # int(97 / 21 * 21) == 96 in floating point; the last chunk must still end at d
    p = Partition(97, 21, 100)
    assert p.chunk_end_dims[-1] == 97
    assert p.chunk_end_dims == [int(97 * (i + 1) / 21) for i in range(20)] + [97]


def test_timestep_sampling_distributions():
    p = official_celeba_partition()
    uniform = p.timestep_probs("uniform")
    assert torch.allclose(uniform, torch.full((1000,), 1e-3, dtype=torch.float64))
    stage = p.timestep_probs("stage_balanced")
    assert abs(stage.sum().item() - 1) < 1e-12
    for first, last in p.stage_t_ranges:  # every stage gets 1/5 of the mass, uniform inside
        assert abs(stage[first : last + 1].sum().item() - 0.2) < 1e-12
        assert torch.allclose(stage[first : last + 1], stage[first].expand(last - first + 1))
    chunk = p.timestep_probs("chunk_balanced")
    assert all(abs(chunk[a : b + 1].sum().item() - 1 / 64) < 1e-12 for a, b in p.chunk_t_ranges)
    with pytest.raises(ValueError, match="unknown timestep sampling"):
        p.timestep_probs("early")


# --- stages from attribute-loss crossings ---------------------------------------------------------------------


def test_stages_from_crossings_hand_computed():
    """The official imbalanced structure with stages at the crossings (the benchmark's diti-imb-sg variant)."""
    from diti.partition import stages_from_crossings

    crossings = {"grain": 96.0, "texture": 176.4, "color": 297.0, "shape": 487.5, "scale": 486.0,
                 "x": 570.2, "y": 563.0, "background": 671.0, "never": None}
    part, groups = stages_from_crossings(crossings, latent_dim=32, k=8)
    # chunks of 125 t: grain in chunk 0, texture 1, color 2, shape and scale 3, x and y 4, background 5
    assert groups == [["grain"], ["texture"], ["color"], ["shape", "scale"], ["x", "y"], ["background", "never"]]
    assert part.stages == (125, 250, 375, 500, 625, 1000)
    # 9 factors over 32 dims: shares 3.56, 3.56, 3.56, 7.11, 7.11, 7.11 -> 3,3,3,7,7,7, and the 2 dims left go
    # to the largest remainders (0.56, ties to the earlier stages)
    assert part.dims_per_stage == (4, 4, 3, 7, 7, 7)
    # with 100-t chunks the first stage also takes the chunks before its factor's chunk
    part, groups = stages_from_crossings({"a": 250.0, "b": 420.0}, latent_dim=6, k=10)
    assert part.stages == (400, 1000) and part.dims_per_stage == (3, 3) and groups == [["a"], ["b"]]
    assert part.stage_of_chunk[:5] == [0, 0, 0, 0, 1]


def test_stages_from_crossings_errors():
    from diti.partition import stages_from_crossings

    with pytest.raises(ValueError, match="no factor reaches"):
        stages_from_crossings({"a": None}, 8, 4)
    with pytest.raises(ValueError, match="outside"):
        stages_from_crossings({"a": 1200.0}, 8, 4)
    with pytest.raises(ValueError, match="smaller than the 3 stages"):
        stages_from_crossings({"a": 10.0, "b": 400.0, "c": 900.0}, 2, 4)


def test_the_attribute_loss_rule_puts_the_dims_at_the_crossings():
    """The crossings of the issue's narrow-band data set (all within chunks 1-3 of k = 8): the old rule made stages
    [250, 1000] with dims [8, 24], i.e. 4 dims in every chunk; the dims now follow the crossings."""
    from diti.partition import partition_from_crossings, stages_from_crossings

    crossings = {"a": 224.0, "b": 277.0, "c": 335.0, "d": 398.0}
    part, groups = partition_from_crossings(crossings, latent_dim=32, k=8)
    assert groups == [[], ["a"], ["b", "c"], ["d"], [], [], [], []]
    # 1 dim per chunk, the other 24 in proportion to 0, 1, 2, 1, 0, 0, 0, 0 factors
    assert part.stages == (125, 250, 375, 500, 625, 750, 875, 1000)
    assert part.dims_per_stage == (1, 7, 13, 7, 1, 1, 1, 1)
    assert [hi - lo for lo, hi in part.chunk_dim_ranges] == [1, 7, 13, 7, 1, 1, 1, 1]
    # the four chunks after the last crossing hold 4 of 32 dims; the stage rule spread its last stage's dims
    # evenly over them (and the balanced partition gives them 16)
    old, _ = stages_from_crossings(crossings, latent_dim=32, k=8)
    assert sum(hi - lo for lo, hi in part.chunk_dim_ranges[4:]) == 4
    assert sum(hi - lo for lo, hi in old.chunk_dim_ranges[4:]) == 7
    # a larger floor keeps more dims everywhere
    floor2, _ = partition_from_crossings(crossings, latent_dim=32, k=8, floor=2)
    assert floor2.dims_per_stage == (2, 6, 10, 6, 2, 2, 2, 2)
    assert sum(floor2.dims_per_stage) == 32


def test_chunk_weights_allocation():
    from diti.partition import largest_remainder, partition_from_chunk_weights

    assert largest_remainder(10, [1.0, 1.0, 1.0]) == [4, 3, 3]  # ties to the earlier entry
    assert largest_remainder(10, [0.0, 0.0], 2) == [5, 5]  # all-zero weights: equal shares
    assert largest_remainder(7, [3.0, 1.0], 1) == [5, 2]
    with pytest.raises(ValueError, match="cannot give"):
        largest_remainder(3, [1.0, 1.0], 2)
    part = partition_from_chunk_weights([0.0, 3.0, 1.0, 0.0], latent_dim=12, k=4, timesteps=100)
    assert part.stages == (25, 50, 75, 100) and part.dims_per_stage == (1, 7, 3, 1)
    with pytest.raises(ValueError, match="at least 1"):
        partition_from_chunk_weights([1.0] * 4, 12, 4, 100, floor=0)
    with pytest.raises(ValueError, match="cannot give"):
        partition_from_chunk_weights([1.0] * 4, 6, 4, 100, floor=2)


def test_the_removed_loss_rule_on_a_hand_made_curve():
    """A hand-made removed-loss curve: nothing removed before t = 200 or after t = 600, most between 300 and 400."""
    from diti.partition import partition_from_removed_loss

    curve = [0.0] * 1000
    for t in range(200, 600):
        curve[t] = 1.0
    for t in range(300, 400):
        curve[t] = 4.0
    curve[50] = -3.0  # a negative value (the model worse than the DM) counts as 0
    part, weights = partition_from_removed_loss(curve, latent_dim=40, k=10, floor=1)
    assert weights == [0.0, 0.0, 1.0, 4.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # floor 1 for the 10 chunks, the other 30 dims in proportion 1 : 4 : 1 : 1 (4.29, 17.14, 4.29, 4.29: the
    # dim left by rounding goes to the earliest of the largest remainders)
    assert part.dims_per_stage == (1, 1, 6, 18, 5, 5, 1, 1, 1, 1)
    assert sum(part.dims_per_stage) == 40 and min(part.dims_per_stage) >= 1
    # stages ordered in t, one per chunk
    assert list(part.stages) == sorted(part.stages) == [100 * (i + 1) for i in range(10)]
    with pytest.raises(ValueError, match="removes no loss"):
        partition_from_removed_loss([0.0] * 1000, 40, 10)


def test_partition_command_from_attribute_loss(tmp_path):
    import json

    from typer.testing import CliRunner

    from diti.cli.main import app

    path = tmp_path / "attribute_loss.json"
    path.write_text(json.dumps({"crossing_t": {"a": 100, "b": 500}, "crossing_t_interp": {"a": 96.0, "b": 480.5}}))
    result = CliRunner().invoke(app, ["partition", "--from-attribute-loss", str(path), "--latent-dim", "8",
                                      "--k", "4", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    # a in chunk 0, b in chunk 1 (250-t chunks): 1 dim per chunk and the other 4 to those two chunks
    assert out["stages"] == [250, 500, 750, 1000] and out["dims_per_stage"] == [3, 3, 1, 1]
    assert out["chunk_factors"] == [["a"], ["b"], [], []] and out["rule"] == "attribute_loss"
    result = CliRunner().invoke(app, ["partition", "--from-attribute-loss", str(path), "--latent-dim", "8",
                                      "--k", "4"])
    assert "--set partition.rule=attribute_loss" in result.output
    assert "chunk 1 (t 250-499): 3 dims; b (480)" in result.output and "chunk 3 (t 750-999): 1 dims; no factor lost" in result.output
    bad = CliRunner().invoke(app, ["partition", "--from-attribute-loss", str(path), "--k", "4"])
    assert bad.exit_code == 2 and "--latent-dim" in bad.output


# --- partition.rule: set when a run starts -------------------------------------------------------------------


def test_the_rule_round_trips_through_the_config(tmp_path):
    import yaml

    from diti.config import DiTiConfig, build_config
    from diti.config.loader import to_dict

    cfg = build_config(DiTiConfig, "shapes2-bench", overrides=["partition.rule=removed_loss",
                                                               "partition.rule_source=/x/run", "partition.floor_dims=2"])
    assert (cfg.partition.rule, cfg.partition.rule_source, cfg.partition.floor_dims) == ("removed_loss", "/x/run", 2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    again = build_config(DiTiConfig, file=path)
    assert to_dict(again)["partition"] == to_dict(cfg)["partition"]
    with pytest.raises(ValueError, match="partition.rule"):
        build_config(DiTiConfig, overrides=["partition.rule=by_magic"])


def test_resolving_each_rule(tmp_path):
    import json

    from diti.config import DiTiConfig, build_config
    from diti.config.loader import ConfigError
    from diti.config.presets import GIVEN_PARTITION
    from diti.training.partition_rule import resolve_partition_rule

    def resolved(*overrides):
        cfg = build_config(DiTiConfig, "shapes2-bench", overrides=[*GIVEN_PARTITION, *overrides])
        return resolve_partition_rule(cfg.partition, 1000)

    assert resolved().stages is None  # given: the preset's balanced partition
    assert resolved("partition.rule=balanced", "partition.stages=[500,1000]", "partition.dims_per_stage=[16,16]").stages is None
    official = resolved("partition.rule=official", "partition.k=20")
    assert official.stages == [50, 100, 300, 500, 1000] and sum(official.dims_per_stage) == 32
    assert official.dims_per_stage == [2, 2, 18, 6, 4]  # 1 each, the other 27 in proportion 10:25:327:100:50
    al = tmp_path / "attribute_loss.json"
    al.write_text(json.dumps({"crossing_t_interp": {"a": 224.0, "b": 277.0, "c": 335.0, "d": 398.0}}))
    p = resolved("partition.rule=attribute_loss", f"partition.rule_source={json.dumps(str(al))}")
    assert p.dims_per_stage == [1, 7, 13, 7, 1, 1, 1, 1] and p.rule == "attribute_loss"
    curve = tmp_path / "removed.json"
    curve.write_text(json.dumps({"removed_loss": [0.0] * 250 + [1.0] * 250 + [0.0] * 500}))
    p = resolved("partition.rule=removed_loss", f"partition.rule_source={json.dumps(str(curve))}")
    assert p.dims_per_stage == [1, 1, 13, 13, 1, 1, 1, 1]
    with pytest.raises(ConfigError, match="needs partition.rule_source"):
        resolved("partition.rule=attribute_loss")
    with pytest.raises(ConfigError, match="official stages|no chunk starts"):
        resolved("partition.rule=official")  # k = 8: no chunk starts in [50, 100)


def test_removed_loss_from_a_pdae_run_trains_a_partition_and_the_report_names_the_rule(tmp_path, random_dm, shapes16):
    import json

    import yaml
    from typer.testing import CliRunner

    from conftest import quick_cfg
    from diti.cli.main import app
    from diti.evaluation.report import write_report
    from diti.training.jobs import train_diti
    from diti.training.partition_rule import removed_loss_curve

    pdae = train_diti(quick_cfg(random_dm, shapes16, "train.steps=6", "partition.k=1", "partition.mode=base"),
                      tmp_path / "pdae")
    curve = removed_loss_curve(pdae, images=8, stride=100)
    assert len(curve["removed_loss"]) == 1000 and curve["t_grid"][:2] == [0, 100]
    assert curve["removed_loss"][150] == curve["removed_grid"][1]
    out = tmp_path / "removed.json"
    result = CliRunner().invoke(app, ["partition", "--from-removed-loss", str(pdae), "--latent-dim", "16", "--k", "4",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "--set partition.rule=removed_loss" in result.output and "removed loss" in result.output
    saved = json.loads(out.read_text())
    assert len(saved["removed_loss"]) == 1000 and sum(saved["partition"]["dims_per_stage"]) == 16
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", "partition.rule=removed_loss",
                               f"partition.rule_source={json.dumps(str(out))}"), tmp_path / "diti")
    written = yaml.safe_load((run / "config.yaml").read_text())["partition"]
    assert written["rule"] == "removed_loss" and written["dims_per_stage"] == saved["partition"]["dims_per_stage"]
    page = write_report([run], tmp_path / "r.html").read_text()
    assert "partition rule" in page and "removed_loss (removed.json)" in page


def test_removed_loss_rule_with_auto_source_trains_its_pdae_run_inside_the_run_once(tmp_path, random_dm, shapes16):
    import json

    import yaml

    from conftest import quick_cfg
    from diti.config.loader import ConfigError
    from diti.training.jobs import train_diti

    rule = ["partition.rule=removed_loss", "partition.rule_source=auto", "partition.rule_source_steps=3"]
    run = train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", *rule), tmp_path / "diti")
    source = run / "rule-source" / "removed_loss.json"
    curve = json.loads(source.read_text())
    assert curve["pdae_steps"] == 3 and len(curve["removed_loss"]) == 1000
    pdae = yaml.safe_load((run / "rule-source" / "pdae" / "config.yaml").read_text())
    assert (pdae["partition"]["k"], pdae["partition"]["mode"], pdae["train"]["steps"]) == (1, "base", 3)
    written = yaml.safe_load((run / "config.yaml").read_text())["partition"]
    assert written["rule_source"] == str(source.resolve()) and sum(written["dims_per_stage"]) == 16
    # resumed: the source is read, not trained again; the partition stays the one that trained
    stamp = source.stat().st_mtime_ns
    train_diti(quick_cfg(random_dm, shapes16, "train.steps=3", *rule), run, resume=True)
    assert source.stat().st_mtime_ns == stamp
    assert yaml.safe_load((run / "config.yaml").read_text())["partition"] == written
    # a folder holding other files is refused before the source trains; auto is for the removed-loss rule only
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        train_diti(quick_cfg(random_dm, shapes16, "train.steps=2", *rule), tmp_path / "busy")
    assert not (tmp_path / "busy" / "rule-source").exists()
    with pytest.raises(ConfigError, match="rule_source=auto"):
        train_diti(quick_cfg(random_dm, shapes16, "partition.rule=attribute_loss", "partition.rule_source=auto"),
                   tmp_path / "al")


def test_which_rule_each_preset_trains_with():
    """The shapes presets of today's runs: the label-free removed-loss rule (its source trained by `diti train`);
    the paper presets: the official hand-set stages; the frozen 32-px benchmark and the tests' preset: balanced."""
    from diti.config import DiTiConfig, build_config
    from diti.config.presets import GIVEN_PARTITION
    from diti.demo import METHODS

    def rule(preset, *overrides):
        p = build_config(DiTiConfig, preset, overrides=list(overrides)).partition
        return p.rule, p.rule_source, p.stages

    assert rule("shapes-demo") == rule("shapes2-bench") == ("removed_loss", "auto", None)
    assert rule("shapes2-bench", *GIVEN_PARTITION) == rule("shapes-bench") == rule("shapes-quick") == ("given", None, None)
    assert rule("celeba64-diti64") == ("given", None, [50, 100, 300, 500, 1000])
    assert rule("shapes2-bench", *METHODS["PDAE"])[:2] == ("given", None)  # the demo's PDAE: no rule to read
    assert METHODS["DiTi"] == []  # the demo's DiTi: the preset's rule

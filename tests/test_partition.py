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

"""The weight transforms as plain numpy functions (passes/transforms.py)."""

from __future__ import annotations

import numpy as np
import pytest

from nashir.passes import transforms as T


def test_widen_mapping_keeps_the_first_n_and_draws_the_rest_in_range():
    rng = np.random.default_rng(0)
    g = T.widen_mapping(5, 12, rng)
    assert g.shape == (12,) and g.dtype == np.int64
    assert list(g[:5]) == [0, 1, 2, 3, 4]
    assert ((g[5:] >= 0) & (g[5:] < 5)).all()
    assert list(T.widen_mapping(5, 12, np.random.default_rng(0))) == list(g)  # seeded
    assert list(T.widen_mapping(3, 3, rng)) == [0, 1, 2]
    with pytest.raises(ValueError):
        T.widen_mapping(4, 3, rng)


def _sums(g, s, n):
    return np.bincount(g, weights=s, minlength=n)


def test_equal_split_is_one_over_the_replica_count():
    g = np.array([0, 1, 2, 0, 0, 2])
    s = T.replica_split(g, 3, "equal")
    assert np.allclose(s, [1 / 3, 1, 1 / 2, 1 / 3, 1 / 3, 1 / 2])
    assert np.allclose(_sums(g, s, 3), 1)


def test_random_split_sums_to_one_is_positive_and_breaks_symmetry():
    rng = np.random.default_rng(1)
    g = np.array([0, 1, 2, 0, 0, 2, 1])
    s = T.replica_split(g, 3, "random", rng)
    assert np.allclose(_sums(g, s, 3), 1, atol=1e-12)
    assert (s > 0).all()
    assert len({round(x, 9) for x in s[g == 0]}) == 3  # replicas differ
    g2 = np.array([0, 1, 2, 1])
    s2 = T.replica_split(g2, 3, "random", rng)
    assert s2[0] == 1.0 and s2[2] == 1.0  # channels without copies keep factor 1 exactly
    with pytest.raises(ValueError):
        T.replica_split(g, 3, "random", None)
    with pytest.raises(ValueError):
        T.replica_split(g, 3, "halves")


def test_segment_map_with_offset_and_blocks():
    # axis of 2 + 3*2 + 1 = 9 elements; 3 source channels of block 2 at offset 2; widened to 4 (ch 1 copied)
    idx, w = T.segment_map(9, [(2, 2)], 3, np.array([0, 1, 2, 1]), np.array([1, 0.5, 1, 0.5]))
    assert list(idx) == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 8]
    assert list(w) == [1, 1, 1, 1, 0.5, 0.5, 1, 1, 0.5, 0.5, 1]


def test_segment_map_two_segments_and_fresh_channels():
    idx, w = T.segment_map(5, [(0, 1), (3, 1)], 2, np.array([0, 1, -1]), np.array([1, 1, 0]))
    assert list(idx) == [0, 1, -1, 2, 3, 4, -1]
    assert list(w) == [1, 1, 0, 1, 1, 1, 0]
    with pytest.raises(ValueError):
        T.segment_map(4, [(0, 1), (1, 1)], 2, np.array([0, 1]))  # overlap
    with pytest.raises(ValueError):
        T.segment_map(3, [(2, 1)], 2, np.array([0, 1]))  # past the end


def test_take_channels_copies_and_fills():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = T.take_channels(a, np.array([2, -1, 0]), axis=0, fill=7.0)
    assert out.dtype == np.float32
    assert out.tolist() == [[8, 9, 10, 11], [7, 7, 7, 7], [0, 1, 2, 3]]
    assert T.take_channels(a, np.array([3, 3]), axis=1).tolist() == [[3, 3], [7, 7], [11, 11]]


def test_split_columns_keeps_a_linear_map():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    x = rng.standard_normal(4).astype(np.float32)
    g = T.widen_mapping(4, 9, rng)
    for split in ("equal", "random"):
        s = T.replica_split(g, 4, split, rng)
        w2 = T.split_columns(w, g, s, axis=1)
        assert w2.shape == (5, 9) and w2.dtype == np.float32
        np.testing.assert_allclose(w2 @ x[g], w @ x, rtol=1e-5, atol=1e-6)
    # fresh columns are zero
    w3 = T.split_columns(w, np.array([0, 1, 2, 3, -1]), np.array([1, 1, 1, 1, 0]), axis=1)
    assert (w3[:, 4] == 0).all() and (w3[:, :4] == w).all()


def test_identity_conv_weight_centre_tap():
    w = T.identity_conv_weight(3, 5)
    assert w.shape == (3, 3, 5, 5) and w.sum() == 3
    for i in range(3):
        assert w[i, i, 2, 2] == 1
    w13 = T.identity_conv_weight(2, (1, 3))
    assert w13[0, 0, 0, 1] == 1 and w13[1, 1, 0, 1] == 1 and w13.sum() == 2
    with pytest.raises(ValueError):
        T.identity_conv_weight(3, 4)


def test_identity_batchnorm_is_the_identity_by_its_formula():
    eps = 1e-3
    scale, bias, mean, var = T.identity_batchnorm(4, eps)
    x = np.linspace(-3, 3, 4).astype(np.float32)
    y = scale * (x - mean) / np.sqrt(var + eps) + bias
    np.testing.assert_allclose(y, x, rtol=1e-6)
    assert (mean == 0).all() and (var == 1).all() and (bias == 0).all()


def test_pad_kernel():
    w = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1)
    p = T.pad_kernel(w)
    assert p.shape == (2, 3, 5, 3)
    assert (p[:, :, 1:4, 1:2] == w).all() and p.sum() == w.sum()


@pytest.mark.parametrize("size_in,size_out,ceil,f", [
    (8, 8, False, 1), (8, 4, False, 2), (9, 3, False, 3), (7, 3, False, 2), (7, 4, True, 2),
    (8, 2, False, 4), (8, 2, True, 4),
    (5, 6, False, None), (6, 4, False, None),
])
def test_pool_factor(size_in, size_out, ceil, f):
    assert T.pool_factor(size_in, size_out, ceil) == f


def test_pool_factors_prefers_floor_and_uses_one_mode():
    assert T.pool_factors([8, 8], [4, 4]) == ([2, 2], False)
    assert T.pool_factors([7, 8], [4, 4]) == ([2, 2], True)  # 7 -> 4 needs ceil; 8 -> 4 also holds in ceil
    assert T.pool_factors([8, 6], [4, 6]) == ([2, 1], False)
    assert T.pool_factors([6, 6], [4, 4]) is None

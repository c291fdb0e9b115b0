"""Weight transforms of the morphisms, as plain numpy functions (unit-testable alone).

Layouts: Conv weights are OIHW ``(C_out, C_in/group, kH, kW)``; Gemm weights ``W[out, in]``;
per-channel arrays are indexed by channel. A *channel map* ``idx`` of a new axis gives, for each
new position, the old position it copies (``-1``: a fresh position with no source), and a
*weight* array gives the factor an absorber's input column gets there (Net2Net's split).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("equal", "random")


def widen_mapping(n: int, q: int, rng: np.random.Generator) -> np.ndarray:
    """Net2WiderNet's random mapping ``g: {0..q-1} -> {0..n-1}``.

    ``g(j) = j`` for ``j < n``; for ``n <= j < q``, ``g(j)`` is drawn uniformly from ``[0, n)``.
    Source: Chen, Goodfellow & Shlens, "Net2Net" (arXiv 1511.05641), section 2.2, eq. (1).

    Raises:
        ValueError: ``q < n`` or ``n < 1``.
    """
    if n < 1 or q < n:
        raise ValueError(f"widen_mapping needs 1 <= n <= q, got n={n}, q={q}")
    extra = rng.integers(0, n, size=q - n) if q > n else np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(n, dtype=np.int64), extra.astype(np.int64)])


def grouped_widen_mapping(n: int, q: int, groups: int, rng: np.random.Generator) -> np.ndarray:
    """Net2WiderNet's mapping kept inside ``groups`` blocks, for channels tied to a grouped Conv.

    With ``m = n / G`` old and ``p = q / G`` new channels per group, new channel ``k*p + i`` copies
    old channel ``k*m + i`` for ``i < m`` and a channel drawn uniformly from ``k*m ... k*m + m - 1``
    (its own group) for ``m <= i < p``. Every new channel then stays in the group of the channel it
    copies, so a grouped Conv reading (or writing) these channels keeps ``G`` groups of ``p``
    channels and computes the same function (Net2Net section 2.2, eq. (1), applied per group).
    ``G = 1`` is :func:`widen_mapping` (the same draws).

    Raises:
        ValueError: ``q < n``, or ``n`` or ``q`` not a multiple of ``groups``.
    """
    if groups == 1:
        return widen_mapping(n, q, rng)
    if n < 1 or q < n or n % groups or q % groups:
        raise ValueError(f"grouped_widen_mapping needs n <= q, both multiples of groups={groups}; got n={n}, "
                         f"q={q}")
    m, p = n // groups, q // groups
    extra = rng.integers(0, m, size=(groups, p - m))
    base = (np.arange(groups, dtype=np.int64) * m)[:, None]
    return np.concatenate([base + np.arange(m, dtype=np.int64)[None, :], base + extra], axis=1).reshape(-1)


def kronecker_mapping(n: int, q: int) -> np.ndarray:
    """The uniform in-place widening ``g(j) = floor(j / f)`` for ``q = f * n``: every old channel
    ``c`` becomes the ``f`` consecutive channels ``c*f ... c*f + f - 1``.

    It is Net2Net's mapping (arXiv 1511.05641, section 2.2) with every channel copied equally often
    and the copies placed next to their source, so that a value carrying old channel ``c`` at element
    ``p`` carries its replicas at ``f*p ... f*p + f - 1`` of the widened value: a Slice of the channel
    axis ``[s, e)`` becomes ``[f*s, f*e)``, and a channel permutation ``pi`` (a ShuffleNet shuffle)
    becomes ``pi'(f*o + r) = f*pi(o) + r``, the same Reshape -> Transpose -> Reshape with an inner
    sub-axis of size ``f`` that stays in place. It keeps grouped-conv groups (the copies of a channel
    stay in its group).

    Raises:
        ValueError: ``q`` is not a multiple ``f >= 1`` of ``n``.
    """
    if n < 1 or q < n or q % n:
        raise ValueError(f"kronecker_mapping needs q a multiple of n >= 1, got n={n}, q={q}")
    return np.repeat(np.arange(n, dtype=np.int64), q // n)


def label_map(labels: np.ndarray, local_idx: np.ndarray,
              local_weight: np.ndarray | None = None, block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Channel map of a widened axis whose old elements hold source channels at arbitrary positions.

    Each old element ``p`` holding source channel ``c = labels[p] >= 0`` is replaced, in place, by
    the elements of its replicas ``R(c) = {j : local_idx[j] = c}`` (in increasing ``j``); an element
    with ``labels[p] = -1`` stays one element. With a sorted ``local_idx``
    (:func:`kronecker_mapping`) this is what :func:`segment_map` gives for contiguous segments.

    Args:
        labels: int array over the old axis, source channel per element or ``-1``.
        local_idx: length ``q``; new source channel ``j`` copies old channel ``local_idx[j]``
            (no ``-1``: every new channel has a source).
        local_weight: length ``q`` factor per new channel (default 1).
        block: elements of the axis per entry of ``labels`` (``H*W`` after a Flatten of an NCHW map:
            entry ``p`` owns elements ``p*block ... p*block + block - 1``, which move as one block).

    Returns:
        ``(idx, weight)`` over the new axis: old element copied and its factor.

    Raises:
        ValueError: a fresh (``-1``) entry in ``local_idx``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    local_idx = np.asarray(local_idx, dtype=np.int64)
    if (local_idx < 0).any():
        raise ValueError("label_map needs every new channel to copy an old one (no -1 in local_idx)")
    lw = np.ones(len(local_idx)) if local_weight is None else np.asarray(local_weight, dtype=np.float64)
    n = int(max(local_idx.max(initial=-1), labels.max(initial=-1))) + 1
    order = np.argsort(local_idx, kind="stable")          # replicas grouped by source, increasing j
    counts = np.bincount(local_idx, minlength=n)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per = np.where(labels >= 0, counts[np.maximum(labels, 0)], 1)
    idx = np.repeat(np.arange(len(labels), dtype=np.int64), per)
    w = np.ones(len(idx))
    starts = np.concatenate([[0], np.cumsum(per)[:-1]])
    for p in np.nonzero(labels >= 0)[0]:
        c = labels[p]
        js = order[first[c]:first[c] + counts[c]]
        w[starts[p]:starts[p] + len(js)] = lw[js]
    if block != 1:
        idx = (idx[:, None] * block + np.arange(block)[None, :]).reshape(-1)
        w = np.repeat(w, block)
    return idx, w


def split_columns_grouped(w: np.ndarray, idx: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped Conv's OIHW weight ``(C_out, C_in/G, kH, kW)`` for a new input layout ``idx``
    (length ``q``, kept in ``G`` blocks as :func:`grouped_widen_mapping` makes it): in group ``k``
    (output rows ``k*C_out/G ...``), new input column ``i`` is old column ``idx[k*q/G + i] - k*C_in/G``
    of that group times ``weight[...]``, as :func:`split_columns` does for ``G = 1``.

    Raises:
        ValueError: a new channel of group ``k`` copies a channel of another group (the layout does
            not keep the groups), or the sizes do not divide by ``groups``.
    """
    idx = np.asarray(idx, dtype=np.int64)
    weight = np.asarray(weight, dtype=np.float64)
    cout, m = w.shape[0], w.shape[1]
    q = len(idx)
    if q % groups or cout % groups:
        raise ValueError(f"{q} new input channels or {cout} outputs do not divide into {groups} groups")
    p, r = q // groups, cout // groups
    out = np.empty((cout, p) + w.shape[2:], dtype=w.dtype)
    for k in range(groups):
        loc = idx[k * p:(k + 1) * p] - k * m
        if np.any((loc < 0) | (loc >= m)):
            raise ValueError(f"new input channels of group {k} copy channels outside old group {k}")
        out[k * r:(k + 1) * r] = split_columns(w[k * r:(k + 1) * r], loc, weight[k * p:(k + 1) * p], axis=1)
    return out


def replica_split(g: np.ndarray, n: int, split: str = "equal",
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Factors that split an absorber's input column for channel ``c`` among its replicas ``R(c)``.

    ``equal``: ``1/|R(c)|`` (Net2Net section 2.2, the ``1/|{x | g(x) = g(j)}|`` factor).
    ``random``: a Dirichlet(1, ..., 1) draw over ``R(c)``: positive factors that still sum to one,
    so the morphism stays exact while replicas get different outgoing weights (and hence different
    gradients). A channel without copies keeps factor 1 exactly.

    Args:
        g: the mapping, length ``q``.
        n: the number of source channels.
        split: ``"equal"`` or ``"random"``.
        rng: needed for ``"random"``.

    Returns:
        float64 array of length ``q``; for every ``c``, the factors over ``R(c)`` sum to one.

    Raises:
        ValueError: unknown split, or ``"random"`` without ``rng``.
    """
    g = np.asarray(g, dtype=np.int64)
    counts = np.bincount(g, minlength=n)
    if split == "equal":
        return 1.0 / counts[g]
    if split != "random":
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if rng is None:
        raise ValueError("split='random' needs an rng")
    out = np.ones(len(g), dtype=np.float64)
    for c in np.nonzero(counts > 1)[0]:
        members = np.nonzero(g == c)[0]
        out[members] = rng.dirichlet(np.ones(len(members)))
    return out


def segment_map(total: int, segments: Sequence[tuple[int, int]], n: int, local_idx: np.ndarray,
                local_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Expand a channel map of ``n -> q`` source channels to a whole axis carrying them.

    Args:
        total: the old length of the axis.
        segments: ``(offset, block)`` pairs: the ``n`` source channels occupy elements
            ``offset ... offset + n*block - 1``, channel ``c`` owning ``block`` consecutive
            elements (``block = H*W`` after a Flatten of NCHW maps, else 1). Non-overlapping.
        n: number of source channels.
        local_idx: length ``q``; new source channel ``j`` copies old channel ``local_idx[j]``
            (``-1``: fresh).
        local_weight: length ``q`` factor per new channel (default 1); applies to the whole block.

    Returns:
        ``(idx, weight)`` over the new axis: old position copied (``-1`` fresh) and its factor.
        Positions outside the segments keep their old position (shifted) with factor 1.
    """
    local_idx = np.asarray(local_idx, dtype=np.int64)
    q = len(local_idx)
    lw = np.ones(q) if local_weight is None else np.asarray(local_weight, dtype=np.float64)
    idx_parts: list[np.ndarray] = []
    w_parts: list[np.ndarray] = []
    pos = 0
    for o, b in sorted(segments):
        if o < pos:
            raise ValueError(f"segments {sorted(segments)} overlap")
        idx_parts.append(np.arange(pos, o, dtype=np.int64))
        w_parts.append(np.ones(o - pos))
        j = np.repeat(local_idx, b)
        k = np.tile(np.arange(b, dtype=np.int64), q)
        idx_parts.append(np.where(j >= 0, o + j * b + k, -1))
        w_parts.append(np.repeat(lw, b))
        pos = o + n * b
    if pos > total:
        raise ValueError(f"segments {sorted(segments)} of {n} channels run past the axis length {total}")
    idx_parts.append(np.arange(pos, total, dtype=np.int64))
    w_parts.append(np.ones(total - pos))
    return np.concatenate(idx_parts), np.concatenate(w_parts)


def take_channels(arr: np.ndarray, idx: np.ndarray, axis: int = 0, fill: float = 0.0) -> np.ndarray:
    """``arr`` remapped along ``axis``: new position ``i`` copies old ``idx[i]``; ``-1`` gets ``fill``.

    Used for producer rows (Conv OIHW axis 0, Gemm ``W[out, in]`` axis 0, biases) and per-channel
    arrays (BatchNormalization scale/bias/mean/var, per-channel Mul/Add constants, depthwise
    weights). Keeps the dtype.
    """
    idx = np.asarray(idx, dtype=np.int64)
    fresh = idx < 0
    any_fresh = bool(fresh.any())
    out = np.take(arr, np.where(fresh, 0, idx) if any_fresh else idx, axis=axis)
    if any_fresh:
        sl = [slice(None)] * arr.ndim
        sl[axis] = fresh
        out[tuple(sl)] = fill
    return out


def split_columns(w: np.ndarray, idx: np.ndarray, weight: np.ndarray, axis: int = 1) -> np.ndarray:
    """An absorber's input weights remapped along ``axis`` (Conv OIHW axis 1, Gemm ``W[out, in]``
    axis 1): new column ``i`` is old column ``idx[i]`` times ``weight[i]``; ``-1`` gives zeros.

    With the Net2Net split (:func:`replica_split`) the replicas of an old column sum to it, so the
    absorber's output is unchanged (Net2Net section 2.2, eq. (2)).
    """
    out = take_channels(w, idx, axis, fill=0.0)
    weight = np.asarray(weight, dtype=np.float64)
    if np.all(weight == 1.0):
        return out
    axis = axis % w.ndim
    lead = int(np.prod(out.shape[:axis], dtype=np.int64))
    trail = int(np.prod(out.shape[axis + 1:], dtype=np.int64))
    # scale in place as a 2-D (lead, columns * trail) view: a long inner loop is much faster than
    # broadcasting over the small kernel axes
    flat = out.reshape(lead, len(idx) * trail)
    flat *= np.repeat(weight.astype(out.dtype), trail)[None, :]
    return out


def identity_conv_weight(channels: int, kernel: int | Sequence[int], dtype=np.float32,
                         spatial: int = 2) -> np.ndarray:
    """OIHW ``(C, C, kH, kW)`` weight of a Conv that is the identity (stride 1, pads ``(k-1)//2``);
    ``(C, C, k)`` for a Conv1d (``spatial=1``), ``(C, C, kD, kH, kW)`` for 3-D.

    One at the centre tap ``((kH-1)//2, (kW-1)//2)`` of channel ``i -> i``, zero elsewhere.
    Source: Net2DeeperNet (Net2Net section 2.3) / NASH section 4.1 (morphism type I).

    Args:
        kernel: one size for every spatial axis, or one per axis (then ``spatial`` is its length).

    Raises:
        ValueError: an even kernel (no centre tap keeps the size with symmetric pads).
    """
    ks = (int(kernel),) * spatial if isinstance(kernel, (int, np.integer)) else tuple(int(k) for k in kernel)
    if any(k % 2 == 0 or k < 1 for k in ks):
        raise ValueError(f"an identity conv needs odd kernel sizes, got {'x'.join(map(str, ks))}")
    w = np.zeros((channels, channels, *ks), dtype=dtype)
    i = np.arange(channels)
    w[(i, i, *[(k - 1) // 2 for k in ks])] = 1
    return w


def identity_batchnorm(channels: int, eps: float = 1e-5, dtype=np.float32) -> tuple[np.ndarray, ...]:
    """``(scale, bias, mean, var)`` of a BatchNormalization that is the identity in inference.

    ``y = scale * (x - mean) / sqrt(var + eps) + bias`` with mean 0, var 1, scale ``sqrt(1 + eps)``
    and bias 0 gives ``y = x`` (DESIGN.md section 5, Net2Deeper).
    """
    return (np.full(channels, np.sqrt(1.0 + eps), dtype=dtype), np.zeros(channels, dtype=dtype),
            np.zeros(channels, dtype=dtype), np.ones(channels, dtype=dtype))


def pad_kernel(w: np.ndarray, by: int | Sequence[int] = 1) -> np.ndarray:
    """OIHW weight zero-padded by ``by`` taps on each side of the spatial axes: ``k -> k + 2*by``;
    ``by`` is one number for every axis or one per axis (0 keeps that axis).

    Together with pads increased by ``by * dilation`` per side the convolution is unchanged
    (Wei et al., "Network Morphism", ICML 2016, arXiv 1603.01670, section 3.4, kernel size morphing).
    """
    nsp = w.ndim - 2
    bys = [int(by)] * nsp if isinstance(by, (int, np.integer)) else [int(b) for b in by]
    out = np.zeros(w.shape[:2] + tuple(d + 2 * b for d, b in zip(w.shape[2:], bys)), dtype=w.dtype)
    out[(slice(None), slice(None)) + tuple(slice(b, -b or None) for b in bys)] = w
    return out


def pool_factor(size_in: int, size_out: int, ceil_mode: bool = False) -> int | None:
    """The pooling factor ``f`` (kernel = stride = f, no pads) that maps ``size_in`` to ``size_out``
    along one axis, or None when none does: the exact ratio when ``size_out`` divides ``size_in``
    (every input row is pooled), else the smallest ``f`` that gives ``size_out``.

    ``out = floor((size_in - f) / f) + 1``; with ``ceil_mode`` the division rounds up and a last
    window that would start past the input is dropped (the ONNX and torch rule).
    """
    if size_out > size_in or size_out < 1:
        return None
    if size_in % size_out == 0:
        return size_in // size_out
    for f in range(2, size_in + 1):
        span = size_in - f
        if ceil_mode:
            out = -(-span // f) + 1
            if (out - 1) * f >= size_in:
                out -= 1
        else:
            out = span // f + 1
        if out == size_out:
            return f
    return None


def pool_factors(size_in: Sequence[int], size_out: Sequence[int]) -> tuple[list[int], bool] | None:
    """Per-axis pooling factors mapping spatial size ``size_in`` to ``size_out`` and the
    ``ceil_mode`` they need (floor mode preferred; one mode for all axes, as the op has one
    attribute); None when no pooling with kernel = stride can match."""
    for ceil in (False, True):
        fs = [pool_factor(int(a), int(b), ceil) for a, b in zip(size_in, size_out)]
        if all(f is not None for f in fs):
            return [int(f) for f in fs], ceil
    return None


__all__ = [
    "SPLITS", "widen_mapping", "grouped_widen_mapping", "kronecker_mapping", "label_map",
    "split_columns_grouped", "replica_split",
    "segment_map", "take_channels", "split_columns",
    "identity_conv_weight", "identity_batchnorm", "pad_kernel", "pool_factor", "pool_factors",
]

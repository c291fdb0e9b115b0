"""net2wider through ShuffleNet's channel shuffle (Reshape -> Transpose -> Reshape) and Slices of the
channel axis (issue 16): the in-place layout (every channel copied f times next to itself), the
coupling of every producer a shuffle mixes, and the bound. Four kinds: structure, sites and reasons,
numerical preservation (onnxruntime), verifier/guard failures."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_nets import rand_bn

from nashir import GraphBuilder
from nashir.errors import PassError, VerifyError
from nashir.ir import Graph
from nashir.passes import NodeSite, channel_flow, check_preservation, get_pass
from nashir.passes.analysis import channel_shuffle
from nashir.passes.net2wider import new_params, remap_channels
from nashir.passes.transforms import kronecker_mapping, label_map, widen_mapping


def shuffle(b: GraphBuilder, x, groups: int, name: str):
    """ShuffleNet's channel shuffle of an N x C x H x W value (arXiv 1807.11164, Fig. 3)."""
    c, h, w = x.shape[1:]
    g = b.graph
    t1 = g.add_const(np.array([0, groups, c // groups, h, w], np.int64), f"{name}.s1")
    r = b.op("Reshape", x, t1, name=f"{name}_r1")
    t = b.op("Transpose", r, name=f"{name}_t", perm=[0, 2, 1, 3, 4])
    t2 = g.add_const(np.array([0, c, h, w], np.int64), f"{name}.s2")
    return b.op("Reshape", t, t2, name=f"{name}_r2")


def half(b, x, which: int, name: str):
    c = x.shape[1]
    return b.op("Slice", x, name=name, starts=[which * c // 2], ends=[(which + 1) * c // 2], axes=[1])


def branch(b, x, c, name, stride=1):
    h = b.relu(rand_bn(b, b.conv(x, c, kernel=1, name=f"{name}_a", bias=False), f"{name}_bna"))
    h = rand_bn(b, b.conv(h, c, group=c, stride=stride, name=f"{name}_dw", bias=False), f"{name}_bndw")
    return b.relu(rand_bn(b, b.conv(h, c, kernel=1, name=f"{name}_c"), f"{name}_bnc"), name=f"{name}_out")


def shufflenet(units: int = 3, c: int = 6, seed: int = 0) -> Graph:
    """stem (8) -> [stride-2 unit: Concat(branch1, branch2) -> shuffle] -> `units` x [Slice halves,
    Concat(x1, branch2(x2)) -> shuffle] -> 1x1 head (10) -> GAP -> Flatten -> fc: ShuffleNetV2
    (Ma et al. 2018, arXiv 1807.11164, Fig. 3 (c) and (d)) with `2c` stream channels."""
    b = GraphBuilder("shuffle", (3, 8, 8), seed=seed)
    s = b.relu(b.conv(b.input, 8, name="stem"), name="rs")
    dw = rand_bn(b, b.conv(s, 8, group=8, stride=2, name="b1_dw", bias=False), "b1_bndw")
    b1 = b.relu(rand_bn(b, b.conv(dw, c, kernel=1, name="b1_c"), "b1_bnc"), name="b1_out")
    h = shuffle(b, b.concat([b1, branch(b, s, c, "u0", stride=2)], name="cat0"), 2, "sh0")
    for u in range(1, units + 1):
        x1, x2 = half(b, h, 0, f"sl{u}a"), half(b, h, 1, f"sl{u}b")
        h = shuffle(b, b.concat([x1, branch(b, x2, c, f"u{u}")], name=f"cat{u}"), 2, f"sh{u}")
    h = b.relu(b.conv(h, 10, kernel=1, name="head"), name="rh")
    return b.build(b.gemm(b.flatten(b.global_avgpool(h)), 5, name="fc"))


def widen(g, node, seed=0, **opts):
    g2 = g.clone()
    res = get_pass("net2wider", **opts).apply(g2, NodeSite(node), np.random.default_rng(seed))
    g2.verify()
    return g2, res


STREAM = ["b1_c", "u0_c", "u1_c", "u2_c", "u3_c"]


# ---------------------------------------------------------------------------------------------- structure


def test_channel_shuffle_is_recognised_as_a_permutation():
    g = shufflenet()
    sh = channel_shuffle(g.node("sh0_r1"))
    assert sh.dims == (2, 6) and sh.sub_perm == (1, 0) and sh.last is g.node("sh0_r2")
    # output channel 2k + i is input channel i*6 + k
    assert sh.pi.tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    assert channel_shuffle(g.node("sh0_t")) is None


def test_a_branch_widens_the_whole_stream_in_place():
    """Widening one branch conv couples every conv that writes into the stage's stream; each old
    channel c becomes channels 2c, 2c+1 (rows copied), the stream 12 -> 24, slices [0:6] -> [0:12],
    the shuffle Reshape 2 x 6 -> 2 x 6 x 2 with the new axis kept in place."""
    g = shufflenet()
    g2, res = widen(g, "u2_c", factor=2)
    assert res.modified and sorted(res.info["producers"]) == sorted(STREAM)
    assert res.info["layout"] == "in-place" and res.info["to"] == 12
    assert sorted(res.info["shuffles"]) == [f"sh{u}_r1" for u in range(4)]
    for p in STREAM:
        w, w2 = g.node(p).inputs[1].const, g2.node(p).inputs[1].const
        assert w2.shape == (12, *w.shape[1:])
        np.testing.assert_array_equal(w2[0::2], w)
        np.testing.assert_array_equal(w2[1::2], w)
    assert g2.node("sl1a").attrs["starts"] == [0] and g2.node("sl1a").attrs["ends"] == [12]
    assert g2.node("sl1b").attrs["starts"] == [12] and g2.node("sl1b").attrs["ends"] == [24]
    assert g2.node("sh1_r1").inputs[1].const.tolist() == [0, 2, 6, 2, 4, 4]
    assert g2.node("sh1_t").attrs["perm"] == [0, 2, 1, 3, 4, 5]
    assert g2.node("sh1_r2").inputs[1].const.tolist() == [0, 24, 4, 4]
    assert g2.value("sh3_r2").shape == ("N", 24, 4, 4)
    # absorbers: the next units' first convs (from the slice) and the head; input columns split in two
    wh, wh2 = g.node("head").inputs[1].const, g2.node("head").inputs[1].const
    np.testing.assert_allclose(wh2[:, 0::2] + wh2[:, 1::2], wh, rtol=1e-6)
    assert res.info["new_params"] == g2.param_count() - g.param_count()


def test_a_second_widening_grows_the_inner_axis():
    g = shufflenet()
    g2, _ = widen(g, "u1_c", factor=2)
    g3, res = widen(g2, "u1_c", factor=2)
    assert g3.node("sh2_r1").inputs[1].const.tolist() == [0, 2, 6, 4, 4, 4]   # not a 7-D reshape
    assert g3.node("sh2_t").attrs["perm"] == [0, 2, 1, 3, 4, 5]
    assert res.info["from"] == 12 and res.info["to"] == 24
    assert check_preservation(g, g3).ok


def test_label_map_and_kronecker_mapping():
    assert kronecker_mapping(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    idx, w = label_map(np.array([2, -1, 0, 1]), kronecker_mapping(3, 6), np.arange(6) / 10)
    assert idx.tolist() == [0, 0, 1, 2, 2, 3, 3]
    np.testing.assert_allclose(w, [0.4, 0.5, 1, 0.0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        kronecker_mapping(3, 7)
    with pytest.raises(ValueError):
        label_map(np.array([0]), np.array([0, -1]))


def split_net(seed=0) -> Graph:
    """conv a (8) -> relu -> Slice [0:3] -> conv p ; Slice [3:8] -> conv q ; Concat -> GAP -> fc (the
    channel Split of a ShuffleNetV1/V2 block without a shuffle)."""
    b = GraphBuilder("split", (3, 6, 6), seed=seed)
    h = b.relu(rand_bn(b, b.conv(b.input, 8, name="a"), "bn_a"), name="ra")
    p = b.conv(b.op("Slice", h, name="s0", starts=[0], ends=[3], axes=[1]), 4, name="p")
    q = b.conv(b.op("Slice", h, name="s1", starts=[3], ends=[8], axes=[1]), 4, name="q")
    return b.build(b.gemm(b.flatten(b.global_avgpool(b.relu(b.concat([p, q])))), 3, name="fc"))


def test_a_channel_split_is_widened_in_place():
    g = split_net()
    g2, res = widen(g, "a", factor=2, split="random", seed=3)
    assert res.info["slices"] == ["s0", "s1"] and res.info["shuffles"] == []
    assert (g2.node("s0").attrs["starts"], g2.node("s0").attrs["ends"]) == ([0], [6])
    assert (g2.node("s1").attrs["starts"], g2.node("s1").attrs["ends"]) == ([6], [16])
    assert g2.node("p").inputs[1].const.shape[1] == 6 and g2.node("q").inputs[1].const.shape[1] == 10
    assert check_preservation(g, g2).ok


# ---------------------------------------------------------------------------------------------- sites


def test_sites_cover_the_stream_and_default_flow_still_blocks():
    g = shufflenet()
    p = get_pass("net2wider")
    sites = [s.node for s in p.sites(g)]
    covered = {q.name for s in sites for q in channel_flow(g, s, permuted=True).producers}
    convs = {nd.name for nd in g.nodes if nd.op_type in ("Conv", "Gemm")}
    assert covered == convs - {"fc"}
    assert sum(s in STREAM for s in sites) == 1        # one site for the whole coupled stream
    assert "Reshape" in channel_flow(g, "u1_c").reason    # without permuted=True the shuffle blocks


def test_factor_that_is_not_whole_is_refused_through_a_shuffle():
    g = shufflenet()
    why = get_pass("net2wider", factor=1.5).check(g, NodeSite("u1_c"))
    assert "not a whole multiple of 6" in why and "sh" in why
    assert get_pass("net2wider", width=9).check(g, NodeSite("u1_c")) is not None
    assert get_pass("net2wider", width=18).check(g, NodeSite("u1_c")) is None
    assert get_pass("net2wider", factor=1.5).check(g, NodeSite("u1_a")) is None   # no shuffle there


def test_shuffle_mixing_a_graph_input_or_another_width_is_not_a_site():
    b = GraphBuilder("mixin", (4, 4, 4))
    c = b.relu(b.conv(b.input, 4, name="c"))
    h = shuffle(b, b.concat([b.input, c]), 2, "sh")
    g = b.build(b.conv(h, 3, kernel=1, name="head"))
    assert "graph input" in get_pass("net2wider").check(g, NodeSite("c"))

    b = GraphBuilder("widths", (3, 4, 4))
    c1, c2 = b.relu(b.conv(b.input, 4, name="c1")), b.relu(b.conv(b.input, 2, name="c2"))
    h = shuffle(b, b.concat([c1, c2]), 2, "sh")
    g = b.build(b.conv(h, 3, kernel=1, name="head"))
    assert "one width" in get_pass("net2wider").check(g, NodeSite("c1"))


def test_shuffle_into_the_graph_output_is_not_a_site():
    b = GraphBuilder("out", (3, 4, 4))
    c1, c2 = b.relu(b.conv(b.input, 4, name="c1")), b.relu(b.conv(b.input, 4, name="c2"))
    g = b.build(shuffle(b, b.concat([c1, c2]), 2, "sh"))
    assert "graph output" in get_pass("net2wider").check(g, NodeSite("c1"))


# ---------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("node,factor,split,seed", [
    ("u1_c", 2, "equal", 0), ("b1_c", 4, "random", 1), ("u3_c", 3, "random", 2), ("u2_a", 2, "random", 3),
    ("stem", 2, "random", 4), ("u1_dw", 2, "random", 5), ("head", 4, "random", 6),
])
def test_widening_is_exact_on_random_inputs(node, factor, split, seed):
    g = shufflenet(seed=seed)
    g2, res = widen(g, node, seed=seed, factor=factor, split=split)
    rep = check_preservation(g, g2, seed=seed)
    assert rep.ok and rep.max_abs <= 1e-4, rep
    assert res.info["new_params"] == g2.param_count() - g.param_count()


def test_a_shuffled_stream_into_flatten_moves_whole_column_blocks():
    """stream -> shuffle -> Flatten (4 x 4 map: 16 columns per channel) -> BN-free Gemm: each copy of
    a channel takes its own block of 16 columns, split like the channel."""
    b = GraphBuilder("flat", (3, 4, 4), seed=2)
    c1, c2 = b.relu(b.conv(b.input, 3, name="c1")), b.relu(b.conv(b.input, 3, name="c2"))
    h = b.flatten(shuffle(b, b.concat([c1, c2]), 2, "sh"))
    g = b.build(b.gemm(h, 4, name="fc"))
    g2, res = widen(g, "c1", factor=2, split="random", seed=1)
    assert sorted(res.info["producers"]) == ["c1", "c2"]
    assert g2.node("fc").inputs[1].const.shape == (4, 12 * 16)
    assert res.info["new_params"] == g2.param_count() - g.param_count()
    assert check_preservation(g, g2).ok


def test_sequences_of_widenings_stay_exact():
    g = shufflenet(units=2, c=4, seed=7)
    rng = np.random.default_rng(7)
    h = g.clone()
    p = get_pass("net2wider", split="random")
    for _ in range(4):
        site = p.draw_site(h, rng)
        p.apply(h, site, rng)
        h.verify()
    assert h.param_count() > g.param_count() and check_preservation(g, h).ok


# ---------------------------------------------------------------------------------------------- failures


def test_remap_refuses_a_layout_that_breaks_the_shuffle_and_leaves_the_graph():
    g = shufflenet()
    flow = channel_flow(g, "u1_c", permuted=True)
    text = str(g)
    with pytest.raises(PassError, match="in-place layout"):
        remap_channels(g, flow, widen_mapping(6, 12, np.random.default_rng(0)))
    with pytest.raises(PassError, match="equally often"):
        remap_channels(g, flow, np.array([0, 0, 0, 1, 2, 3, 4, 5]))
    assert str(g) == text
    g.verify()


def test_a_slice_left_at_its_old_bounds_fails_verification():
    g = shufflenet()
    g2, _ = widen(g, "u1_c", factor=2)
    g2.node("sl2b").attrs = {**g2.node("sl2b").attrs, "starts": [6], "ends": [12]}
    with pytest.raises(VerifyError, match="sl2b.*shape inference gives"):
        g2.verify()


def test_new_params_is_the_growth_before_anything_is_made():
    g = shufflenet()
    flow = channel_flow(g, "u1_c", permuted=True)
    g2, res = widen(g, "u1_c", factor=4)
    assert new_params(flow, 24) == g2.param_count() - g.param_count() == res.info["new_params"]



def _torch_shufflenet():
    import torch
    from torch import nn

    def shuffle_t(x):
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)

    def br(cin, c, stride):
        return nn.Sequential(nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c),
                             nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())

    class Net(nn.Module):   # torchvision's InvertedResidual, reduced: a stride-2 unit, then a stride-1 unit
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.b1 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8),
                                    nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
            self.b2, self.u1 = br(8, 4, 2), br(4, 4, 1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x)
            x = shuffle_t(torch.cat([self.b1(x), self.b2(x)], 1))
            a, b = x.chunk(2, dim=1)
            x = shuffle_t(torch.cat([a, self.u1(b)], 1))
            return self.fc(x.mean((2, 3)))

    torch.manual_seed(0)
    m = Net().eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("keep_bn", [False, True])
def test_a_torch_exported_shufflenet_is_widened_exactly(keep_bn):
    """torch.onnx's form (x.chunk -> Split/Slice, view/transpose/view shuffle) imports into the
    recognised pattern; widening a branch couples the three convs that write into the stream."""
    from test_onnx_torch_roundtrip import _export

    import nashir

    g = nashir.load(_export(_torch_shufflenet(), "legacy", keep_bn))
    last = [nd.name for nd in g.nodes if nd.op_type == "Conv"][-1]
    flow = channel_flow(g, last, permuted=True)
    assert flow.ok and len(flow.shuffles) == 2 and len(flow.producers) == 3, flow.reason
    g2 = g.clone()
    res = get_pass("net2wider", factor=2, split="random").apply(g2, NodeSite(last), np.random.default_rng(0))
    g2.verify()
    assert res.info["to"] == 8 and res.info["new_params"] == g2.param_count() - g.param_count()
    assert check_preservation(g, g2).ok


def test_a_unit_whose_stream_comes_from_one_wider_conv_is_refused():
    """The stream of this unit is one 8-channel stem split in halves; its branch writes 4 channels.
    Coupled producers must have one width, so neither is widened through the shuffle."""
    from test_onnx_torch_roundtrip import ShuffleNetV2Block, _export

    import nashir

    g = nashir.load(_export(ShuffleNetV2Block().eval(), "legacy", False))
    last = [nd.name for nd in g.nodes if nd.op_type == "Conv"][-1]
    why = get_pass("net2wider").check(g, NodeSite(last))
    assert "channel shuffle mixes the widened 4 channels" in why and "(Conv, 8 channels)" in why

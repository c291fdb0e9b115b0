"""`nashir show`: text form, per-node table and totals; --json; --input-shape."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_onnx_support import sha256

import nashir
from nashir import GraphBuilder
from nashir.cli import main


def _model(tmp_path):
    b = GraphBuilder("net", input_shape=(3, 16, 16), seed=0)
    h = b.conv_bn_relu(b.input, 8)
    h = b.maxpool(h, 2)
    g = b.build(b.gemm(b.flatten(h), 10))
    p = tmp_path / "net.onnx"
    nashir.save(g, p)
    return p, g


def test_show_text(tmp_path, capsys):
    p, g = _model(tmp_path)
    before = sha256(p)
    assert main(["show", str(p)]) == 0
    out = capsys.readouterr().out
    g2 = nashir.load(p)
    text, _, table = out.partition("\n\n")
    assert text == str(g2)
    lines = table.strip().splitlines()
    assert lines[0].split() == ["name", "output", "op", "shape", "params", "MACs"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:-1]}
    assert list(rows) == [n.name for n in g.nodes]
    # conv: 8 x 3 x 3 x 3 weights; MACs per sample = out positions (8*16*16) x (3*3*3)
    assert rows["conv_0"] == ["conv_0", "conv_0", "Conv", "[N,8,16,16]", "216", f"{8 * 16 * 16 * 27:,}"]
    assert rows["gemm_0"][3:] == ["[N,10]", f"{10 * 512 + 10:,}", f"{10 * 512:,}"]
    assert lines[-1] == (
        f"total: {len(g.nodes)} nodes, {g.param_count():,} parameters, {g.mac_count():,} MACs per sample"
    )
    assert sha256(p) == before


def test_show_json(tmp_path, capsys):
    p, g = _model(tmp_path)
    assert main(["show", "--json", str(p)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["totals"] == {"nodes": len(g.nodes), "params": g.param_count(), "macs": g.mac_count()}
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["N", 3, 16, 16]}]
    assert [r["name"] for r in info["nodes"]] == [n.name for n in g.nodes]
    assert info["nodes"][0] == {
        "name": "conv_0",
        "output": "conv_0",
        "op_type": "Conv",
        "shape": ["N", 8, 16, 16],
        "params": 216,
        "macs": 8 * 16 * 16 * 27,
    }
    assert sum(r["params"] for r in info["nodes"]) == g.param_count()
    assert info["text"] == str(nashir.load(p))


def test_show_input_shape(tmp_path, capsys):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    gp = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "sym",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    m = helper.make_model(gp, opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "sym.onnx"
    onnx.save(m, str(p))
    assert main(["show", str(p)]) == 2
    assert "--input-shape" in capsys.readouterr().err
    assert main(["show", "--input-shape", "3,20,10", str(p)]) == 0
    out = capsys.readouterr().out
    assert "%x: float32[N,3,20,10]" in out and "[N,4,18,8]" in out
    assert main(["show", "--input-shape", "3x20x10", "--json", str(p)]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"][0]["shape"] == ["N", 4, 18, 8]


def test_show_bad_input_shape_option(tmp_path, capsys):
    p, _ = _model(tmp_path)
    assert main(["show", "--input-shape", "3,a,16", str(p)]) == 2
    err = capsys.readouterr().err
    assert "--input-shape '3,a,16' is not a list of positive integers" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["1,x,8", "3,,16", "3,16,", "x3,4", "3 x", "3,-4,4", "0,4,4"])
def test_show_input_shape_parts_are_never_dropped(tmp_path, capsys, text):
    """Every part counts: a stray "x" or an empty part is refused, never skipped."""
    p, _ = _model(tmp_path)
    assert main(["show", "--input-shape", text, str(p)]) == 2
    err = capsys.readouterr().err
    assert f"--input-shape {text!r} is not a list of positive integers" in err and "Traceback" not in err


@pytest.mark.parametrize("text, shape", [("3,16,8", (3, 16, 8)), ("3x16x8", (3, 16, 8)),
                                         ("3 16 8", (3, 16, 8)), (" 3, 16 ,8 ", (3, 16, 8))])
def test_parse_shape_forms(text, shape):
    from nashir.commands.show import parse_shape

    assert parse_shape(text) == shape


def test_show_lists_tied_weights(tmp_path, capsys):
    """A weight two nodes share (a tied layer; here two MatMuls, whose weight the importer transposes)
    stays one constant, and `nashir show` says so."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="m1"), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="m2")]
    gr = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    p = tmp_path / "tied.onnx"
    onnx.save(helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    g = nashir.load(p)
    assert g.node("m1").inputs[1] is g.node("m2").inputs[1]
    assert main(["show", str(p)]) == 0
    out = capsys.readouterr().out
    assert "tied weights" in out and "  w: m1, m2" in out
    assert main(["show", str(p), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tied"] == {"w": ["m1", "m2"]}
    p2, _ = _model(tmp_path)
    assert main(["show", str(p2)]) == 0
    assert "tied weights" not in capsys.readouterr().out

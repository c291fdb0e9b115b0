"""Bad ONNX input: each case checks the message, that no output file appears, that the input file is
unchanged, and that the CLI exits 2 without a traceback."""

from __future__ import annotations

import os

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_onnx_support import sha256

import nashir
from nashir.cli import main
from nashir.errors import ImportErrorONNX, NashirError, UnsupportedOpError


def _good_model(x_shape=("N", 3, 8, 8), x_type=TensorProto.FLOAT):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["y"], name="r"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", x_type, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _write(tmp_path, model_or_bytes, name="in.onnx"):
    p = tmp_path / name
    if isinstance(model_or_bytes, bytes):
        p.write_bytes(model_or_bytes)
    else:
        p.write_bytes(model_or_bytes.SerializeToString())
    return p


def check_bad(tmp_path, src, match, capsys, exc=ImportErrorONNX, cli_args=(), input_shape=None):
    """load -> save must fail with ``match`` and leave everything as it was; so must `nashir show`."""
    before = sha256(src) if src.exists() else None
    listing = sorted(os.listdir(tmp_path))
    dst = tmp_path / "out.onnx"
    with pytest.raises(exc, match=match):
        nashir.save(nashir.load(src, input_shape=input_shape), dst)
    assert not dst.exists()
    assert sorted(os.listdir(tmp_path)) == listing
    assert (sha256(src) if src.exists() else None) == before
    capsys.readouterr()
    assert main(["show", str(src), *cli_args]) == 2
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    assert cap.err.startswith("error: ")
    import re

    assert re.search(match, cap.err, re.S)
    assert sorted(os.listdir(tmp_path)) == listing
    assert (sha256(src) if src.exists() else None) == before
    return cap.err


@pytest.mark.parametrize(
    "content", [b"this is a text file, not a model\n", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), b""]
)
def test_not_an_onnx_file(tmp_path, capsys, content):
    src = _write(tmp_path, content, "notes.onnx")
    check_bad(tmp_path, src, r"notes\.onnx.*not (a readable|an) ONNX model", capsys)


def test_truncated_file(tmp_path, capsys):
    data = _good_model().SerializeToString()
    src = _write(tmp_path, data[: len(data) // 2])
    check_bad(tmp_path, src, r"in\.onnx.*(truncated|corrupt)", capsys)


def _externalized(tmp_path, location):
    m = _good_model()
    t = m.graph.initializer[0]
    raw = numpy_helper.to_array(t).tobytes()
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return m, raw


def test_missing_external_data(tmp_path, capsys):
    m, _ = _externalized(tmp_path, "w.bin")
    src = _write(tmp_path, m)
    check_bad(tmp_path, src, r"tensor 'w'.*external data file 'w\.bin' is missing", capsys)


def test_truncated_external_data(tmp_path, capsys):
    m, raw = _externalized(tmp_path, "w.bin")
    src = _write(tmp_path, m)
    (tmp_path / "w.bin").write_bytes(raw[:10])
    check_bad(tmp_path, src, r"'w\.bin' is truncated", capsys)


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_escaping_the_folder(tmp_path, capsys, location):
    m, raw = _externalized(tmp_path, location)
    inner = tmp_path / "model"
    inner.mkdir()
    (tmp_path / "w.bin").write_bytes(raw)  # exists, but outside the model's folder
    src = _write(inner, m)
    check_bad(inner, src, r"escapes the model's folder", capsys)


def test_unsupported_ops_listed_all_at_once(tmp_path, capsys):
    m = _good_model()
    g = m.graph
    g.node[1].output[0] = "r"
    g.node.extend(
        [
            helper.make_node("Elu", ["r"], ["e1"], name="elu_a"),
            helper.make_node("Elu", ["e1"], ["e2"], name="elu_b"),
            helper.make_node("HardSwish", ["e2"], ["h"], name="hs"),
            helper.make_node("FusedConv", ["h"], ["y"], name="fused", domain="com.microsoft"),
        ]
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    src = _write(tmp_path, m)
    err = check_bad(tmp_path, src, r"Elu: elu_a, elu_b", capsys, exc=UnsupportedOpError)
    assert (
        "HardSwish: hs" in err and "com.microsoft::FusedConv: fused" in err and "nothing was written" in err
    )
    with pytest.raises(UnsupportedOpError) as ei:
        nashir.load(src)
    assert ei.value.ops == {
        "Elu": ["elu_a", "elu_b"],
        "HardSwish": ["hs"],
        "com.microsoft::FusedConv": ["fused"],
    }


def test_cycle(tmp_path, capsys):
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"], name="first"),
        helper.make_node("Relu", ["a"], ["b"], name="second"),
        helper.make_node("Relu", ["b"], ["y"], name="third"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    src = _write(tmp_path, m)
    check_bad(tmp_path, src, r"cycle through node\(s\) \['first', 'second', 'third'\]", capsys)


@pytest.mark.parametrize("elem", [TensorProto.INT64, TensorProto.UINT8])
def test_non_float_data_input(tmp_path, capsys, elem):
    src = _write(tmp_path, _good_model(x_type=elem))
    name = TensorProto.DataType.Name(elem)
    check_bad(tmp_path, src, rf"graph input 'x' has element type {name}; nashir needs a float32", capsys)


def test_unresolved_non_batch_dimension(tmp_path, capsys):
    src = _write(tmp_path, _good_model(x_shape=("N", 3, "height", "width")))
    msg = r"shape \['N', 3, 'height', 'width'\] with unresolved non-batch dimension.*position\(s\) \[2, 3\]"
    check_bad(tmp_path, src, msg + r".*--input-shape", capsys)
    # and with the option the same model loads
    g = nashir.load(src, input_shape=(3, 16, 16))
    assert g.outputs[0].shape == ("N", 4, 14, 14)


def test_input_shape_contradicting_the_model(tmp_path, capsys):
    src = _write(tmp_path, _good_model())
    check_bad(
        tmp_path,
        src,
        r"input_shape \(4, 8, 8\) contradicts input 'x'",
        capsys,
        cli_args=("--input-shape", "4,8,8"),
        input_shape=(4, 8, 8),
    )


def test_show_missing_path(tmp_path, capsys):
    src = tmp_path / "nope.onnx"
    check_bad(tmp_path, src, r"model file '.*nope\.onnx' does not exist", capsys)


def test_errors_are_nashir_errors_with_exit_code_2():
    assert issubclass(ImportErrorONNX, NashirError) and ImportErrorONNX.exit_code == 2

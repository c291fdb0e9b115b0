"""Review regressions for ONNX in and out and `nashir show`:

* ``save`` over an existing device/pipe (``os.replace`` would swap a regular file in, e.g. over
  ``/dev/null`` when run as root), a NUL in the path, a file name near the 255-byte limit;
* a malformed model (a required attribute missing, an unknown element type) is an
  ImportErrorONNX naming the node, not a Python traceback;
* IR-only intermediates made by the importer (Sum chains, the pre-13 Softmax reshapes, the
  Transpose of a transA Gemm) never shadow a value of the source model of the same name;
* ``ReduceMean`` over the spatial axes with ``keepdims=0`` (torch's ``x.mean((2, 3))``) imports as
  GlobalAveragePool + Flatten;
* a Reshape that mixes the batch with other dimensions says so (not "give --input-shape"); a node
  error is prefixed with the node's name once.

Expected values come from onnxruntime on the source model and from torch.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_onnx_bad_input import _good_model, _write, check_bad

import nashir
from nashir import GraphBuilder
from nashir.backends.onnx import run
from nashir.backends.onnx.exporter import ExportError
from nashir.errors import ImportErrorONNX


def _vi(name, shape=None, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opset=13):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, feeds):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _small_graph():
    b = GraphBuilder("s", input_shape=(3, 4, 4), seed=0)
    return b.build(b.relu(b.conv(b.input, 2)))


# ------------------------------------------------------------------------------------------- save


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_save_refuses_to_replace_a_pipe(tmp_path):
    target = tmp_path / "model.onnx"
    os.mkfifo(target)
    match = r"model.onnx'.*not a regular file.*give the path of a regular file"
    with pytest.raises(ExportError, match=match):
        nashir.save(_small_graph(), target)
    assert stat.S_ISFIFO(os.lstat(target).st_mode)
    assert os.listdir(tmp_path) == ["model.onnx"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_save_external_data_refuses_a_pipe_as_data_file(tmp_path):
    os.mkfifo(tmp_path / "model.onnx.data")
    with pytest.raises(ExportError, match=r"model.onnx.data'.*not a regular file"):
        nashir.save(_small_graph(), tmp_path / "model.onnx", external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["model.onnx.data"]


def test_save_path_with_nul_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="NUL character"):
        nashir.save(_small_graph(), str(tmp_path / "a\x00b.onnx"))
    assert os.listdir(tmp_path) == []


def test_save_file_name_near_the_length_limit(tmp_path):
    name = "m" * 245 + ".onnx"   # 250 bytes: the temp file's name must not exceed 255
    nashir.save(_small_graph(), tmp_path / name)
    assert os.listdir(tmp_path) == [name]
    assert str(nashir.load(tmp_path / name)) == str(_small_graph())


# ------------------------------------------------------------------------------------------- malformed


def test_missing_required_attribute_is_an_import_error(tmp_path, capsys):
    m = _model([helper.make_node("MaxPool", ["x"], ["y"], name="mp")], [_vi("x", [1, 3, 4, 4])], [_vi("y")])
    src = _write(tmp_path, m)
    match = r"node 'mp' \(MaxPool\): the model is malformed.*KeyError.*check_model"
    err = check_bad(tmp_path, src, match, capsys)
    assert "in.onnx" in err


def test_unknown_element_type_is_an_import_error(tmp_path, capsys):
    m = _good_model()
    m.graph.input[0].type.tensor_type.elem_type = 123
    src = _write(tmp_path, m)
    check_bad(tmp_path, src, r"the model is malformed.*DataType.*123", capsys)


# ------------------------------------------------------------------------------------------- names


def _shadow_cases():
    w = np.random.default_rng(1).normal(size=(12, 5)).astype(np.float32)
    x = [_vi("x", [1, 3, 2, 2])]
    return {
        # pre-13 Softmax over the flattened C,H,W: the importer's reshape is called y_2d
        "softmax": _model([
            helper.make_node("Relu", ["x"], ["y_2d"], name="r"),
            helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=1),
            helper.make_node("Add", ["y", "y_2d"], ["z"], name="add"),
        ], x, [_vi("z", [1, 3, 2, 2])], opset=11),
        # Sum of three: the importer's partial sum is called s_partial1
        "sum": _model([
            helper.make_node("Sigmoid", ["x"], ["s_partial1"], name="sg"),
            helper.make_node("Sum", ["x", "x", "x"], ["s"], name="sum"),
            helper.make_node("Mul", ["s", "s_partial1"], ["z"], name="mul"),
        ], x, [_vi("z", [1, 3, 2, 2])]),
        # Gemm transA=1: the importer's Transpose output is called y_transA
        "gemm_transA": _model([
            helper.make_node("Flatten", ["x"], ["f"], name="fl", axis=1),
            helper.make_node("Transpose", ["f"], ["ft"], name="t", perm=[1, 0]),
            helper.make_node("Sigmoid", ["ft"], ["y_transA"], name="sg"),
            helper.make_node("Gemm", ["ft", "W"], ["y"], name="g", transA=1),
            helper.make_node("Relu", ["y_transA"], ["z2"], name="r"),
        ], x, [_vi("y"), _vi("z2")], [numpy_helper.from_array(w, "W")]),
    }


@pytest.mark.parametrize("case", ["softmax", "sum", "gemm_transA"])
def test_importer_intermediates_never_shadow_model_values(case, tmp_path):
    m = _shadow_cases()[case]
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 2)).astype(np.float32)
    want = _ort(m, {"x": x})
    g = nashir.load(m)
    assert [o.name for o in g.outputs] == [o.name for o in m.graph.output]   # real names kept
    nashir.save(g, tmp_path / "out.onnx")
    got = run(tmp_path / "out.onnx", x)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- ReduceMean


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_keepdims0_is_global_pool_then_flatten(opset, tmp_path):
    if opset >= 18:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm", keepdims=0)
        inits = [numpy_helper.from_array(np.array([-1, -2], np.int64), "axes")]
    else:
        node = helper.make_node("ReduceMean", ["x"], ["y"], name="rm", axes=[2, 3], keepdims=0)
        inits = []
    m = _model([node], [_vi("x", [2, 3, 5, 4])], [_vi("y")], inits, opset=opset)
    g = nashir.load(m)
    assert [n.op_type for n in g.nodes] == ["GlobalAveragePool", "Flatten"]
    assert g.outputs[0].name == "y" and g.outputs[0].shape == ("N", 3)
    nashir.save(g, tmp_path / "out.onnx")
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(run(tmp_path / "out.onnx", x)[0], _ort(m, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_reduce_mean_over_channels_still_refused(tmp_path, capsys):
    m = _model([helper.make_node("ReduceMean", ["x"], ["y"], name="rm", axes=[1], keepdims=0)],
               [_vi("x", [1, 3, 4, 4])], [_vi("y")])
    check_bad(tmp_path, _write(tmp_path, m), r"ReduceMean: rm \(axes \[1\], keepdims=0", capsys,
              exc=nashir.errors.UnsupportedOpError)


def test_torch_mean_over_spatial_axes_round_trips(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    src = tmp_path / "mean.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 6, 6),), str(src), dynamo=False, input_names=["x"])
    g = nashir.load(src)
    assert "ReduceMean" not in {n.op_type for n in g.nodes}
    nashir.save(g, tmp_path / "out.onnx")
    x = torch.randn(7, 3, 6, 6)
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(run(tmp_path / "out.onnx", x.numpy())[0], want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- messages


@pytest.mark.parametrize("target", [[-1], [-1, 16], [6, -1]])
def test_reshape_mixing_the_batch_says_so(target, tmp_path, capsys):
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")], [_vi("x", [2, 3, 4, 4])],
               [_vi("y")], [numpy_helper.from_array(np.array(target, np.int64), "s")])
    err = check_bad(tmp_path, _write(tmp_path, m), r"node 'r' \(Reshape\).*mixes the batch dimension", capsys)
    assert "--input-shape" not in err


def test_node_error_names_the_node_once(tmp_path, capsys):
    src = _write(tmp_path, _good_model(x_shape=("N", 3, "h", "w")))
    err = check_bad(tmp_path, src, r"node 'conv' \(Conv\).*does not fit", capsys,
                    cli_args=("--input-shape", "3,2,2"), input_shape=(3, 2, 2))
    assert err.count("node 'conv'") == 1


# ------------------------------------------------------------------------------------------- input_shape


@pytest.mark.parametrize("shape", [(3, "x", 9), (3.5, 9, 9), "3,9,9", 5, (3, -9, 9), (), (True, 9, 9)])
def test_bad_input_shape_argument_is_named_not_blamed_on_the_model(shape):
    m = _good_model(x_shape=("N", 3, "h", "w"))
    match = r"input_shape .* is not a sequence of positive integers.*3, 224, 224"
    with pytest.raises(ImportErrorONNX, match=match):
        nashir.load(m, input_shape=shape)


@pytest.mark.parametrize("shape", [(3, 9, 9), [3, 9, 9], (1, 3, 9, 9), np.array([3, 9, 9]), {"x": (3, 9, 9)}])
def test_good_input_shape_arguments(shape):
    g = nashir.load(_good_model(x_shape=("N", 3, "h", "w")), input_shape=shape)
    assert g.inputs[0].shape == ("N", 3, 9, 9)


def test_input_shape_for_an_unknown_input_is_refused():
    m = _good_model(x_shape=("N", 3, "h", "w"))
    with pytest.raises(ImportErrorONNX, match=r"input_shape names 'zz', which is not a data input.*\['x'\]"):
        nashir.load(m, input_shape={"zz": (3, 9, 9), "x": (3, 9, 9)})


def test_failed_external_data_save_keeps_the_old_pair(tmp_path, monkeypatch):
    """The model's temp file fails to write after the data file's temp file was written: neither the
    old model nor its old data file may change (before, the new data file was already in place)."""
    import nashir.backends.onnx.exporter as exporter

    b = GraphBuilder("big", input_shape=(3, 8, 8), seed=0)
    old = b.build(b.relu(b.conv(b.input, 64)))             # a 7 KB weight: goes to the data file
    dst = tmp_path / "m.onnx"
    nashir.save(old, dst, external_data=True)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}

    b2 = GraphBuilder("big", input_shape=(3, 8, 8), seed=1)
    new = b2.build(b2.relu(b2.conv(b2.input, 64)))
    real = exporter.tempfile.mkstemp

    def failing(*args, prefix="", **kw):
        if prefix.startswith(".m.onnx.") and not prefix.startswith(".m.onnx.data."):   # the model's temp
            raise OSError(28, "No space left on device")
        return real(*args, prefix=prefix, **kw)

    monkeypatch.setattr(exporter.tempfile, "mkstemp", failing)
    with pytest.raises(nashir.errors.BackendError, match="No space left on device"):
        nashir.save(new, dst, external_data=True)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before   # no temp files either
    monkeypatch.undo()
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(dst, x)[0], run(old, x)[0])

"""What ONNX has no field for travels in model metadata: Net2Deeper's calibration mark, Dropout
ratios and the input normalisation a model was trained with."""

import numpy as np
import onnx
from onnx import TensorProto, helper

from nashir import GraphBuilder
from nashir.backends.onnx import from_onnx, load, model_bytes, to_onnx


def _net():
    b = GraphBuilder("m", input_shape=(1, 8, 8), seed=0)
    h = b.conv_bn_relu(b.input, 4)
    h = b.gemm(b.flatten(h), 3)
    return b.build(h)


def test_calibration_mark_and_normalization_survive_a_round_trip():
    g = _net()
    bn = next(n for n in g.nodes if n.op_type == "BatchNormalization")
    bn.meta["calibrate"] = "identity"
    bn.meta["scratch"] = object()  # not carried: not JSON, not in the carried keys
    g.meta["input_normalization"] = {"mean": [4.5], "std": [6.25]}
    g2 = load(model_bytes(g))
    assert g2.node(bn.name).meta == {"calibrate": "identity"}
    assert g2.meta["input_normalization"] == {"mean": [4.5], "std": [6.25]}
    assert str(g2) == str(g)


def test_no_metadata_when_nothing_to_carry():
    m = to_onnx(_net())
    assert list(m.metadata_props) == []


def test_malformed_metadata_is_ignored():
    m = to_onnx(_net())
    e = m.metadata_props.add()
    e.key, e.value = "nashir.node_meta", "{not json"
    e = m.metadata_props.add()
    e.key, e.value = "nashir.input_normalization", '{"mean": 1}'
    g = from_onnx(m)
    assert all("calibrate" not in n.meta for n in g.nodes)
    assert "input_normalization" not in g.meta


def test_dropout_ratio_is_kept_for_training():
    for opset, ratio_as_input in ((11, False), (13, True)):
        inits = []
        if ratio_as_input:
            inits.append(helper.make_tensor("r", TensorProto.FLOAT, [], [0.3]))
            drop = helper.make_node("Dropout", ["x", "r"], ["y"], name="drop")
        else:
            drop = helper.make_node("Dropout", ["x"], ["y"], name="drop", ratio=0.3)
        graph = helper.make_graph(
            [drop, helper.make_node("Relu", ["y"], ["z"], name="relu")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
            [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3, 4, 4])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 7
        g = from_onnx(model)
        assert np.isclose(g.node("drop").meta["ratio"], 0.3)
        assert np.isclose(load(onnx.load_from_string(model_bytes(g))).node("drop").meta["ratio"], 0.3)


def test_trained_graph_records_its_input_normalization():
    from nashir.backends.torch import train
    from nashir.backends.torch.sgdr import TrainConfig
    from nashir.data import load_dataset

    data = load_dataset("digits")
    b = GraphBuilder("m", input_shape=(1, 8, 8), seed=0)
    g = b.build(b.gemm(b.flatten(b.conv_bn_relu(b.input, 4)), 10))
    trained, _ = train(g, data, TrainConfig(epochs=1, device="cpu", threads=1))
    norm = load(model_bytes(trained)).meta["input_normalization"]
    assert np.allclose(norm["mean"], data.mean) and np.allclose(norm["std"], data.std)
    assert "input_normalization" not in g.meta

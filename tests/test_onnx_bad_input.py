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
            helper.make_node("Erf", ["r"], ["e1"], name="erf_a"),
            helper.make_node("Erf", ["e1"], ["e2"], name="erf_b"),
            helper.make_node("Selu", ["e2"], ["h"], name="selu"),
            helper.make_node("FusedConv", ["h"], ["y"], name="fused", domain="com.microsoft"),
        ]
    )
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    src = _write(tmp_path, m)
    err = check_bad(tmp_path, src, r"Erf: erf_a, erf_b", capsys, exc=UnsupportedOpError)
    assert (
        "Selu: selu" in err and "com.microsoft::FusedConv: fused" in err and "nothing was written" in err
    )
    with pytest.raises(UnsupportedOpError) as ei:
        nashir.load(src)
    assert ei.value.ops == {
        "Erf": ["erf_a", "erf_b"],
        "Selu": ["selu"],
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


# ------------------------------------------------------------- allocations sized by the claim, not the file


def _sparse(path, size):
    """A file of ``size`` bytes that takes no disk space (a hole)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("length", [None, ""])
def test_external_data_in_a_huge_file_reads_only_the_tensor(tmp_path, length):
    """A 432-byte tensor whose location is a 4 GiB file (no length given) reads its 432 bytes only."""
    m, raw = _externalized(tmp_path, "w.bin")
    t = m.graph.initializer[0]
    if length is None:
        del t.external_data[2]
    else:
        t.external_data[2].value = length
    src = _write(tmp_path, m)
    with open(_sparse(tmp_path / "w.bin", 4 << 30), "r+b") as f:
        f.write(raw)
    g = nashir.load(src)
    assert np.array_equal(g.values["w"].const, np.ones((4, 3, 3, 3), np.float32))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("length", str(8 << 30), r"claims 8589934592 bytes in 'w\.bin', but its shape \[4, 3, 3, 3\] "
                                 r"needs 432"),
        ("length", "-5", r"length '-5' is not a byte count >= 0"),
        ("offset", "-1", r"offset '-1' is not a byte count >= 0"),
        ("offset", "ten", r"offset 'ten' is not a byte count >= 0"),
        ("offset", str(4 << 30), r"'w\.bin' is truncated \(0 of 432 bytes at offset 4294967296\)"),
    ],
)
def test_external_data_claims_are_checked_before_reading(tmp_path, capsys, key, value, match):
    m, raw = _externalized(tmp_path, "w.bin")
    for e in m.graph.initializer[0].external_data:
        if e.key == key:
            e.value = value
    src = _write(tmp_path, m)
    _sparse(tmp_path / "w.bin", 1 << 30)
    check_bad(tmp_path, src, match, capsys)


def test_external_data_of_a_huge_shape_in_a_small_file(tmp_path, capsys):
    """A tensor claiming 2**34 floats: refused from the file's size, nothing read or allocated."""
    m, raw = _externalized(tmp_path, "w.bin")
    t = m.graph.initializer[0]
    del t.dims[:]
    t.dims.extend([1 << 17, 1 << 17])
    del t.external_data[2]
    src = _write(tmp_path, m)
    (tmp_path / "w.bin").write_bytes(raw)
    check_bad(tmp_path, src, r"'w\.bin' is truncated \(432 of 68719476736 bytes", capsys)


def _folding_model(nodes, inits=(), out="b"):
    """conv(x) + b, where b is computed by ``nodes`` from constants (named ``b``)."""
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), *nodes,
         helper.make_node("Add", ["c", out], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w, *inits],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, np.int64), name)


_HUGE = [1 << 20, 1 << 20]   # 2**40 values: 4 TiB of float32
FOLDS = {
    "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["s"], ["b"], name="fill",
                                          value=numpy_helper.from_array(np.ones(1, np.float32)))],
                        [_i64("s", _HUGE)]),
    "Expand": ([helper.make_node("Expand", ["one", "s"], ["b"], name="fill")],
               [numpy_helper.from_array(np.ones(1, np.float32), "one"), _i64("s", _HUGE)]),
    "Tile": ([helper.make_node("Tile", ["one", "s"], ["b"], name="fill")],
             [numpy_helper.from_array(np.ones((1, 1), np.float32), "one"), _i64("s", _HUGE)]),
    "Range": ([helper.make_node("Range", ["a", "z", "d"], ["r"], name="fill"),
               helper.make_node("Cast", ["r"], ["b"], name="cast", to=TensorProto.FLOAT)],
              [_i64("a", 0), _i64("z", 1 << 40), _i64("d", 1)]),
    "Pad": ([helper.make_node("Pad", ["one", "p"], ["b"], name="fill")],
            [numpy_helper.from_array(np.ones((1, 1), np.float32), "one"),
             _i64("p", [0, 0, 1 << 20, 1 << 20])]),
    "Mul broadcast": ([helper.make_node("Mul", ["u", "v"], ["b"], name="fill")],
                      [numpy_helper.from_array(np.ones((5000, 1), np.float32), "u"),
                       numpy_helper.from_array(np.ones((1, 20000), np.float32), "v")]),
}


@pytest.mark.parametrize("kind", sorted(FOLDS))
def test_constant_folding_is_bounded(tmp_path, capsys, kind):
    """A model of a few hundred bytes asking constant folding for GBs is refused before allocating."""
    nodes, inits = FOLDS[kind]
    src = _write(tmp_path, _folding_model(nodes, inits))
    assert src.stat().st_size < 4096 or kind == "Mul broadcast"
    check_bad(tmp_path, src, r"node 'fill' \(\w+\) on constant inputs would make a [\d.]+ [GMT]iB constant.*"
                             r"folding budget", capsys)


def test_constant_folding_budget_counts_every_fold(tmp_path, capsys, monkeypatch):
    """Many folds each under the budget, together over it: refused at the first one past it."""
    from nashir.backends.onnx import importer

    monkeypatch.setattr(importer, "MAX_FOLD_BYTES", 1 << 20)
    nodes, inits = [], [_i64("s", [64, 1024])]   # 256 KiB each
    for k in range(8):
        nodes.append(helper.make_node("ConstantOfShape", ["s"], [f"f{k}"], name=f"fill{k}",
                                      value=numpy_helper.from_array(np.zeros(1, np.float32))))
    nodes.append(helper.make_node("Sum", [f"f{k}" for k in range(8)], ["s8"], name="sum"))
    nodes.append(helper.make_node("ReduceSum", ["s8"], ["b"], name="red", keepdims=0))
    src = _write(tmp_path, _folding_model(nodes, inits))
    check_bad(tmp_path, src, r"node 'fill\d' \(ConstantOfShape\).*256\.0 KiB constant.*budget of 1\.0 MiB",
              capsys)


def test_folding_within_the_budget_still_works(tmp_path):
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["b"], name="fill",
                              value=numpy_helper.from_array(np.full(1, 0.5, np.float32)))]
    g = nashir.load(_write(tmp_path, _folding_model(nodes, [_i64("s", [1, 4, 1, 1])])))
    assert [n.op_type for n in g.nodes] == ["Conv", "Add"]


@pytest.mark.parametrize("shape", [("N", 3, 1 << 31, 1 << 31), (1, 3, 1 << 16, 1 << 15)])
def test_oversized_declared_input(tmp_path, capsys, shape):
    src = _write(tmp_path, _good_model(x_shape=shape))
    check_bad(tmp_path, src, r"graph input 'x' has shape .* values per sample, above nashir's cap of "
                             r"1,073,741,824 \(MAX_INPUT_ELEMENTS\)", capsys)


def test_oversized_input_shape_option(tmp_path, capsys):
    src = _write(tmp_path, _good_model(x_shape=("N", 3, "h", "w")))
    check_bad(tmp_path, src, r"above nashir's cap", capsys, cli_args=("--input-shape", "3,65536,65536"),
              input_shape=(3, 65536, 65536))


def test_model_file_over_protobufs_limit_is_not_read(tmp_path, capsys):
    src = _sparse(tmp_path / "big.onnx", (2 << 30) + 1)
    before = src.stat()
    with pytest.raises(ImportErrorONNX, match=r"big\.onnx' is 2\.0 GiB, above protobuf's 2 GiB limit"):
        nashir.load(src)
    assert main(["show", str(src)]) == 2
    assert "above protobuf's 2 GiB limit" in capsys.readouterr().err
    after = src.stat()
    assert os.listdir(tmp_path) == ["big.onnx"]
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_constant_node_external_data_is_confined_and_bounded(tmp_path, capsys):
    """A Constant node's tensor kept in external data goes through the same checks as an initializer."""
    t = numpy_helper.from_array(np.ones(4, np.float32), "bval")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../secret.bin"
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    inner = tmp_path / "m"
    inner.mkdir()
    nodes = [helper.make_node("Constant", [], ["b0"], name="k", value=t),
             helper.make_node("Reshape", ["b0", "s"], ["b"], name="rs")]
    src = _write(inner, _folding_model(nodes, [_i64("s", [1, 4, 1, 1])]))
    check_bad(inner, src, r"tensor 'bval': external data location '\.\./secret\.bin' escapes", capsys)


# ------------------------------------------------------------------ fuzz: random malformed models


def _fuzz_base(tmp_path, external):
    w = numpy_helper.from_array(np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ConstantOfShape", ["s"], ["b"], name="fill",
                              value=numpy_helper.from_array(np.ones(1, np.float32))),
             helper.make_node("Add", ["c", "b"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    inits = [w, _i64("s", [1, 4, 1, 1]), numpy_helper.from_array(np.ones((2, 4), np.float32), "fw"),
             numpy_helper.from_array(np.zeros(2, np.float32), "fb")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if external:
        t = m.graph.initializer[0]
        raw = numpy_helper.to_array(t).tobytes()
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "w.bin"), ("offset", "0"), ("length", str(len(raw)))):
            e = t.external_data.add()
            e.key, e.value = k, v
        (tmp_path / "w.bin").write_bytes(raw)
    return m


def _mutate(rng, m):
    """Truncate, flip bits, or make one claim oversized (shape, external offset/length, fold, input)."""
    import onnx

    data = bytearray(m.SerializeToString())
    kind = rng.choice(["truncated", "bit-flipped", "oversized claim"])
    if kind == "truncated":
        return kind, bytes(data[: rng.randrange(len(data))])
    if kind == "bit-flipped":
        for _ in range(rng.randint(1, 8)):
            k = rng.randrange(len(data))
            data[k] ^= 1 << rng.randrange(8)
        return kind, bytes(data)
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    huge = rng.choice([1 << 20, 1 << 31, 1 << 40, -1, 0])
    c = rng.randrange(5)
    if c == 0:
        m2.graph.initializer[1].ClearField("raw_data")
        m2.graph.initializer[1].int64_data[:] = [1, huge, huge, 1]
    elif c == 1:
        t = m2.graph.initializer[rng.randrange(4)]
        t.dims[rng.randrange(len(t.dims))] = huge
    elif c == 2:
        m2.graph.input[0].type.tensor_type.shape.dim[rng.randrange(1, 4)].dim_value = huge
    elif c == 3 and m2.graph.initializer[0].external_data:
        m2.graph.initializer[0].external_data[rng.randrange(3)].value = str(huge)
    else:
        m2.graph.node[rng.randrange(7)].attribute.add().CopyFrom(helper.make_attribute("pads", [huge] * 4))
    return kind, m2.SerializeToString()


def test_fuzz_malformed_models_raise_nashir_errors_within_the_memory_cap(tmp_path, monkeypatch, capsys):
    """300 random malformed models (truncated, bit-flipped, oversized claims), with and without external data:
    each either loads or raises a NashirError, never another exception, and no case allocates (numpy,
    traced) more than 64 MiB; every 10th also goes through `nashir show` (exit 0 or 2, no traceback)."""
    import random
    import tracemalloc

    from nashir.backends.onnx import importer

    monkeypatch.setattr(importer, "MAX_FOLD_BYTES", 16 << 20)
    rng = random.Random(12)
    bases = {ext: _fuzz_base(tmp_path, ext) for ext in (False, True)}
    outcomes: dict = {}
    tracemalloc.start()
    try:
        for i in range(300):
            kind, data = _mutate(rng, bases[rng.random() < 0.5])
            src = tmp_path / "m.onnx"
            src.write_bytes(data)
            tracemalloc.reset_peak()
            try:
                nashir.load(src)
                res = "loaded"
            except NashirError:
                res = "NashirError"
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 64 << 20, (i, kind, peak)
            outcomes[(kind, res)] = outcomes.get((kind, res), 0) + 1
            if i % 10 == 0:
                capsys.readouterr()
                assert main(["show", str(src)]) in (0, 2)
                cap = capsys.readouterr()
                assert "Traceback" not in cap.err
    finally:
        tracemalloc.stop()
    assert all(outcomes.get((k, "NashirError")) for k in ("truncated", "bit-flipped", "oversized claim"))

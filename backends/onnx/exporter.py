"""IR -> ONNX: :func:`to_onnx`, :func:`save` (atomic, optional external data), :func:`model_bytes`.

Export writes ONNX opset :data:`EXPORT_OPSET` (17) with IR version :data:`EXPORT_IR_VERSION` (8)
unless asked for another opset. Why 17 / IR 8: the IR keeps opset-17 semantics (Clip min/max as
inputs, Softmax on one axis, BatchNormalization without ``spatial``, Dropout with inputs), and onnxruntime
implements opset 17 / IR 8 from release 1.13 on (onnxruntime 1.17 implements up to opset 20 /
IR 9), while the newest opsets the ``onnx`` package defines are often ahead of the runtimes users
deploy. Weights are initializers that are *not* listed as graph inputs; the batch dimension of
inputs and outputs is symbolic (``N`` unless the IR names another symbol).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import nashir
from nashir.errors import BackendError, NashirError
from nashir.files import give_default_mode
from nashir.ir import Graph

#: Model metadata key holding node ``meta`` entries that ONNX has no field for (JSON object
#: node name -> {key: value}); only the keys in :data:`CARRIED_NODE_META` travel.
NODE_META_KEY = "nashir.node_meta"
#: Node ``meta`` keys kept through ONNX: Net2Deeper's BatchNorm calibration mark and a Dropout ratio.
CARRIED_NODE_META = ("calibrate", "ratio")
#: Model metadata key holding the input normalisation the network was trained with
#: (JSON ``{"mean": [C floats], "std": [C floats]}``, in units of the raw stored pixel values).
NORMALIZATION_KEY = "nashir.input_normalization"

#: Default export opset (ONNX default domain) and the IR version that goes with it.
EXPORT_OPSET = 17
EXPORT_IR_VERSION = 8
#: Lowest opset the exporter writes: Softmax-13 semantics (one axis) and Clip-11 inputs.
MIN_EXPORT_OPSET = 13

#: Attribute values that mean "the ONNX default" and may be dropped when the target opset's schema
#: lacks the attribute (e.g. AveragePool ``dilations`` before opset 19, Reshape ``allowzero`` before 14).
_NEUTRAL = {
    "dilations": lambda v: all(int(x) == 1 for x in v),
    "allowzero": lambda v: int(v) == 0,
    "auto_pad": lambda v: v == "NOTSET",
    "storage_order": lambda v: int(v) == 0,
    "count_include_pad": lambda v: int(v) == 0,
    "ceil_mode": lambda v: int(v) == 0,
    "momentum": lambda v: True,  # only meaningful in training mode; inference ignores it
}

_NP2ONNX = {
    "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64, "int32": TensorProto.INT32, "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL,
}

_TWO_GIB = 2**31


class ExportError(NashirError):
    """The graph cannot be written as ONNX at the asked opset (names the node and the attribute)."""


def ir_version_for(opset: int) -> int:
    """The lowest ONNX IR version that goes with ``opset`` of the default domain (onnx's version table)."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)], ignore_unknown=True)


def _check_opset(opset: int) -> int:
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, (int, np.integer)) or not MIN_EXPORT_OPSET <= int(opset) <= newest:
        raise ExportError(
            f"opset {opset!r} cannot be exported: nashir writes opsets {MIN_EXPORT_OPSET}..{newest} "
            f"(default {EXPORT_OPSET}, which onnxruntime >= 1.13 loads); pass one in that range"
        )
    return int(opset)


def check_graph_opset(graph: Graph, opset: int, error: type[Exception] = ExportError) -> None:
    """Refuse ``opset`` when an op of ``graph`` needs a newer one (the op table's ``min_opset``),
    naming the ops, their nodes and the oldest opset that has them (raises ``error``)."""
    from nashir.ops import get_op

    too_new: dict[str, list[str]] = {}
    for nd in graph.nodes:
        if get_op(nd.op_type).min_opset > opset:
            too_new.setdefault(nd.op_type, []).append(nd.name)
    if too_new:
        need = max(get_op(t).min_opset for t in too_new)
        listed = "; ".join(f"{t} (opset {get_op(t).min_opset}+): {', '.join(ns[:3])}"
                           + (f" and {len(ns) - 3} more" if len(ns) > 3 else "")
                           for t, ns in sorted(too_new.items()))
        raise error(f"opset {opset} cannot express op(s) of this model: {listed}; write opset {need} or "
                    "later")


def _value_info(name: str, dtype: str, shape, batch_symbol: str | None) -> onnx.ValueInfoProto:
    dims: list = []
    for i, d in enumerate(shape or ()):
        if i == 0 and batch_symbol is not None:
            dims.append(d if isinstance(d, str) and d != "?" else batch_symbol)
        elif isinstance(d, str):
            dims.append(None if d == "?" else d)
        else:
            dims.append(int(d))
    elem = _NP2ONNX.get(dtype)
    if elem is None:
        raise ExportError(f"value {name!r}: dtype {dtype!r} has no ONNX equivalent here")
    return helper.make_tensor_value_info(name, elem, dims if shape is not None else None)


def _fill_tensor(t: onnx.TensorProto, name: str, arr: np.ndarray) -> None:
    """Write ``arr`` into the (empty) TensorProto ``t`` as little-endian raw data."""
    arr = np.asarray(arr)
    if arr.dtype.name not in _NP2ONNX:
        raise ExportError(f"constant {name!r}: dtype {arr.dtype.name} has no ONNX equivalent here")
    t.name = name
    t.data_type = _NP2ONNX[arr.dtype.name]
    t.dims.extend(arr.shape)
    if arr.dtype == np.bool_:
        t.raw_data = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    else:
        t.raw_data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _attrs_for_opset(node, opset: int, attrs: dict | None = None) -> dict:
    """The node's attributes (or ``attrs``) that the ``opset`` schema knows; neutral others are dropped,
    others refused."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        raise ExportError(
            f"node {node.name!r}: op {node.op_type} does not exist at opset {opset}; export at a newer opset"
        ) from None
    out = {}
    for k, v in (node.attrs if attrs is None else attrs).items():
        if v is None:
            continue
        if k in schema.attributes:
            out[k] = v
            continue
        neutral = _NEUTRAL.get(k)
        if neutral is not None and neutral(v):
            continue
        raise ExportError(
            f"node {node.name!r} ({node.op_type}): attribute {k}={v!r} is not expressible at opset {opset} "
            f"(the {node.op_type}-{schema.since_version} schema has no {k!r}); export at a newer opset "
            f"(e.g. opset=19 for AveragePool dilations) or change the node"
        )
    return out


#: IR attributes that the exported opsets (13 and up) carry as inputs: op -> [(attribute, dtype)], in
#: input order after the data input (Pad-11+: pads, constant_value; Slice-10+: starts, ends, axes, steps).
_ATTR_INPUTS = {
    "Pad": [("pads", np.int64), ("value", np.float32)],
    "Slice": [("starts", np.int64), ("ends", np.int64), ("axes", np.int64), ("steps", np.int64)],
}


def _attr_inputs(nd, taken: set[str], used_consts: dict) -> tuple[list[str], dict]:
    """For Pad and Slice: the extra input names (new int64/float32 initializers named after the node)
    and the attributes left as attributes."""
    names, attrs = [], dict(nd.attrs)
    for key, dtype in _ATTR_INPUTS[nd.op_type]:
        val = attrs.pop(key)
        arr = np.array(val, dtype=dtype).reshape(() if key == "value" else -1)
        base = f"{nd.name}.{key}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        used_consts[name] = arr
        names.append(name)
    return names, attrs


def _write_metadata(model: onnx.ModelProto, graph: Graph) -> None:
    """Store what ONNX has no field for in ``model.metadata_props`` (read back by the importer)."""
    import json

    carried = {}
    for nd in graph.nodes:
        keep = {k: nd.meta[k] for k in CARRIED_NODE_META if k in nd.meta}
        if keep:
            carried[nd.name] = keep
    if carried:
        entry = model.metadata_props.add()
        entry.key, entry.value = NODE_META_KEY, json.dumps(carried, sort_keys=True)
    norm = graph.meta.get("input_normalization")
    if norm is not None:
        entry = model.metadata_props.add()
        entry.key = NORMALIZATION_KEY
        entry.value = json.dumps({"mean": [float(x) for x in norm["mean"]],
                                  "std": [float(x) for x in norm["std"]]})


def to_onnx(graph: Graph, opset: int | None = None) -> onnx.ModelProto:
    """Lower an IR graph to an ONNX model.

    Args:
        graph: a graph that passes :meth:`~nashir.ir.Graph.verify` (NCHW, weights as constants,
            Conv W in OIHW, Gemm W as ``[out, in]`` with ``transB=1``).
        opset: default-domain opset to write, ``13..onnx.defs.onnx_opset_version()``; default
            :data:`EXPORT_OPSET` (17). The IR version is the lowest that goes with it (8 for 17).

    Returns:
        An ``onnx.ModelProto`` with the graph's node and value names, weights as initializers not
        listed as graph inputs, and a symbolic batch dimension on inputs and outputs.

    Raises:
        ExportError: an unknown opset, or a node attribute the opset cannot express (e.g.
            AveragePool with dilations other than 1 below opset 19), or an op newer than the opset
            (HardSwish needs 14; the op table's ``min_opset``).
        VerifyError: the graph is broken (see :meth:`~nashir.ir.Graph.verify`).
    """
    opset = _check_opset(EXPORT_OPSET if opset is None else opset)
    check_graph_opset(graph, opset)
    graph.verify()
    batch_symbol = None
    for v in graph.inputs:
        if v.shape and isinstance(v.shape[0], str):
            batch_symbol = v.shape[0]
            break
    batch_symbol = batch_symbol or "N"

    # Built in place in one ModelProto: helper.make_graph/make_model would copy every weight twice.
    model = onnx.ModelProto()
    model.ir_version = ir_version_for(opset)
    model.producer_name = "nashir"
    model.producer_version = nashir.__version__
    _write_metadata(model, graph)
    imp = model.opset_import.add()
    imp.domain, imp.version = "", opset
    gp = model.graph
    gp.name = graph.name or "graph"
    used_consts: dict[str, np.ndarray] = {}
    taken = set(graph.values)
    for nd in graph.nodes:
        ins = []
        for v in nd.inputs:
            if v is None:
                ins.append("")
                continue
            if v.is_const:
                used_consts[v.name] = v.const
            ins.append(v.name)
        while ins and ins[-1] == "":
            ins.pop()
        if nd.op_type in _ATTR_INPUTS:
            extra, left = _attr_inputs(nd, taken, used_consts)
            ins += extra
            attrs = _attrs_for_opset(nd, opset, left)
        else:
            attrs = _attrs_for_opset(nd, opset)
        gp.node.append(helper.make_node(nd.op_type, ins, [o.name for o in nd.outputs], name=nd.name,
                                        **attrs))
    for v in graph.outputs:
        if v.is_const:
            used_consts[v.name] = v.const
    for k, a in used_consts.items():
        _fill_tensor(gp.initializer.add(), k, a)
    gp.input.extend(_value_info(v.name, v.dtype, v.shape, batch_symbol) for v in graph.inputs)
    gp.output.extend(_value_info(v.name, v.dtype, v.shape, batch_symbol) for v in graph.outputs)
    return model


def model_bytes(graph: Graph, opset: int | None = None) -> bytes:
    """``to_onnx(graph, opset).SerializeToString()``: the network as bytes, e.g. to ship to a worker.

    Raises:
        ExportError: as :func:`to_onnx`, or a model over protobuf's 2 GiB limit.
    """
    try:
        return to_onnx(graph, opset).SerializeToString()
    except ValueError as e:  # protobuf refuses messages over 2 GiB
        raise ExportError(f"graph {graph.name!r} is too large to serialise in one message ({e})") from None


def _write_temp(path: Path, data: bytes | list) -> str:
    """Write ``data`` (bytes, or a list of byte chunks) to a new temp file next to ``path``; return its
    name. On failure the temp file is removed and the error re-raised."""
    # the prefix is capped so that a file name near the 255-byte limit still gets a temp name
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            give_default_mode(f.fileno())   # mkstemp makes 0600; the output gets what the umask allows
            for chunk in data if isinstance(data, list) else [data]:
                f.write(chunk)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _atomic_write(path: Path, data: bytes | list) -> None:
    """Write ``data`` (bytes, or a list of byte chunks) to ``path`` via a temp file in the same folder."""
    _atomic_write_all([(path, data)])


def _atomic_write_all(items: list) -> None:
    """Write several ``(path, data)`` files: every temp file is written before any is renamed into
    place, so a write that fails (disk full, permissions) leaves every target as it was."""
    tmps: list[tuple[str, Path]] = []
    try:
        for path, data in items:
            tmps.append((_write_temp(path, data), path))
        while tmps:
            tmp, path = tmps[0]
            os.replace(tmp, path)
            tmps.pop(0)
    except BaseException:
        for tmp, _ in tmps:
            _unlink_quietly(tmp)
        raise


def _check_target(path: Path) -> None:
    """Refuse a target that cannot take an atomic replace: a missing folder, a folder, or an existing
    device, pipe or socket (``os.replace`` would put a regular file in its place, e.g. over
    ``/dev/null`` when run as root)."""
    if "\x00" in str(path):
        raise ExportError(f"cannot write {str(path)!r}: a file name cannot contain a NUL character")
    try:
        folder_ok = path.parent.is_dir()
        is_dir = path.is_dir()
        mode = path.lstat().st_mode if os.path.lexists(path) else None
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot write {str(path)!r}: {e}; give a valid file path") from None
    if not folder_ok:
        raise ExportError(
            f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist; create it first"
        )
    if is_dir:
        raise ExportError(f"cannot write {str(path)!r}: it is a folder; give a file name such as model.onnx")
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise ExportError(
            f"cannot write {str(path)!r}: it exists and is not a regular file (a device, pipe or socket); "
            "save writes a temp file and renames it over the target, which would replace it: give the "
            "path of a regular file"
        )


def save(graph: Graph, path, opset: int | None = None, external_data: bool = False) -> None:
    """Write ``graph`` as an ONNX file, atomically (temp file in the same folder, then ``os.replace``).

    Args:
        graph: the graph to write.
        path: target ``.onnx`` file; its folder must exist.
        opset: as :func:`to_onnx` (default 17).
        external_data: store the weights of 1 KiB and more in ``<file name>.data`` next to the
            model (needed above protobuf's 2 GiB limit). Both files are written to temp files
            first; only then is each renamed into place (the data file, then the model), so a
            failed write leaves an earlier model and its data file as they were.

    Raises:
        ExportError: as :func:`to_onnx`; a model over 2 GiB without ``external_data``; the folder
            does not exist; the target is a folder, or an existing device, pipe or socket.
            Nothing is written when an error is raised.
    """
    path = Path(path)
    data_name = path.name + ".data"
    _check_target(path)
    if external_data:
        _check_target(path.parent / data_name)
    model = to_onnx(graph, opset)
    chunks: list = []
    if external_data:
        offset = 0
        for t in model.graph.initializer:
            raw = t.raw_data
            if len(raw) < 1024:
                continue
            pad = (-offset) % 4096  # page-aligned, so that runtimes may mmap the tensors
            if pad:
                chunks.append(b"\0" * pad)
                offset += pad
            chunks.append(raw)
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += len(raw)
    too_big = ExportError(
        f"graph {graph.name!r} is over protobuf's 2 GiB limit for one file; save with external_data=True "
        "(`--external-data` on the command line)"
    )
    if not external_data and sum(v.const.nbytes for v in graph.constants()) >= _TWO_GIB:
        raise too_big
    try:
        blob = model.SerializeToString()
    except ValueError:  # protobuf refuses messages over 2 GiB
        raise too_big from None
    try:
        # the data file first, then the model that refers to it; both are complete on disk before
        # either is renamed, so a failed write cannot pair an old model with a new data file
        _atomic_write_all(([(path.parent / data_name, chunks)] if chunks else []) + [(path, blob)])
    except OSError as e:
        raise BackendError(
            f"cannot write {str(path)!r}: {e.strerror or e}; check the folder's permissions"
        ) from None

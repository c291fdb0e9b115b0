"""ONNX -> IR: :func:`load` and :func:`from_onnx` (DESIGN.md section 4).

What the importer normalises, so that the IR has one form per meaning (ONNX opset-17 semantics):

* **constants**: initializers (also those listed as graph inputs, IR-3 style), Constant and
  ConstantOfShape nodes, and any node whose inputs are all constants (Reshape, Unsqueeze, Cast,
  Identity, Gather, ...) are folded into weights, evaluated with ``onnx.reference``;
* **shapes**: ``Shape`` of a value with a symbolic batch dimension is tracked symbolically through
  Gather, Unsqueeze, Squeeze, Concat, Slice, Cast and Reshape, so ``Shape -> Gather -> Unsqueeze
  -> Concat -> Reshape`` becomes an ordinary Reshape (and then a Flatten);
* **Flatten**: ``Flatten`` and every Reshape whose result is ``[N, C*H*W]`` (targets ``[N, -1]``,
  ``[0, -1]``, ``[-1, K]``, ``[B, -1]`` at a fixed batch ``B``) become ``Flatten(axis=1)``;
* **Gemm**: any ``transB``/``alpha``/``beta`` and ``MatMul`` (+ ``Add`` of a bias) become
  ``Gemm(transA=0, transB=1, alpha=1, beta=1)`` with ``W[out, in]`` and a bias ``[out]``; sizes
  come from the weights;
* **padding**: ``auto_pad`` SAME_UPPER / SAME_LOWER / VALID become explicit, possibly asymmetric,
  ``pads`` (ONNX Conv/Pool operator spec: total pad ``(ceil(in/s)-1)*s + (k-1)*d + 1 - in``,
  the odd pixel at the end for SAME_UPPER, at the begin for SAME_LOWER);
* **old opsets** (7 and up) are read by version range: BatchNormalization ``spatial``/``is_test``
  and unused training outputs, Dropout ``ratio``/``training_mode`` and mask, Clip min/max
  attributes (before opset 11), Softmax's pre-13 "flatten to 2-D at ``axis``" semantics (kept
  exact with Reshape - Softmax - Reshape when it spans more than the last axis); models below
  opset 7 are first upgraded with ``onnx.version_converter``;
* ``Sum`` becomes ``Add`` (a chain for more than two inputs); ``Sub``/``Div`` by a constant become
  ``Add``/``Mul`` by its negation/reciprocal; ``ReduceMean`` over all spatial axes with
  ``keepdims=1`` becomes ``GlobalAveragePool`` (with ``keepdims=0``, ``GlobalAveragePool`` then
  ``Flatten``), ``ReduceMax`` likewise ``GlobalMaxPool``; a zero ``Pad`` of the spatial axes that only
  Convs read is added to their ``pads``, any other Pad (every opset's form) becomes the IR's Pad;
* ``Split`` becomes one ``Slice`` per output; ``Slice`` (attributes before opset 10, inputs after)
  gets clamped, explicit ``starts``/``ends``/``axes``/``steps`` attributes; ``LogSoftmax`` before
  opset 13 is read like Softmax.

The batch dimension of every data input becomes the symbol ``"N"``; a model exported at batch 1
runs at any batch once saved again. Node and value names are kept; an unnamed node gets a
deterministic name (``conv_0``). Every problem is found before anything is written; unsupported
ops are all listed at once with their node names.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nashir import ops as _ops
from nashir.errors import ImportErrorONNX, NashirError, UnsupportedOpError
from nashir.ir import Graph, Value

BATCH = "N"
#: Stand-in for the batch size inside shape tensors (a power of two, exact in float32 too).
_SYM = 1 << 40
MIN_OPSET = 7
#: Constant folding budget, in bytes: all constants that folding makes together may hold at most
#: ``FOLD_GROWTH`` times the bytes of the weights stored in the model (initializers and Constant nodes)
#: plus ``MAX_FOLD_BYTES``. Each fold's output size is inferred and checked before it is computed.
MAX_FOLD_BYTES = 256 * 2**20
FOLD_GROWTH = 8
#: A data input may have at most this many elements per sample (a 16384 x 16384 RGB image is 805M).
MAX_INPUT_ELEMENTS = 2**30
_MAX_MODEL_FILE = 2**31   # protobuf cannot parse a larger message: not read at all
#: ops whose output size comes from the *values* of their inputs (folded only when it can be inferred).
_SIZE_FROM_VALUES = {"ConstantOfShape", "Expand", "Tile", "Range", "Pad", "Resize", "Upsample", "OneHot",
                     "CenterCropPad", "Col2Im"}
#: element types packed two to a byte; external data of these is refused (nashir reads float32 weights).
_PACKED_TYPES = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
                 if hasattr(TensorProto, n)}

#: ops whose outputs are folded when all their inputs are constants (random ops are never folded).
_NEVER_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli", "If", "Loop", "Scan"}
#: ops that only move shape values around: evaluated exactly with the batch stand-in.
_SHAPE_MOVERS = {"Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Reshape",
                 "Flatten"}
#: ops the importer maps onto the IR (directly or by normalisation).
_DATA_OPS = {
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Identity", "Dropout", "Clip",
    "LRN", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Softmax",
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Sum", "Concat", "ReduceMean", "Squeeze", "Pad",
    "Elu", "HardSigmoid", "HardSwish", "PRelu", "GlobalMaxPool", "LogSoftmax", "InstanceNormalization",
    "Slice", "Split", "ReduceMax", "ConvTranspose",
}


# ------------------------------------------------------------------------------------------------ I/O


def load(path_or_model, input_shape=None) -> Graph:
    """Read an ONNX model into the IR.

    Args:
        path_or_model: a path to an ``.onnx`` file (external data is read relative to its folder),
            an ``onnx.ModelProto``, or the serialized bytes of one.
        input_shape: the shape of one sample of the data input, ``(C, H, W)`` (or with a leading
            batch entry, which is ignored), for models whose non-batch input dimensions are
            symbolic or missing; a dict ``input name -> shape`` for several inputs.

    Returns:
        The :class:`~nashir.ir.Graph` (verified), batch dimension ``"N"``.

    Raises:
        ImportErrorONNX: the file does not exist, is not an ONNX model, is truncated, refers to
            missing or escaping external data, has a cycle, a non-float data input, or a
            dimension that needs ``input_shape``.
        UnsupportedOpError: ops the IR does not support (all listed, with node names).
    """
    if isinstance(path_or_model, onnx.ModelProto):
        return from_onnx(path_or_model, input_shape=input_shape)
    if isinstance(path_or_model, (bytes, bytearray)):
        return from_onnx(_parse(bytes(path_or_model), "model bytes"), input_shape=input_shape)
    if not isinstance(path_or_model, (str, os.PathLike)):
        raise ImportErrorONNX(
            f"load: expected a path, an onnx.ModelProto or bytes, got {type(path_or_model).__name__}"
        )
    path = Path(path_or_model)
    if not path.exists():
        raise ImportErrorONNX(f"model file {str(path)!r} does not exist; check the path")
    if not path.is_file():
        raise ImportErrorONNX(f"{str(path)!r} is not a file; give the path of an .onnx model")
    try:
        size = path.stat().st_size
        if size > _MAX_MODEL_FILE:
            raise ImportErrorONNX(
                f"file {str(path)!r} is {_fmt_bytes(size)}, above protobuf's 2 GiB limit for one model; it "
                "is not an ONNX model nashir can read (large models keep their weights in external data)"
            )
        data = path.read_bytes()
    except OSError as e:
        raise ImportErrorONNX(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    model = _parse(data, f"file {str(path)!r}")
    return _Importer(model, input_shape, path.parent, str(path)).run()


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ImportErrorONNX(
            f"{label} is not a readable ONNX model ({type(e).__name__}: {e}); it may be truncated or not an "
            "ONNX file at all: re-export or re-download it"
        ) from None
    problem = _plausible(model)
    if problem:
        raise ImportErrorONNX(
            f"{label} is not an ONNX model ({problem}); it may be truncated or not an ONNX file at all: "
            "re-export or re-download it"
        )
    return model


def _plausible(model: onnx.ModelProto) -> str | None:
    if model.ir_version < 3:
        return f"IR version {model.ir_version}; nashir reads IR version 3 and up"
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        return "it imports no default-domain opset"
    if not model.HasField("graph") or not model.graph.output:
        return "its graph has no outputs"
    return None


def from_onnx(model: onnx.ModelProto, input_shape=None, base_dir=None) -> Graph:
    """Read an ``onnx.ModelProto`` into the IR (see the module docstring for what is normalised).

    Args:
        model: the model; it is not modified.
        input_shape: as :func:`load`.
        base_dir: folder that external-data locations are relative to (needed only when the model
            keeps weights in external files).

    Returns:
        The verified :class:`~nashir.ir.Graph`.

    Raises:
        ImportErrorONNX, UnsupportedOpError: as :func:`load`.
    """
    if not isinstance(model, onnx.ModelProto):
        raise ImportErrorONNX(f"from_onnx: expected an onnx.ModelProto, got {type(model).__name__}")
    problem = _plausible(model)
    if problem:
        raise ImportErrorONNX(f"model {model.graph.name!r} cannot be read: {problem}")
    return _Importer(model, input_shape, None if base_dir is None else Path(base_dir),
                     f"model {model.graph.name or '(unnamed)'!r}").run()


# ------------------------------------------------------------------------------------------------ helpers


def _fmt_bytes(n: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):.1f} {unit}"
    return f"{n} bytes"


def _np_dtype(elem_type: int):
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _attrs(node: onnx.NodeProto) -> dict:
    """Attribute values; floats (stored as float32 by ONNX) become the shortest decimal that rounds to the
    same float32 (``0.9`` rather than ``0.8999999761581421``), so text forms survive a round trip."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.FLOAT:
            v = float(str(np.float32(v)))
        elif a.type == onnx.AttributeProto.FLOATS:
            v = [float(str(np.float32(x))) for x in v]
        elif isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or f"(unnamed, output {node.output[0] if node.output else '?'})"


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


class _Importer:
    def __init__(self, model: onnx.ModelProto, input_shape, base_dir: Path | None, label: str):
        self.label = label
        self.base_dir = base_dir
        self.input_shape = input_shape
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset < MIN_OPSET:
            model = self._upgrade(model, opset)
            opset = MIN_OPSET
        self.model = model
        self.opset = opset
        self.onnx_graph = model.graph
        self.consts: dict[str, np.ndarray] = {}   # folded and initializer arrays (sym stand-in allowed)
        self.symbolic: set[str] = set()            # const names whose arrays hold the batch stand-in
        self.env: dict[str, Value] = {}            # ONNX value name -> IR data Value
        self.raw_const_values: dict[str, Value] = {}
        self.fixed_batch: int | None = None
        self.skip: set[int] = set()                # node indices consumed by a fusion
        self.pending_pad: dict[str, tuple] = {}    # Pad output -> (input Value, spatial pads) for a Conv
        self.g = Graph(model.graph.name or "graph")
        gp = model.graph
        # every value name of the source model: an IR-only intermediate value never takes one of them
        self.onnx_names: set[str] = ({v.name for v in gp.input} | {v.name for v in gp.output}
                                     | {t.name for t in gp.initializer}
                                     | {o for n in gp.node for o in n.output if o})
        self._current: str | None = None           # the node being converted, for error messages
        self.fold_bytes = 0                        # bytes of the constants folding made so far
        self.own_bytes = sum(n.ByteSize() for n in gp.node if n.op_type == "Constant")  # + initializers

    # ---------------------------------------------------------------- errors
    def fail(self, msg: str) -> ImportErrorONNX:
        return ImportErrorONNX(f"{self.label}: {msg}")

    def unsupported(self, node: onnx.NodeProto, detail: str) -> UnsupportedOpError:
        """An UnsupportedOpError for one node; ``detail`` names the node and says why."""
        return UnsupportedOpError({_op_key(node): [detail]}, where=self.label)

    def _upgrade(self, model, opset):
        from onnx import version_converter

        try:
            return version_converter.convert_version(model, MIN_OPSET)
        except Exception as e:
            raise self.fail(
                f"opset {opset} is older than {MIN_OPSET} and onnx.version_converter cannot upgrade it "
                f"({e}); "
                "re-export the model at a newer opset"
            ) from None

    # ---------------------------------------------------------------- main
    def run(self) -> Graph:
        """Import the model; a malformed model (e.g. a required attribute missing, an unknown element
        type) raises ImportErrorONNX rather than a Python error."""
        try:
            return self._run()
        except NashirError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            where = f"node {self._current}: " if self._current else ""
            raise self.fail(
                f"{where}the model is malformed or has a form nashir cannot read ({type(e).__name__}: {e}); "
                "check it with onnx.checker.check_model(model, full_check=True) and re-export it (if the "
                "checker accepts it, please report this as a nashir bug)"
            ) from e

    def _run(self) -> Graph:
        gp = self.onnx_graph
        self._read_initializers()
        self._data_inputs()
        order = self._toposort()
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i in order:
            for x in gp.node[i].input:
                if x:
                    self.consumers[x].append(i)
        self.graph_outputs = {o.name for o in gp.output}
        self._fold_constants(order)
        self._check_supported(order)
        for i in order:
            if i in self.skip or i in self.folded:
                continue
            node = gp.node[i]
            self._current = f"{_node_label(node)!r} ({node.op_type})"
            try:
                self._convert(i, node)
            except NashirError as e:
                if isinstance(e, ImportErrorONNX):
                    raise
                msg, prefix = str(e), f"node {_node_label(node)!r}"
                if not msg.startswith(prefix):
                    msg = f"{prefix} ({node.op_type}): {msg}"
                raise self.fail(msg) from None
        self._current = None
        for o in gp.output:
            v = self.env.get(o.name)
            if v is None:
                if o.name in self.consts:
                    raise self.fail(
                        f"graph output {o.name!r} is a constant (it does not depend on the input); nashir "
                        "keeps only outputs computed from the data input"
                    )
                raise self.fail(f"graph output {o.name!r} is produced by no node or input")
            self.g.add_output(v)
        self.g.prune()
        self.g.meta.update({"source_opset": self.opset, "source_ir_version": int(self.model.ir_version),
                            "producer": self.model.producer_name})
        if self.fixed_batch is not None:
            self.g.meta["source_batch"] = self.fixed_batch
        self._read_metadata()
        try:
            self.g.verify()
        except NashirError as e:
            raise self.fail(f"the imported graph does not verify: {e}") from None
        return self.g

    def _read_metadata(self) -> None:
        """Restore what nashir's exporter put in ``metadata_props``: node ``meta`` entries (Net2Deeper's
        calibration mark, Dropout ratios) and the input normalisation. Malformed entries are ignored
        (they are hints, not part of the network's function)."""
        import json

        from nashir.backends.onnx.exporter import CARRIED_NODE_META, NODE_META_KEY, NORMALIZATION_KEY

        props = {p.key: p.value for p in self.model.metadata_props}
        try:
            carried = json.loads(props.get(NODE_META_KEY, "{}"))
        except ValueError:
            carried = {}
        if isinstance(carried, dict):
            for name, meta in carried.items():
                nd = self.g._node_names.get(name)
                if nd is not None and isinstance(meta, dict):
                    nd.meta.update({k: v for k, v in meta.items() if k in CARRIED_NODE_META})
        try:
            norm = json.loads(props[NORMALIZATION_KEY]) if NORMALIZATION_KEY in props else None
            if norm is not None:
                norm = {"mean": [float(x) for x in norm["mean"]], "std": [float(x) for x in norm["std"]]}
        except (ValueError, KeyError, TypeError):
            norm = None
        if norm is not None:
            self.g.meta["input_normalization"] = norm

    # ---------------------------------------------------------------- initializers / external data
    def _read_initializers(self) -> None:
        for t in self.onnx_graph.initializer:
            self.consts[t.name] = self._tensor_array(t)
            self.own_bytes += self.consts[t.name].nbytes
        if len(self.onnx_graph.sparse_initializer):
            names = [s.values.name for s in self.onnx_graph.sparse_initializer]
            raise self.fail(f"sparse initializers {names} are not supported; store them dense")

    def _tensor_array(self, t: onnx.TensorProto) -> np.ndarray:
        if t.data_location == TensorProto.EXTERNAL:
            raw = self._external_bytes(t)
            arr = raw.view(_np_dtype(t.data_type).newbyteorder("<"))   # read into its own buffer: no copy
            if arr.size != math.prod(t.dims):
                raise self.fail(
                    f"external data of tensor {t.name!r} holds {arr.size} values, its shape "
                    f"{list(t.dims)} needs "
                    f"{math.prod(t.dims)}; the data file is truncated or does not belong to this model"
                )
            return arr.astype(arr.dtype.newbyteorder("="), copy=False).reshape(tuple(t.dims))
        plain = (TensorProto.FLOAT, TensorProto.INT64, TensorProto.DOUBLE, TensorProto.INT32)
        if t.HasField("raw_data") and t.data_type in plain:
            dt = _np_dtype(t.data_type).newbyteorder("<")
            raw = t.raw_data
            if len(raw) != math.prod(t.dims) * dt.itemsize:
                raise self.fail(
                    f"tensor {t.name!r} has {len(raw)} bytes, its shape {list(t.dims)} needs "
                    f"{math.prod(t.dims) * dt.itemsize}; the model is corrupt: re-export it"
                )
            return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True).reshape(tuple(t.dims))
        try:
            return np.array(numpy_helper.to_array(t))
        except Exception as e:
            raise self.fail(f"tensor {t.name!r} cannot be read ({e})") from None

    def _external_bytes(self, t: onnx.TensorProto) -> np.ndarray:
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location")
        if not loc:
            raise self.fail(f"tensor {t.name!r} is marked external but names no location")
        if self.base_dir is None:
            raise self.fail(
                f"tensor {t.name!r} is stored in external file {loc!r}; load the model from its path "
                "(nashir.load(path)) or pass base_dir= to from_onnx"
            )
        base = os.path.realpath(self.base_dir)
        full = os.path.realpath(os.path.join(base, loc))
        if os.path.isabs(loc) or os.path.commonpath([base, full]) != base:
            raise self.fail(
                f"tensor {t.name!r}: external data location {loc!r} escapes the model's folder "
                f"{str(self.base_dir)!r}; "
                "nashir only reads external data inside the model's folder (move the file there)"
            )
        if not os.path.isfile(full):
            raise self.fail(
                f"tensor {t.name!r}: external data file {loc!r} is missing (looked for {full!r}); "
                "copy it next to the model"
            )
        return self._read_bounded(t, loc, full, info)

    def _read_bounded(self, t: onnx.TensorProto, loc: str, full: str, info: dict) -> np.ndarray:
        """Read exactly the bytes tensor ``t`` needs (its shape times its element size) from ``full``:
        the claim is checked against the file's size before anything is read, so a small tensor that
        points into a huge file reads only its own bytes."""
        what = f"tensor {t.name!r}: external data"

        def count(key: str) -> int | None:
            v = info.get(key)
            if v in (None, ""):
                return None
            try:
                n = int(v)
            except ValueError:
                n = -1
            if n < 0:
                raise self.fail(f"{what} {key} {v!r} is not a byte count >= 0; the model is corrupt: "
                                "re-export it")
            return n

        if t.data_type in _PACKED_TYPES or t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
            name = TensorProto.DataType.Name(t.data_type)
            raise self.fail(f"{what} of element type {name} is not supported; store the tensor inside the "
                            "model")
        if any(d < 0 for d in t.dims):
            raise self.fail(f"{what}: shape {list(t.dims)} has a negative dimension; the model is corrupt")
        need = math.prod(t.dims) * _np_dtype(t.data_type).itemsize
        offset = count("offset") or 0
        length = count("length")
        if length is not None and length != need:
            raise self.fail(
                f"{what} claims {length} bytes in {loc!r}, but its shape {list(t.dims)} needs {need}; the "
                "model and its data file do not match: re-export them together"
            )
        size = os.path.getsize(full)
        if offset + need > size:
            have = max(0, size - offset)
            raise self.fail(
                f"{what} file {loc!r} is truncated ({have} of {need} bytes at offset {offset}); copy the "
                "complete file"
            )
        raw = np.empty(need, np.uint8)   # exactly the claimed bytes, read in place (no second copy)
        got = 0
        with open(full, "rb") as f:
            f.seek(offset)
            view = memoryview(raw)
            while got < need:
                k = f.readinto(view[got:])
                if not k:
                    break
                got += k
        if got != need:  # the file shrank while it was read
            raise self.fail(
                f"{what} file {loc!r} is truncated ({got} of {need} bytes at offset {offset}); copy the "
                "complete file"
            )
        return raw

    # ---------------------------------------------------------------- data inputs
    def _data_inputs(self) -> None:
        inputs = [vi for vi in self.onnx_graph.input if vi.name not in self.consts]
        if not inputs:
            raise self.fail("the graph has no data input (every graph input is an initializer)")
        shapes = self.input_shape
        if shapes is not None and not isinstance(shapes, dict):
            self._check_shape_arg(shapes)
            if len(inputs) != 1:
                raise self.fail(
                    f"input_shape {tuple(shapes)} is ambiguous for a model with inputs "
                    f"{[v.name for v in inputs]}; pass a dict name -> shape"
                )
            shapes = {inputs[0].name: shapes}
        shapes = shapes or {}
        names = [v.name for v in inputs]
        for k, v in shapes.items():
            if k not in names:
                raise self.fail(f"input_shape names {k!r}, which is not a data input of the model; its data "
                                f"inputs are {names}")
            self._check_shape_arg(v)
        for vi in inputs:
            tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
            if tt is None:
                raise self.fail(f"graph input {vi.name!r} is not a tensor; nashir reads image tensors (NCHW)")
            if tt.elem_type != TensorProto.FLOAT:
                name = TensorProto.DataType.Name(tt.elem_type) if tt.elem_type else "undefined"
                raise self.fail(
                    f"graph input {vi.name!r} has element type {name}; nashir needs a float32 data input "
                    "(NCHW images); convert the model's input to float"
                )
            if not tt.HasField("shape"):
                dims: list = [None] * (len(shapes[vi.name]) + 1) if vi.name in shapes else None
                if dims is None:
                    raise self.fail(
                        f"graph input {vi.name!r} has no shape; pass --input-shape C,H,W (input_shape= "
                        "in Python)"
                    )
            else:
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if not dims:
                raise self.fail(f"graph input {vi.name!r} is a scalar; nashir needs a batch dimension first")
            if dims[0] is not None and dims[0] > 0:
                self.fixed_batch = dims[0] if self.fixed_batch is None else self.fixed_batch
            rest = dims[1:]
            if vi.name in shapes:
                given = [int(d) for d in shapes[vi.name]]
                if len(given) == len(dims):
                    given = given[1:]
                if len(given) != len(rest):
                    raise self.fail(
                        f"input_shape {tuple(shapes[vi.name])} does not fit input {vi.name!r} of rank "
                        f"{len(dims)}; "
                        f"give its {len(rest)} non-batch dimensions"
                    )
                for k, (a, b) in enumerate(zip(rest, given)):
                    if a not in (None, 0) and a != b:
                        raise self.fail(
                            f"input_shape {tuple(given)} contradicts input {vi.name!r}: dimension "
                            f"{k + 1} is {a}"
                        )
                rest = given
            bad = [k + 1 for k, d in enumerate(rest) if d is None or d <= 0]
            if bad:
                dims_in = tt.shape.dim if tt.HasField("shape") else []
                shown = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims_in]
                raise self.fail(
                    f"graph input {vi.name!r} has shape {shown} with unresolved non-batch dimension(s) at "
                    f"position(s) {bad}; give them with --input-shape C,H,W (e.g. --input-shape 3,224,224), "
                    "or input_shape= in Python"
                )
            if math.prod(rest) > MAX_INPUT_ELEMENTS:
                raise self.fail(
                    f"graph input {vi.name!r} has shape {['N', *rest]}: {math.prod(rest):,} values per "
                    f"sample, above nashir's cap of {MAX_INPUT_ELEMENTS:,} (MAX_INPUT_ELEMENTS); one sample "
                    "would not fit in memory: give a smaller size with --input-shape C,H,W, or re-export the "
                    "model"
                )
            self.env[vi.name] = self.g.add_input(vi.name, (BATCH, *rest), "float32")

    def _check_shape_arg(self, shape) -> None:
        ok = isinstance(shape, (list, tuple, np.ndarray)) and np.ndim(shape) == 1 and len(shape) > 0 and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape)
        if not ok:
            raise self.fail(
                f"input_shape {shape!r} is not a sequence of positive integers; give the sample's non-batch "
                "dimensions, e.g. (3, 224, 224) (--input-shape 3,224,224 on the command line)"
            )

    # ---------------------------------------------------------------- topological order
    def _toposort(self) -> list[int]:
        nodes = self.onnx_graph.node
        producer: dict[str, int] = {}
        for i, n in enumerate(nodes):
            for o in n.output:
                if o:
                    producer[o] = i
        known = set(self.consts) | set(self.env) | {""}
        deps: list[set[int]] = []
        for n in nodes:
            d = set()
            for x in n.input:
                if x in producer:
                    d.add(producer[x])
                elif x not in known:
                    raise self.fail(
                        f"node {_node_label(n)!r} ({n.op_type}) reads {x!r}, which no node, graph input or "
                        "initializer defines; the model is broken: re-export it"
                    )
            deps.append(d)
        users: list[list[int]] = [[] for _ in nodes]
        indeg = [len(d) for d in deps]
        for i, d in enumerate(deps):
            for j in d:
                users[j].append(i)
        import heapq

        ready = [i for i, k in enumerate(indeg) if k == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users[i]:
                indeg[u] -= 1
                if indeg[u] == 0:
                    heapq.heappush(ready, u)
        if len(order) != len(nodes):
            stuck = sorted(_node_label(nodes[i]) for i in range(len(nodes)) if indeg[i] > 0)
            raise self.fail(
                f"the graph has a cycle through node(s) {stuck}; ONNX graphs must be acyclic: re-export "
                "the model"
            )
        return order

    # ---------------------------------------------------------------- constant folding
    def _fold_constants(self, order: list[int]) -> None:
        self.folded: set[int] = set()
        for i in order:
            node = self.onnx_graph.node[i]
            if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
                continue
            if not all(x == "" or x in self.consts for x in node.input):
                continue
            if not node.input and node.op_type != "Constant":
                continue
            outs = self._evaluate(node, [self.consts[x] if x else None for x in node.input])
            for name, arr in zip(node.output, outs):
                if name:
                    self.consts[name] = arr
            self.folded.add(i)

    def _evaluate(self, node: onnx.NodeProto, inputs: list) -> list[np.ndarray]:
        """Run one node on constant inputs with onnx's reference implementation, within the folding
        budget (:data:`MAX_FOLD_BYTES`): the outputs' size is inferred and checked before the node runs."""
        if node.op_type == "Constant":
            a = _attrs(node)
            for k in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if k in a:
                    v = a[k]
                    if k == "value":   # stored in the file: bounded by its size (external data by its claim)
                        return [self._tensor_array(v)]
                    dt = np.float32 if "float" in k else np.int64
                    return [np.array(v, dtype=dt)]
        if node.op_type == "Identity":
            return [inputs[0]]
        for at in node.attribute:
            if at.type == onnx.AttributeProto.TENSOR and at.t.data_location == TensorProto.EXTERNAL:
                raise self.fail(f"node {_node_label(node)!r} ({node.op_type}): attribute {at.name!r} "
                                "keeps its tensor in external data, which nashir reads only for initializers")
        self._check_fold_size(node, inputs)
        outs = self._reference(node, inputs)
        self.fold_bytes += sum(o.nbytes for o in outs)
        if self.fold_bytes > self._fold_budget():
            raise self._over_budget(node, sum(o.nbytes for o in outs))
        return outs

    def _fold_budget(self) -> int:
        return FOLD_GROWTH * self.own_bytes + MAX_FOLD_BYTES

    def _over_budget(self, node: onnx.NodeProto, nbytes: int) -> ImportErrorONNX:
        return self.fail(
            f"node {_node_label(node)!r} ({node.op_type}) on constant inputs would make a "
            f"{_fmt_bytes(nbytes)} constant; with the constants folded before it that is above the folding "
            "budget of "
            f"{_fmt_bytes(self._fold_budget())} ({FOLD_GROWTH}x the model's stored weights plus "
            f"MAX_FOLD_BYTES = {_fmt_bytes(MAX_FOLD_BYTES)}); the model asks for more memory than its "
            "weights justify: check where it came from"
        )

    def _check_fold_size(self, node: onnx.NodeProto, inputs: list) -> None:
        """Infer the outputs' shapes with onnx shape inference (small inputs as data, large ones by
        their type only) and refuse a fold whose outputs would pass the budget, before any allocation.
        An op that makes its output size from input *values* must have an inferable size."""
        ins, inits, vis = [], [], []
        for k, (name, arr) in enumerate(zip(node.input, inputs)):
            if not name:
                ins.append("")
                continue
            nm = f"in{k}"
            ins.append(nm)
            arr = np.asarray(arr)
            if arr.size <= 4096:
                inits.append(numpy_helper.from_array(arr, nm))
            else:
                et = helper.np_dtype_to_tensor_dtype(arr.dtype)
                vis.append(helper.make_tensor_value_info(nm, et, list(arr.shape)))
        outs = [f"out{k}" for k in range(len(node.output))]
        n2 = helper.make_node(node.op_type, ins, outs, domain=node.domain)
        n2.attribute.extend(node.attribute)
        gr = helper.make_graph([n2], "fold", vis, [helper.make_empty_tensor_value_info(o) for o in outs],
                               initializer=inits)
        m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = max(int(self.model.ir_version), 3)
        nbytes: int | None = 0
        try:
            inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False).graph.output
        except Exception:
            inferred = []
        by_name = {vi.name: vi for vi in inferred}
        for o in outs:
            vi = by_name.get(o)
            tt = vi.type.tensor_type if vi is not None else None
            if tt is None or not tt.HasField("shape") or not tt.elem_type or any(
                    not d.HasField("dim_value") for d in tt.shape.dim):
                nbytes = None
                break
            try:
                item = _np_dtype(tt.elem_type).itemsize
            except Exception:
                item = 8
            nbytes += math.prod(max(0, d.dim_value) for d in tt.shape.dim) * item
        if nbytes is None:
            if node.op_type in _SIZE_FROM_VALUES:
                raise self.fail(
                    f"node {_node_label(node)!r} ({node.op_type}) on constant inputs: the size of its output "
                    "cannot be inferred before it is computed, so nashir does not fold it; re-export the "
                    "model with the folded constant as an initializer"
                )
            return   # the output's size follows its inputs' sizes; checked after evaluation
        if self.fold_bytes + nbytes > self._fold_budget():
            raise self._over_budget(node, nbytes)

    def _reference(self, node: onnx.NodeProto, inputs: list) -> list[np.ndarray]:
        from onnx.reference import ReferenceEvaluator

        inits = []
        ins = []
        for k, (name, arr) in enumerate(zip(node.input, inputs)):
            if not name:
                ins.append("")
                continue
            nm = f"in{k}"
            inits.append(numpy_helper.from_array(np.asarray(arr), nm))
            ins.append(nm)
        outs = [f"out{k}" for k in range(len(node.output))]
        n2 = helper.make_node(node.op_type, ins, outs, domain=node.domain)
        n2.attribute.extend(node.attribute)
        gr = helper.make_graph([n2], "fold", [], [helper.make_empty_tensor_value_info(o) for o in outs],
                               initializer=inits)
        m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = self.model.ir_version if self.model.ir_version >= 3 else 3
        try:
            res = ReferenceEvaluator(m).run(None, {})
        except Exception as e:
            raise self.fail(
                f"node {_node_label(node)!r} ({node.op_type}) on constant inputs cannot be evaluated ({e})"
            ) from None
        return [np.array(r) for r in res]

    # ---------------------------------------------------------------- support check (before building)
    def _check_supported(self, order: list[int]) -> None:
        """Raise UnsupportedOpError listing every op the IR cannot take, before anything is built.

        Nodes that only compute from constants and ``Shape`` outputs are fine whatever their op: they
        are evaluated while building (an op that does arithmetic on the batch size is refused then)."""
        bad: dict[str, list[str]] = defaultdict(list)
        static = set(self.consts) | {""}
        for i in order:
            if i in self.folded:
                continue
            node = self.onnx_graph.node[i]
            default = node.domain in ("", "ai.onnx")
            type_only = node.op_type == "CastLike" and node.input[0] in static   # input 1 only gives the type
            computed = node.op_type not in _NEVER_FOLD and node.input and all(x in static for x in node.input)
            if default and (node.op_type == "Shape" or type_only or computed):
                static.update(node.output)
                continue
            if default and node.op_type in _DATA_OPS:
                continue
            bad[_op_key(node)].append(_node_label(node))
        if bad:
            raise UnsupportedOpError(dict(bad), where=self.label)

    # ---------------------------------------------------------------- building
    def const_value(self, name: str) -> Value:
        """The IR constant for ONNX constant ``name`` as it is (created once)."""
        v = self.raw_const_values.get(name)
        if v is None:
            arr = self.consts[name]
            if arr.dtype.kind == "f" and arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            v = self.g.add_const(arr, name)
            self.raw_const_values[name] = v
        return v

    def new_const(self, arr: np.ndarray, name: str) -> Value:
        """A derived IR constant (e.g. a transposed weight), named after its source when that is free."""
        arr = np.asarray(arr)
        if arr.dtype.kind == "f" and arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        return self.g.add_const(np.array(arr, order="C"), name)

    def derived_const(self, name: str, how: tuple, make) -> Value:
        """A derived constant (``make()``, e.g. a transposed weight) made once per source constant and
        derivation, so that nodes sharing a weight in the model (a tied layer) share it in the IR too."""
        cache = self.__dict__.setdefault("_derived", {})
        key = (name, how)
        if key not in cache:
            cache[key] = self.new_const(make(), name)
        return cache[key]

    def is_const(self, name: str) -> bool:
        return bool(name) and name in self.consts and name not in self.symbolic

    def data(self, node: onnx.NodeProto, k: int) -> Value:
        name = node.input[k] if k < len(node.input) else ""
        v = self.env.get(name)
        if v is None:
            raise self.unsupported(
                node, _node_label(node) + f" (input {k} {name!r} must be computed from the data input)")
        return v

    def param(self, node: onnx.NodeProto, k: int, what: str, required: bool = True) -> np.ndarray | None:
        name = node.input[k] if k < len(node.input) else ""
        if not name:
            if required:
                raise self.fail(f"node {_node_label(node)!r} ({node.op_type}): {what} (input {k}) is missing")
            return None
        if not self.is_const(name):
            raise self.unsupported(
                node, f"{_node_label(node)} ({what} {name!r} is not a constant; nashir needs constant "
                                "weights)")
        return self.consts[name]

    def _name(self, node: onnx.NodeProto, op_type: str) -> str:
        if node.name:
            return self.g.unique_node_name(node.name)
        return self.g.auto_node_name(op_type)

    def emit1(self, node: onnx.NodeProto, op_type: str, inputs: list, attrs: dict) -> Value:
        """:meth:`emit` one IR node for ``node``, with its name (or a generated one) and output name."""
        return self.emit(op_type, inputs, attrs, self._name(node, op_type), node.output[0])

    def emit(
        self, op_type: str, inputs: list, attrs: dict, name: str, out: str, internal: bool = False
    ) -> Value:
        """Append one IR node. ``out`` is the ONNX value it computes (registered in ``env``), or, when
        ``internal``, the stem of a name for an IR-only intermediate (e.g. the Transpose before a
        transA Gemm): that name avoids every name of the source model and is not registered, so it can
        never shadow one of the model's own values."""
        if internal:
            out_name, k = out, 1
            while out_name in self.g.values or out_name in self.onnx_names:
                out_name, k = f"{out}_{k}", k + 1
        else:
            out_name = out if out not in self.g.values else self.g.unique_value_name(out)
        nd = self.g.add_node(op_type, inputs, attrs, name=name, outputs=[out_name], index=len(self.g.nodes))
        if not internal:
            self.env[out] = nd.outputs[0]
        return nd.outputs[0]

    def _unused_extra_outputs(self, node: onnx.NodeProto, what: str) -> None:
        for o in node.output[1:]:
            if o and (self.consumers.get(o) or o in self.graph_outputs):
                raise self.unsupported(
                    node, f"{_node_label(node)} (its {what} output {o!r} is used; nashir keeps only the "
                                    "inference output)")

    def _convert(self, idx: int, node: onnx.NodeProto) -> None:
        op = node.op_type
        a = _attrs(node)
        ins = list(node.input)
        if op == "Shape":
            self._shape_op(node, a)
            return
        if op == "CastLike" and ins[0] in self.consts and ins[1] in self.env:
            # the data input only gives the element type (float32 for every data value in the IR)
            self.consts[node.output[0]] = np.asarray(self.consts[ins[0]]).astype(np.float32)
            return
        if ins and all(x == "" or x in self.consts for x in ins):   # computed from constants and shapes
            sym = [x for x in ins if x in self.symbolic]
            if sym and op not in _SHAPE_MOVERS:
                raise self.fail(
                    f"node {_node_label(node)!r} ({op}) computes with the batch size ({sym[0]!r}); "
                    "nashir can only "
                    "pass the batch size through to a Reshape: re-export the model with a static target shape"
                )
            self._shape_op(node, a)
            return
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:  # a shape mover on data (e.g. Gather on an activation)
            raise self.unsupported(node, _node_label(node) + " (on data)")
        handler(node, a)

    # ---------------------------------------------------------------- shape tensors
    def _shape_op(self, node: onnx.NodeProto, a: dict) -> None:
        if node.op_type == "Shape":
            x = self.data(node, 0)
            dims = []
            for d in x.shape:
                if isinstance(d, str):
                    if d != BATCH:
                        raise self.fail(
                            f"node {_node_label(node)!r} (Shape) reads {x.name!r} whose shape "
                            f"{list(x.shape)} is not "
                            "fully known; give the input's size with --input-shape C,H,W"
                        )
                    dims.append(_SYM)
                else:
                    dims.append(int(d))
            arr = np.array(dims, dtype=np.int64)
            if self.opset >= 15:
                r = len(dims)
                start = a.get("start", 0)
                end = a.get("end", r)
                start = min(max(start + r if start < 0 else start, 0), r)
                end = min(max(end + r if end < 0 else end, 0), r)
                arr = arr[start:end]
            out = [arr]
        else:
            out = self._evaluate(node, [self.consts[x] if x else None for x in node.input])
        for name, arr in zip(node.output, out):
            if not name:
                continue
            self.consts[name] = arr
            if arr.dtype.kind in "iuf" and np.any(np.asarray(arr) == _SYM):
                self.symbolic.add(name)

    # ---------------------------------------------------------------- per-op conversion
    def _simple(self, node, op_type, attrs=None):
        return self.emit1(node, op_type, [self.data(node, 0)], attrs or {})

    def _op_Relu(self, node, a):
        return self._simple(node, "Relu")

    def _op_Sigmoid(self, node, a):
        return self._simple(node, "Sigmoid")

    def _op_Tanh(self, node, a):
        return self._simple(node, "Tanh")

    def _op_Identity(self, node, a):
        return self._simple(node, "Identity")

    def _op_LeakyRelu(self, node, a):
        return self._simple(node, "LeakyRelu", {"alpha": a.get("alpha", 0.01)})

    def _op_GlobalAveragePool(self, node, a):
        return self._simple(node, "GlobalAveragePool")

    def _op_GlobalMaxPool(self, node, a):
        return self._simple(node, "GlobalMaxPool")

    def _op_Elu(self, node, a):
        return self._simple(node, "Elu", {"alpha": a.get("alpha", 1.0)})

    def _op_HardSigmoid(self, node, a):
        return self._simple(node, "HardSigmoid", {"alpha": a.get("alpha", 0.2), "beta": a.get("beta", 0.5)})

    def _op_HardSwish(self, node, a):
        return self._simple(node, "HardSwish")

    def _op_PRelu(self, node, a):
        x = self.data(node, 0)
        self.param(node, 1, "slope")
        return self.emit1(node, "PRelu", [x, self.const_value(node.input[1])], {})

    def _op_InstanceNormalization(self, node, a):
        x = self.data(node, 0)
        c = x.shape[1]
        ins = [x]
        for k, what in ((1, "scale"), (2, "B")):
            arr = self.param(node, k, what)
            if arr.shape == (c,):
                ins.append(self.const_value(node.input[k]))
            elif arr.size == c:
                ins.append(self.new_const(arr.reshape(c), node.input[k]))
            else:
                raise self.unsupported(node, f"{_node_label(node)} ({what} has shape {list(arr.shape)}, not "
                                             f"one value per channel [{c}])")
        return self.emit1(node, "InstanceNormalization", ins, {"epsilon": a.get("epsilon", 1e-5)})

    def _slice_attrs(self, node, x: Value, axes, starts, ends, steps) -> dict | None:
        """IR Slice attributes (axes >= 0, starts/ends clamped per :func:`nashir.ops.slice_range`; a
        reversed slice through index 0 ends at INT64_MIN, which ONNX clamps to -1); None when the
        slice keeps everything. The batch axis may only be taken whole."""
        r = len(x.shape)
        out = {"starts": [], "ends": [], "axes": [], "steps": []}
        for ax, b, e, st in zip(axes, starts, ends, steps):
            ax = ax + r if ax < 0 else ax
            if not 0 <= ax < r:
                raise self.fail(f"node {_node_label(node)!r} (Slice): axis {ax} is out of range for rank {r}")
            d = x.shape[ax]
            if not isinstance(d, int):
                if b in (0, -_SYM) and st == 1 and (e >= _SYM or e >= 2**62):
                    continue
                raise self.unsupported(node, f"{_node_label(node)} (slices the batch axis {ax}; nashir keeps "
                                             "the batch whole)")
            b2, e2, n = _ops.slice_range(d, b, e, st)
            if st == 1 and b2 == 0 and e2 == d:
                continue
            out["axes"].append(ax)
            out["starts"].append(b2)
            out["ends"].append(e2 if e2 >= 0 else -(2**63))
            out["steps"].append(st)
        return out if out["axes"] else None

    def _emit_slice(self, node, x: Value, attrs: dict | None, name: str, out: str) -> Value:
        if attrs is None:
            return self.emit("Identity", [x], {}, name, out)
        return self.emit("Slice", [x], attrs, name, out)

    def _op_Slice(self, node, a):
        x = self.data(node, 0)
        if self.opset < 10:
            starts, ends = list(a["starts"]), list(a["ends"])
            axes = list(a.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            def ints(k, what, default):
                arr = self.param(node, k, what, required=False)
                return default if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]
            starts = ints(1, "starts", None)
            ends = ints(2, "ends", None)
            axes = ints(3, "axes", list(range(len(starts))))
            steps = ints(4, "steps", [1] * len(starts))
        attrs = self._slice_attrs(node, x, axes, starts, ends, steps)
        return self._emit_slice(node, x, attrs, self._name(node, "Slice"), node.output[0])

    def _op_Split(self, node, a):
        """Split into one IR Slice per output (the IR's ops have a fixed number of outputs)."""
        x = self.data(node, 0)
        r = len(x.shape)
        axis = a.get("axis", 0)
        axis = axis + r if axis < 0 else axis
        d = x.shape[axis] if 0 <= axis < r else None
        if not isinstance(d, int):
            raise self.unsupported(node, f"{_node_label(node)} (splits axis {axis} of {list(x.shape)}, "
                                         "which is not a known non-batch axis)")
        k = len(node.output)
        if self.opset < 13:
            sizes = a.get("split")
        else:
            arr = self.param(node, 1, "split", required=False)
            sizes = None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]
        if sizes is None:
            if "num_outputs" in a:   # opset 18: ceil(d / n) each, the last one smaller
                each = -(-d // int(a["num_outputs"]))
                sizes = [min(each, d - i * each) for i in range(k)]
            elif d % k:
                raise self.fail(f"node {_node_label(node)!r} (Split) splits {d} into {k} equal parts")
            else:
                sizes = [d // k] * k
        sizes = [int(v) for v in sizes]
        if len(sizes) != k or sum(sizes) != d or any(v < 1 for v in sizes):
            raise self.fail(f"node {_node_label(node)!r} (Split): sizes {sizes} do not split axis {axis} of "
                            f"size {d} into its {k} outputs")
        name = self._name(node, "Split")
        start = 0
        for i, (out, size) in enumerate(zip(node.output, sizes)):
            if out:
                nm = name if i == 0 else self.g.unique_node_name(f"{name}_{i}")
                attrs = self._slice_attrs(node, x, [axis], [start], [start + size], [1])
                self._emit_slice(node, x, attrs, nm, out)
            start += size

    def _op_LRN(self, node, a):
        return self._simple(node, "LRN", {k: a[k] for k in ("alpha", "beta", "bias", "size") if k in a})

    def _op_Transpose(self, node, a):
        return self._simple(node, "Transpose", {"perm": a["perm"]} if "perm" in a else {})

    def _op_Dropout(self, node, a):
        self._unused_extra_outputs(node, "mask")
        attrs = {"seed": a["seed"]} if "seed" in a else {}
        out = self._simple(node, "Dropout", attrs)
        ratio = a.get("ratio", 0.5) if self.opset < 12 else None
        if self.opset >= 12:
            arr = self.param(node, 1, "ratio", required=False)
            ratio = 0.5 if arr is None else float(np.asarray(arr).reshape(-1)[0])
        # The IR's Dropout is an inference no-op; the ratio is kept for training (torch lowering).
        out.producer.meta["ratio"] = float(ratio)
        return out

    def _op_Clip(self, node, a):
        x = self.data(node, 0)
        name = self._name(node, "Clip")
        if self.opset < 11:
            lo = self.new_const(np.array(a["min"], np.float32), f"{name}.min") if "min" in a else None
            hi = self.new_const(np.array(a["max"], np.float32), f"{name}.max") if "max" in a else None
        else:
            bounds = []
            for k, what in ((1, "min"), (2, "max")):
                arr = self.param(node, k, what, required=False)
                if arr is None:
                    bounds.append(None)
                elif arr.shape == ():
                    bounds.append(self.const_value(node.input[k]))
                else:
                    bounds.append(self.new_const(np.asarray(arr).reshape(()), node.input[k]))
            lo, hi = bounds
        return self.emit("Clip", [x, lo, hi], {}, name, node.output[0])

    def _resolve_auto_pad(self, node, a, x: Value, kernel, strides, dil) -> list[int]:
        mode = a.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        nsp = len(kernel)
        if mode in ("NOTSET", ""):
            return list(a.get("pads", [0] * (2 * nsp)))
        if mode == "VALID":
            return [0] * (2 * nsp)
        if mode not in ("SAME_UPPER", "SAME_LOWER"):
            raise self.fail(f"node {_node_label(node)!r}: auto_pad={mode!r} is not an ONNX value")
        begins, ends = [], []
        for i in range(nsp):
            size = x.shape[2 + i]
            if not isinstance(size, int):
                raise self.fail(
                    f"node {_node_label(node)!r}: auto_pad={mode} needs the spatial size, which is unknown; "
                    "give --input-shape C,H,W"
                )
            out = -(-size // strides[i])
            total = max((out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else big)
            ends.append(big if mode == "SAME_UPPER" else small)
        return begins + ends

    def _op_Pad(self, node, a):
        """Zero padding of the spatial axes, read only by Convs: folded into their ``pads``."""
        x = self.data(node, 0)
        r = len(x.shape)
        mode = a.get("mode", "constant")
        if self.opset < 11:
            pads, value, axes = list(a.get("pads", [])), float(a.get("value", 0.0)), None
        else:
            pads = [int(v) for v in self.param(node, 1, "pads").reshape(-1)]
            cv = self.param(node, 2, "constant_value", required=False)
            value = 0.0 if cv is None else float(np.asarray(cv).reshape(-1)[0])
            ax = self.param(node, 3, "axes", required=False) if self.opset >= 18 else None
            axes = None if ax is None else [int(v) + r if int(v) < 0 else int(v) for v in ax.reshape(-1)]
        if axes is not None:
            full = [0] * (2 * r)
            for k, ax_ in enumerate(axes):
                full[ax_], full[ax_ + r] = pads[k], pads[k + len(axes)]
            pads = full
        users = [self.onnx_graph.node[i] for i in self.consumers.get(node.output[0], [])]
        convs = all(u.op_type == "Conv" and u.input[0] == node.output[0]
                    and _attrs(u).get("auto_pad", "NOTSET") == "NOTSET" for u in users)
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if (mode not in _ops.PAD_MODES or len(pads) != 2 * r or any(p < 0 for p in pads)
                or pads[0] or pads[r]):
            raise self.unsupported(
                node, f"{_node_label(node)} (mode={mode!r}, value={value}, pads={pads}; nashir supports "
                      f"non-negative pads of the non-batch axes in mode {', '.join(_ops.PAD_MODES)})")
        if (mode == "constant" and value == 0.0 and not pads[1] and not pads[r + 1] and users and convs
                and node.output[0] not in self.graph_outputs):
            self.pending_pad[node.output[0]] = (x, pads[2:r] + pads[r + 2:])   # folded into the Convs
            return None
        return self.emit1(node, "Pad", [x], {"pads": pads, "mode": mode, "value": value})

    def _op_Conv(self, node, a):
        extra = None
        if node.input[0] in self.pending_pad:
            x, extra = self.pending_pad[node.input[0]]
        else:
            x = self.data(node, 0)
        w = self.param(node, 1, "weight W")
        b = self.param(node, 2, "bias B", required=False)
        nsp = w.ndim - 2
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        strides = list(a.get("strides", [1] * nsp))
        dil = list(a.get("dilations", [1] * nsp))
        pads = self._resolve_auto_pad(node, a, x, kernel, strides, dil)
        if extra is not None:
            pads = [p + q for p, q in zip(pads, extra)]
        ins = [x, self.const_value(node.input[1])]
        if b is not None:
            ins.append(self.const_value(node.input[2]))
        attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dil, "pads": pads,
                 "group": a.get("group", 1)}
        return self.emit1(node, "Conv", ins, attrs)

    def _op_ConvTranspose(self, node, a):
        """ConvTranspose with explicit pads (``auto_pad`` NOTSET or VALID) and ``output_padding``;
        weight ``(C_in, C_out/group, kH, kW)`` kept as it is. ``output_shape`` and ``auto_pad``
        SAME_* (whose pad split onnxruntime and the specification disagree on) are refused."""
        x = self.data(node, 0)
        w = self.param(node, 1, "weight W")
        b = self.param(node, 2, "bias B", required=False)
        nsp = w.ndim - 2
        mode = a.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("NOTSET", "VALID"):
            raise self.fail(f"node {_node_label(node)!r} (ConvTranspose): auto_pad={mode} is not supported; "
                            "export it with explicit pads (torch.onnx does)")
        if a.get("output_shape"):
            raise self.fail(f"node {_node_label(node)!r} (ConvTranspose): output_shape="
                            f"{list(a['output_shape'])} is not supported; export it with explicit pads and "
                            "output_padding")
        ins = [x, self.const_value(node.input[1])]
        if b is not None:
            ins.append(self.const_value(node.input[2]))
        attrs = {"kernel_shape": list(a.get("kernel_shape", w.shape[2:])),
                 "strides": list(a.get("strides", [1] * nsp)),
                 "dilations": list(a.get("dilations", [1] * nsp)),
                 "pads": [0] * (2 * nsp) if mode == "VALID" else list(a.get("pads", [0] * (2 * nsp))),
                 "output_padding": list(a.get("output_padding", [0] * nsp)), "group": a.get("group", 1)}
        return self.emit1(node, "ConvTranspose", ins, attrs)

    def _pool(self, node, a, op):
        x = self.data(node, 0)
        kernel = list(a["kernel_shape"])
        nsp = len(kernel)
        strides = list(a.get("strides", [1] * nsp))
        dil = list(a.get("dilations", [1] * nsp))
        pads = self._resolve_auto_pad(node, a, x, kernel, strides, dil)
        attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dil, "pads": pads,
                 "ceil_mode": a.get("ceil_mode", 0)}
        if op == "MaxPool":
            self._unused_extra_outputs(node, "Indices")
            attrs["storage_order"] = a.get("storage_order", 0)
        else:
            attrs["count_include_pad"] = a.get("count_include_pad", 0)
        return self.emit1(node, op, [x], attrs)

    def _op_MaxPool(self, node, a):
        return self._pool(node, a, "MaxPool")

    def _op_AveragePool(self, node, a):
        return self._pool(node, a, "AveragePool")

    def _op_BatchNormalization(self, node, a):
        x = self.data(node, 0)
        if a.get("training_mode", 0):
            raise self.unsupported(
                node, f"{_node_label(node)} (training_mode=1; export the model in eval mode)")
        self._unused_extra_outputs(node, "training statistics")
        c = x.shape[1]
        ins = [x]
        for k, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")):
            arr = self.param(node, k, what)
            if arr.shape == (c,):
                ins.append(self.const_value(node.input[k]))
            elif arr.size == c:   # spatial=0 forms with trailing singleton dims
                ins.append(self.new_const(arr.reshape(c), node.input[k]))
            else:
                raise self.unsupported(
                    node, f"{_node_label(node)} ({what} has shape {list(arr.shape)}, not one "
                                            f"value per channel [{c}]: spatial=0 statistics)")
        attrs = {"epsilon": a.get("epsilon", 1e-5), "momentum": a.get("momentum", 0.9)}
        return self.emit1(node, "BatchNormalization", ins, attrs)

    def _op_Flatten(self, node, a):
        x = self.data(node, 0)
        axis = a.get("axis", 1)
        if axis < 0:
            axis += len(x.shape)
        return self.emit1(node, "Flatten", [x], {"axis": axis})

    def _raw_target(self, node) -> list[int]:
        if self.opset < 5 and "shape" in _attrs(node):
            target = np.array(_attrs(node)["shape"], np.int64)
        else:
            name = node.input[1] if len(node.input) > 1 else ""
            if not name or name not in self.consts:
                raise self.unsupported(
                    node, f"{_node_label(node)} (its target shape is computed from data; nashir needs a "
                                 "shape known at import)")
            target = self.consts[name]
        return [int(t) for t in np.asarray(target).reshape(-1)]

    def _reshape_target(self, node, x: Value, allowzero: int, raw: list[int]) -> list[int]:
        target = list(raw)
        for i, t in enumerate(target):
            if t == _SYM:
                if allowzero or i >= len(x.shape) or x.shape[i] != BATCH:
                    raise self.fail(
                        f"node {_node_label(node)!r} (Reshape) puts the batch size at position {i} of "
                        "its target, "
                        f"input shape {list(x.shape)}; nashir keeps the batch dimension first"
                    )
                target[i] = 0
        if (self.fixed_batch is not None and target and target[0] == self.fixed_batch and x.shape
                and x.shape[0] == BATCH and 0 not in target[1:] and not allowzero):
            target[0] = 0   # the model was exported at a fixed batch: make that entry follow the batch
        return target

    def _op_Reshape(self, node, a):
        x = self.data(node, 0)
        allowzero = a.get("allowzero", 0)
        raw = self._raw_target(node)
        if allowzero and 0 not in raw:
            allowzero = 0   # allowzero only changes the meaning of 0 entries
        target = self._reshape_target(node, x, allowzero, raw)
        out = _ops.reshape_target(x.shape, target, allowzero)
        rest = x.shape[1:]
        if (len(x.shape) >= 2 and x.shape[0] == BATCH and all(isinstance(d, int) for d in rest)
                and tuple(out) == (BATCH, math.prod(rest))):
            return self.emit1(node, "Flatten", [x], {"axis": 1})
        if any(d == "?" for d in out):
            if all(isinstance(d, int) for d in x.shape[1:]):
                raise self.fail(
                    f"node {_node_label(node)!r} (Reshape) of {list(x.shape)} to {raw} mixes the batch "
                    "dimension with the others; nashir keeps the batch dimension first and whole: re-export "
                    "the model with a target that keeps it (e.g. x.flatten(1) or x.view(x.size(0), -1))"
                )
            raise self.fail(
                f"node {_node_label(node)!r} (Reshape) of {list(x.shape)} to {target} leaves a dimension "
                "unknown; "
                "give the input's size with --input-shape C,H,W"
            )
        shape = self.new_const(np.array(target, np.int64), node.input[1] if len(node.input) > 1 else "shape")
        attrs = {"allowzero": allowzero} if allowzero else {}
        return self.emit1(node, "Reshape", [x, shape], attrs)

    def _op_Squeeze(self, node, a):
        x = self.data(node, 0)
        if self.opset >= 13:
            axes = self.param(node, 1, "axes", required=False)
            axes = None if axes is None else [int(v) for v in axes.reshape(-1)]
        else:
            axes = a.get("axes")
        r = len(x.shape)
        if axes is None:
            axes = [i for i in range(r) if x.shape[i] == 1]
        axes = [v + r if v < 0 else v for v in axes]
        if len(x.shape) >= 3 and sorted(axes) == list(range(2, r)) and all(x.shape[i] == 1 for i in axes):
            return self.emit1(node, "Flatten", [x], {"axis": 1})
        raise self.unsupported(
            node, f"{_node_label(node)} (axes {axes} of {list(x.shape)}; only the spatial 1x1 axes after "
                         "a global pooling are supported)")

    def _op_ReduceMax(self, node, a):
        return self._op_ReduceMean(node, a, "GlobalMaxPool", "ReduceMax")

    def _op_ReduceMean(self, node, a, pool="GlobalAveragePool", op="ReduceMean"):
        x = self.data(node, 0)
        if self.opset >= 18 and len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self.param(node, 1, "axes").reshape(-1)]
        else:
            axes = a.get("axes")
        r = len(x.shape)
        axes = list(range(r)) if axes is None else sorted(v + r if v < 0 else v for v in axes)
        if r >= 3 and axes == list(range(2, r)):
            if a.get("keepdims", 1) == 1:
                return self.emit1(node, pool, [x], {})
            # keepdims=0 (torch's x.mean((2, 3))): a global pooling, then Flatten of the 1x1 axes
            name = self._name(node, pool)
            h = self.emit(pool, [x], {}, name, f"{node.output[0]}_pooled", internal=True)
            return self.emit("Flatten", [h], {"axis": 1}, self.g.unique_node_name(f"{name}_flatten"),
                             node.output[0])
        raise self.unsupported(
            node, f"{_node_label(node)} (axes {axes}, keepdims={a.get('keepdims', 1)}; only a {op} over "
                            "all spatial axes, a global pooling, is supported)")

    def _op_Softmax(self, node, a, op="Softmax"):
        x = self.data(node, 0)
        r = len(x.shape)
        name = self._name(node, op)
        if self.opset >= 13:
            return self.emit(op, [x], {"axis": a.get("axis", -1)}, name, node.output[0])
        axis = a.get("axis", 1)
        axis = axis + r if axis < 0 else axis
        if axis == r - 1:
            return self.emit(op, [x], {"axis": axis}, name, node.output[0])
        if axis == 0:
            raise self.unsupported(node, f"{name} (axis 0: a softmax across the batch)")
        # pre-13 semantics: softmax over the flattened dims axis..r-1 (ONNX Softmax-1/11 spec)
        rest = [int(d) for d in x.shape[1:]]
        flat_name = self.g.unique_node_name(f"{name}_flatten")
        if axis == 1:
            h = self.emit("Flatten", [x], {"axis": 1}, flat_name, f"{node.output[0]}_2d", internal=True)
        else:
            inner = [0, *rest[: axis - 1], math.prod(rest[axis - 1:])]
            t1 = self.new_const(np.array(inner, np.int64), f"{name}.shape_in")
            h = self.emit("Reshape", [x, t1], {}, flat_name, f"{node.output[0]}_2d", internal=True)
        h = self.emit(op, [h], {"axis": -1}, name, f"{node.output[0]}_{op.lower()}", internal=True)
        t2 = self.new_const(np.array([0, *rest], np.int64), f"{name}.shape_out")
        return self.emit("Reshape", [h, t2], {}, self.g.unique_node_name(f"{name}_unflatten"), node.output[0])

    def _op_LogSoftmax(self, node, a):
        return self._op_Softmax(node, a, "LogSoftmax")

    def _op_Gemm(self, node, a):
        x = self.data(node, 0)
        b = self.param(node, 1, "weight B")
        name = self._name(node, "Gemm")
        if a.get("transA", 0):   # Y = A^T W^T + C: an explicit Transpose, then the IR's Gemm
            x = self.emit("Transpose", [x], {"perm": [1, 0]}, self.g.unique_node_name(f"{name}_transA"),
                          f"{node.output[0]}_transA", internal=True)
        c = self.param(node, 2, "bias C", required=False)
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        w_name = node.input[1]
        if a.get("transB", 0) and alpha == 1.0:
            w = self.const_value(w_name)
        else:
            arr = b if a.get("transB", 0) else b.T
            w = self.derived_const(w_name, ("gemm", bool(a.get("transB", 0)), alpha),
                                   lambda: arr * np.float32(alpha) if alpha != 1.0 else arr)
        c_name = node.input[2] if len(node.input) > 2 else ""
        return self._gemm(node, x, w, c, beta, c_name, node.output[0], name)

    def _gemm(self, node, x, w: Value, c, beta, c_name, out, name):
        out_f = w.shape[0]
        ins = [x, w]
        if c is not None:
            c = np.asarray(c)
            if c.ndim > 2 or not (c.size == 1 or (c.size == out_f and c.shape[-1] == out_f)):
                raise self.unsupported(
                    node, f"{_node_label(node)} (bias of shape {list(c.shape)} is not one value per "
                                    f"output feature [{out_f}])")
            bias = np.broadcast_to(c.reshape(-1), (out_f,))
            if beta != 1.0:
                bias = bias * np.float32(beta)
            if c.shape == (out_f,) and beta == 1.0 and c_name:
                ins.append(self.const_value(c_name))
            else:
                ins.append(self.new_const(np.array(bias, np.float32), c_name or f"{name}.bias"))
        return self.emit("Gemm", ins, {"transB": 1}, name, out)

    def _op_MatMul(self, node, a):
        x = self.data(node, 0)
        b = self.param(node, 1, "weight B")
        if len(x.shape) != 2 or b.ndim != 2:
            raise self.unsupported(
                node, f"{_node_label(node)} (inputs {list(x.shape)} @ {list(b.shape)}; only a 2-D data "
                            "input times a 2-D constant, a fully connected layer, is supported)")
        w = self.derived_const(node.input[1], ("gemm", False, 1.0), lambda: b.T)
        out = node.output[0]
        users = self.consumers.get(out, [])
        c, c_name = None, ""
        if len(users) == 1 and out not in self.graph_outputs:
            add = self.onnx_graph.node[users[0]]
            if add.op_type == "Add" and add.domain in ("", "ai.onnx") and len(add.input) == 2:
                other = add.input[1] if add.input[0] == out else add.input[0]
                if other != out and self.is_const(other):
                    arr = self.consts[other]
                    if arr.ndim <= 2 and arr.size == b.shape[1] and arr.shape[-1:] in ((b.shape[1],),):
                        c, c_name = arr, other
                        out = add.output[0]
                        self.skip.add(users[0])
        return self._gemm(node, x, w, c, 1.0, c_name, out, self._name(node, "Gemm"))

    def _binary(self, node, op):
        n0, n1 = node.input[0], node.input[1]
        d0, d1 = n0 in self.env, n1 in self.env
        name = self._name(node, op if op in ("Add", "Mul") else {"Sub": "Add", "Div": "Mul"}[op])
        if d0 and d1:
            if op in ("Sub", "Div"):
                raise self.unsupported(
                    node, f"{_node_label(node)} (both operands are data; only {op} by a constant is "
                          "supported)")
            return self.emit(op, [self.env[n0], self.env[n1]], {}, name, node.output[0])
        if not (d0 or d1):
            raise self.fail(f"node {_node_label(node)!r} ({op}) has no data operand")
        ci = 1 if d0 else 0
        cname = node.input[ci]
        if not self.is_const(cname):
            raise self.unsupported(node, f"{_node_label(node)} (operand {cname!r} depends on the batch size)")
        arr = self.consts[cname]
        if op in ("Sub", "Div") and ci == 0:
            raise self.unsupported(
                node, f"{_node_label(node)} (a constant {op.lower()}ided by data; only data {op} a "
                      "constant is supported)")
        if op == "Sub":
            c, op = self.new_const(-np.asarray(arr, np.float32), cname), "Add"
        elif op == "Div":
            c, op = self.new_const(np.float32(1) / np.asarray(arr, np.float32), cname), "Mul"
        else:
            c = self.const_value(cname)
        x = self.env[node.input[1 - ci]]
        ins = [x, c] if ci == 1 else [c, x]
        return self.emit(op, ins, {}, name, node.output[0])

    def _op_Add(self, node, a):
        return self._binary(node, "Add")

    def _op_Mul(self, node, a):
        return self._binary(node, "Mul")

    def _op_Sub(self, node, a):
        return self._binary(node, "Sub")

    def _op_Div(self, node, a):
        return self._binary(node, "Div")

    def _operand(self, node, k) -> Value:
        name = node.input[k]
        if name in self.env:
            return self.env[name]
        if self.is_const(name):
            return self.const_value(name)
        return self.data(node, k)

    def _op_Sum(self, node, a):
        ins = [self._operand(node, k) for k in range(len(node.input))]
        name = self._name(node, "Add")
        if len(ins) == 1:
            return self.emit("Identity", ins, {}, name, node.output[0])
        acc = ins[0]
        for k, v in enumerate(ins[1:], start=1):
            last = k == len(ins) - 1
            nm = name if k == 1 else self.g.unique_node_name(f"{name}_{k}")
            out = node.output[0] if last else f"{node.output[0]}_partial{k}"
            acc = self.emit("Add", [acc, v], {}, nm, out, internal=not last)
        return acc

    def _op_Concat(self, node, a):
        ins = [self._operand(node, k) for k in range(len(node.input))]
        return self.emit1(node, "Concat", ins, {"axis": a["axis"]})


__all__ = ["load", "from_onnx", "BATCH"]

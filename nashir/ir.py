"""The graph IR: :class:`Value`, :class:`Node`, :class:`Graph` (DESIGN.md section 3).

ONNX op semantics, NCHW layout, float32 data, weights as numpy arrays held by constant Values.

Invariants (checked by :meth:`Graph.verify`):

* every Value referenced by a node, the graph inputs or outputs is owned by the graph
  (``graph.values[v.name] is v``); node names and value names are unique;
* nodes are in topological order and the graph has no cycle;
* def-use and use-def agree: ``(node, i) in v.uses`` exactly when ``node.inputs[i] is v``, and
  ``v.producer is node`` exactly when ``v in node.outputs``;
* every node fits its op's schema (arity, explicit attributes, parameter shapes) and the stored
  output shapes equal what shape inference gives.

Only the mutators (``add_node``, ``insert_after``, ``replace_all_uses_with``, ``set_input``,
``remove_node``, ``set_const``...) touch use lists. A mutator validates first and leaves the graph
unchanged when it raises.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from nashir import ops as _ops
from nashir.errors import GraphError, NashirError, OpError, ShapeError, VerifyError

Dim = int | str
Shape = tuple[Dim, ...]

_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool"}


def _fmt_shape(shape: Shape | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ",".join(str(d) for d in shape) + "]"


class Value:
    """A tensor in the graph: a data value (graph input or node output) or a constant (weight).

    Attributes:
        name: unique within the graph.
        shape: tuple of ints; the batch dimension may be a symbol such as ``"N"``.
        dtype: numpy dtype name (``"float32"`` for data, ``"int64"`` for shape tensors).
        producer: the Node that produces it, or None (graph input or constant).
        uses: list of ``(node, input_index)``; kept in sync by the Graph's mutators.
        const: numpy array for a weight/initializer, else None.
    """

    __slots__ = ("name", "shape", "dtype", "producer", "uses", "const")

    def __init__(
        self, name: str, shape: Shape | None, dtype: str = "float32", const: np.ndarray | None = None
    ):
        self.name = name
        self.shape = tuple(shape) if shape is not None else None
        self.dtype = dtype
        self.producer: Node | None = None
        self.uses: list[tuple[Node, int]] = []
        self.const = const

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def consumers(self) -> list[Node]:
        """Distinct nodes that read this value, in use order."""
        seen: list[Node] = []
        for n, _ in self.uses:
            if all(n is not s for s in seen):
                seen.append(n)
        return seen

    def __repr__(self) -> str:
        kind = "const" if self.is_const else "value"
        return f"<{kind} {self.name}: {self.dtype}{_fmt_shape(self.shape)}>"


class Node:
    """One op application.

    Attributes:
        name: unique within the graph (kept from the source; generated as ``conv_3`` otherwise).
        op_type: ONNX op name (an entry of :mod:`nashir.ops`).
        inputs: list of Values (weights are constant Values; an absent optional input is None).
        outputs: list of Values this node produces.
        attrs: every attribute explicit (ONNX defaults filled in).
        meta: free dict for analyses and passes (e.g. ``{"calibrate": "identity"}``).
    """

    __slots__ = ("name", "op_type", "inputs", "outputs", "attrs", "meta")

    def __init__(
        self, name: str, op_type: str, inputs: list, outputs: list, attrs: dict, meta: dict | None = None
    ):
        self.name = name
        self.op_type = op_type
        self.inputs: list[Value | None] = inputs
        self.outputs: list[Value] = outputs
        self.attrs = attrs
        self.meta = meta if meta is not None else {}

    @property
    def output(self) -> Value:
        """The first (usually only) output."""
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"<node {self.name}: {self.op_type}>"


_SCALARS = (int, float, str, bool, type(None))


def _copy_attrs(attrs: dict) -> dict:
    """A deep copy of a node's attributes, fast for their usual kinds (scalars and flat lists of
    scalars: ``kernel_shape``, ``pads``); anything else is deep-copied."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, _SCALARS):
            out[k] = v
        elif type(v) is list and all(isinstance(x, _SCALARS) for x in v):
            out[k] = list(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _is_sym(d: Any) -> bool:
    return not isinstance(d, (int, np.integer))


class Graph:
    """A network: data inputs, outputs, nodes in topological order, values by name.

    Args:
        name: the graph's name (kept on ONNX export).

    Attributes:
        inputs: data inputs (never constants), NCHW.
        outputs: graph outputs.
        nodes: nodes in topological order.
        values: every Value (data and constants) by name.
        meta: free dict (e.g. ``opset`` of the source model, ``producer``).
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.nodes: list[Node] = []
        self.values: dict[str, Value] = {}
        self.meta: dict[str, Any] = {}
        self._node_names: dict[str, Node] = {}

    # ------------------------------------------------------------------ naming and lookup
    def unique_value_name(self, base: str) -> str:
        """``base`` if free among value names, else ``base_1``, ``base_2``, ..."""
        return self._unique(base, self.values)

    def unique_node_name(self, base: str) -> str:
        """``base`` if free among node names, else ``base_1``, ``base_2``, ..."""
        return self._unique(base, self._node_names)

    @staticmethod
    def _unique(base: str, taken: dict) -> str:
        if base not in taken:
            return base
        m = re.fullmatch(r"(.*?)_(\d+)", base)
        stem, k = (m.group(1), int(m.group(2)) + 1) if m else (base, 1)
        while f"{stem}_{k}" in taken:
            k += 1
        return f"{stem}_{k}"

    def auto_node_name(self, op_type: str) -> str:
        """A deterministic fresh name such as ``conv_3`` (first free index for that op)."""
        stem = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", op_type).lower()  # LeakyRelu -> leaky_relu, LRN -> lrn
        stem = {"batch_normalization": "bn", "global_average_pool": "gap", "max_pool": "maxpool",
                "average_pool": "avgpool"}.get(stem, stem)
        k = 0
        while f"{stem}_{k}" in self._node_names:
            k += 1
        return f"{stem}_{k}"

    def node(self, name: str) -> Node:
        """The node called ``name``.

        Raises:
            GraphError: no such node; the message suggests the closest names.
        """
        try:
            return self._node_names[name]
        except KeyError:
            raise GraphError(self._unknown("node", name, list(self._node_names))) from None

    def value(self, name: str) -> Value:
        """The value called ``name``.

        Raises:
            GraphError: no such value; the message suggests the closest names.
        """
        try:
            return self.values[name]
        except KeyError:
            raise GraphError(self._unknown("value", name, list(self.values))) from None

    def find_node(self, name: str) -> Node:
        """Resolve a user's target: a node name, or the name of a node's output value.

        Raises:
            GraphError: neither; the message suggests the closest node and value names.
        """
        if name in self._node_names:
            return self._node_names[name]
        v = self.values.get(name)
        if v is not None and v.producer is not None:
            return v.producer
        cands = list(self._node_names) + [v.name for v in self.values.values() if v.producer is not None]
        raise GraphError(self._unknown("node or output value", name, cands))

    def find_value(self, name: str) -> Value:
        """Resolve a data value by its name or by the name of the node producing it (first output).

        Raises:
            GraphError: neither; the message suggests the closest names.
        """
        v = self.values.get(name)
        if v is not None and not v.is_const:
            return v
        if name in self._node_names:
            return self._node_names[name].outputs[0]
        cands = [v.name for v in self.values.values() if not v.is_const] + list(self._node_names)
        raise GraphError(self._unknown("value or node", name, cands))

    @staticmethod
    def _unknown(kind: str, name: str, candidates: list[str]) -> str:
        close = difflib.get_close_matches(name, list(dict.fromkeys(candidates)), n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"no {kind} named {name!r} in the graph{hint} (`nashir show MODEL` lists nodes and values)"

    # ------------------------------------------------------------------ creating values
    def add_input(self, name: str, shape: Sequence[Dim], dtype: str = "float32") -> Value:
        """Add a data input (NCHW). Raises GraphError if the name is taken, the dtype unknown, or a
        dimension is neither a positive int nor a symbol (a ``str`` such as ``"N"``)."""
        if name in self.values:
            raise GraphError(f"value name {name!r} is already used; pick another input name")
        if dtype not in _DTYPES:
            raise GraphError(f"input {name!r}: dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        bad = [d for d in shape if not (isinstance(d, str) or (isinstance(d, (int, np.integer))
                                                               and not isinstance(d, bool) and d >= 1))]
        if bad:
            raise GraphError(
                f"input {name!r}: shape {list(shape)} has dimension(s) {bad}; each must be a positive int or "
                "a symbol such as 'N'"
            )
        v = Value(name, tuple(shape), dtype)
        self.values[name] = v
        self.inputs.append(v)
        return v

    def add_const(self, array: np.ndarray, name: str = "const") -> Value:
        """Add a constant (weight) Value holding ``array``; the name is made unique."""
        arr = np.asarray(array)
        if arr.dtype.name not in _DTYPES:
            raise GraphError(
                f"constant {name!r}: dtype {arr.dtype.name} is not supported; use one of {sorted(_DTYPES)}"
            )
        name = self.unique_value_name(name)
        v = Value(name, tuple(arr.shape), arr.dtype.name, const=arr)
        self.values[name] = v
        return v

    def add_output(self, value: Value | str) -> Value:
        """Mark a value as a graph output.

        Raises:
            GraphError: ``value`` is None, unknown, or belongs to another graph.
        """
        if value is None:
            raise GraphError("add_output: expected a Value or a value name, got None")
        v = self._resolve(value, "output")
        self.outputs.append(v)
        return v

    def _resolve(self, v: Value | str | None, what: str) -> Value | None:
        if v is None:
            return None
        if isinstance(v, str):
            if v not in self.values:
                raise GraphError(self._unknown("value", v, list(self.values)) + f" (as {what})")
            return self.values[v]
        if not isinstance(v, Value):
            raise GraphError(f"{what}: expected a Value or a value name, got {type(v).__name__}")
        if self.values.get(v.name) is not v:
            raise GraphError(
                f"{what}: value {v.name!r} does not belong to this graph (it comes from another graph or "
                "was removed); use graph.value(name) to get this graph's value"
            )
        return v

    # ------------------------------------------------------------------ schema check
    def _check_node(
        self, name: str, op_type: str, inputs: list[Value | None], attrs: dict | None
    ) -> tuple[dict, list[Shape]]:
        """Validate a would-be node; return (normalised attrs, output shapes). Mutates nothing."""
        try:
            spec = _ops.get_op(op_type)
        except OpError as e:
            raise OpError(f"node {name!r}: {e}") from None
        n = len(inputs)
        while n and inputs[n - 1] is None:
            n -= 1
        if not spec.min_inputs <= n <= spec.max_inputs:
            want = (f"{spec.min_inputs}" if spec.min_inputs == spec.max_inputs
                    else f"{spec.min_inputs} to {spec.max_inputs}")
            raise OpError(f"node {name!r} ({op_type}): expects {want} inputs, got {n}")
        for i in range(spec.min_inputs):
            if inputs[i] is None:
                raise OpError(f"node {name!r} ({op_type}): input {i} is required")
        for i in spec.param_inputs:
            if i < n and inputs[i] is not None and inputs[i].const is None:
                raise OpError(
                    f"node {name!r} ({op_type}): input {i} ({inputs[i].name!r}) is a parameter and must be a "
                    "constant (graph.add_const)"
                )
        typed = [(i, v) for i, v in enumerate(inputs[:n])
                 if v is not None and not (op_type == "Reshape" and i == 1)]   # Reshape's shape is int64
        if typed and any(v.dtype != typed[0][1].dtype for _, v in typed):
            i, v = next((i, v) for i, v in typed if v.dtype != typed[0][1].dtype)
            raise OpError(
                f"node {name!r} ({op_type}): input {i} ({v.name!r}) has dtype {v.dtype}, input "
                f"{typed[0][0]} ({typed[0][1].name!r}) has {typed[0][1].dtype}; ONNX needs one element type "
                "for all of them (the IR's is float32): cast the array, e.g. array.astype(np.float32)"
            )
        shapes = [v.shape if v is not None else None for v in inputs[:n]]
        for i, v in enumerate(inputs[:n]):
            if v is not None and v.shape is None:
                raise ShapeError(f"node {name!r} ({op_type}): input {i} ({v.name!r}) has no known shape")
        attrs = _ops.normalize_attrs(op_type, attrs, name, shapes)
        consts = [v.const if v is not None else None for v in inputs[:n]]
        try:
            out_shapes = spec.infer(attrs, shapes, consts)
        except ShapeError as e:
            ins = ", ".join(f"{v.name}{_fmt_shape(v.shape)}" for v in inputs[:n] if v is not None)
            raise ShapeError(f"node {name!r} ({op_type}) with inputs {ins}: {e}") from None
        except (TypeError, IndexError, KeyError, ValueError) as e:
            raise ShapeError(
                f"node {name!r} ({op_type}): inputs or attributes do not fit the op ({e})"
            ) from None
        return attrs, [tuple(s) for s in out_shapes]

    # ------------------------------------------------------------------ mutators
    def add_node(
        self,
        op_type: str,
        inputs: Sequence[Value | str | None],
        attrs: dict | None = None,
        name: str | None = None,
        outputs: Sequence[str] | None = None,
        index: int | None = None,
        meta: dict | None = None,
    ) -> Node:
        """Create a node, infer its output shapes and insert it.

        Args:
            op_type: an op of the table (:func:`nashir.ops.supported_ops`).
            inputs: Values (or value names) of this graph; None for an absent optional input.
            attrs: attributes; defaults are filled in.
            name: node name (must be free); generated (``conv_3``) when None.
            outputs: names of the output values; default: the node name (made unique).
            index: position in ``nodes``; default: the end (so nodes keep the order they were added in,
                e.g. an imported model's order).
            meta: initial ``meta`` dict.

        Returns:
            The new Node.

        Raises:
            GraphError: unknown/foreign input, taken name, index that breaks topological order.
            OpError: wrong arity, bad attribute, non-constant parameter.
            ShapeError: input/weight shapes that do not fit. In every case the graph is unchanged.
        """
        if name is None:
            name = self.auto_node_name(op_type)
        elif name in self._node_names:
            raise GraphError(f"node name {name!r} is already used; pick another or pass name=None")
        ins = [self._resolve(v, f"input {i} of node {name!r}") for i, v in enumerate(inputs)]
        while ins and ins[-1] is None:
            ins.pop()
        attrs, out_shapes = self._check_node(name, op_type, ins, attrs)
        spec = _ops.get_op(op_type)
        n_out = spec.n_outputs
        if outputs is None:
            out_names = [name] if n_out == 1 else [f"{name}_out{i}" for i in range(n_out)]
            taken: set[str] = set()
            fixed = []
            for o in out_names:
                o2 = self.unique_value_name(o)
                while o2 in taken:
                    o2 = self.unique_value_name(o2 + "_")
                taken.add(o2)
                fixed.append(o2)
            out_names = fixed
        else:
            out_names = list(outputs)
            if len(out_names) != n_out:
                raise GraphError(
                    f"node {name!r} ({op_type}) has {n_out} output(s), {len(out_names)} names given"
                )
            for o in out_names:
                if o in self.values:
                    raise GraphError(f"node {name!r}: output name {o!r} is already used; pick another")
            if len(set(out_names)) != len(out_names):
                raise GraphError(f"node {name!r}: output names {out_names} repeat")
        last = -1
        for v in ins:
            if v is not None and v.producer is not None:
                last = max(last, self.nodes.index(v.producer))
        if index is None:
            index = len(self.nodes)
        elif not last < index <= len(self.nodes):
            raise GraphError(
                f"node {name!r}: index {index} would place it before the producer of one of its inputs "
                f"(must be in {last + 1}..{len(self.nodes)})"
            )
        dtype = "float32"
        for v in ins:
            if v is not None and not v.is_const:
                dtype = v.dtype
                break
        # --- all checks passed: mutate
        outs = [Value(o, s, dtype) for o, s in zip(out_names, out_shapes)]
        node = Node(name, op_type, ins, outs, attrs, dict(meta or {}))
        for v in outs:
            v.producer = node
            self.values[v.name] = v
        for i, v in enumerate(ins):
            if v is not None:
                v.uses.append((node, i))
        self.nodes.insert(index, node)
        self._node_names[name] = node
        return node

    def insert_after(
        self,
        value: Value | str,
        op_type: str,
        extra_inputs: Sequence[Value | str | None] = (),
        attrs: dict | None = None,
        name: str | None = None,
        meta: dict | None = None,
    ) -> Node:
        """Insert ``op_type(value, *extra_inputs)`` and make every former use of ``value`` (and the
        graph outputs) read the new node's output instead.

        Raises:
            GraphError, OpError, ShapeError: as :meth:`add_node`; the new node must keep ``value``'s
            shape when ``value`` has uses (else the consumers would no longer fit), and an extra input
            must not depend on a consumer of ``value`` (a cycle). Graph unchanged.
        """
        v = self._resolve(value, "insert_after value")
        extras = [self._resolve(x, f"extra input {i} of insert_after {v.name!r}")
                  for i, x in enumerate(extra_inputs)]
        index = 0 if v.producer is None else self.nodes.index(v.producer) + 1
        for xv in extras:
            if xv is not None and xv.producer is not None:
                index = max(index, self.nodes.index(xv.producer) + 1)
        old_uses = list(v.uses)
        was_output = [i for i, o in enumerate(self.outputs) if o is v]
        if name is None:
            name = self.auto_node_name(op_type)
        for xv in extras:
            if xv is None or xv.producer is None:
                continue
            for u, _ in old_uses:
                if u is xv.producer or self._reaches(u, xv.producer):
                    raise GraphError(
                        f"insert_after {v.name!r}: extra input {xv.name!r} of the new node {name!r} depends "
                        f"on node {u.name!r}, which reads {v.name!r}; rewiring {u.name!r} to {name!r} would "
                        "create a cycle (take the extra input from upstream of the consumers)"
                    )
        _, out_shapes = self._check_node(name, op_type, [v, *extras], attrs)
        if (old_uses or was_output) and out_shapes[0] != v.shape:
            raise ShapeError(
                f"insert_after {v.name!r}: node {name!r} ({op_type}) would change its shape "
                f"{_fmt_shape(v.shape)} to {_fmt_shape(out_shapes[0])}, which its consumers do not accept; "
                "insert an op that keeps the shape"
            )
        node = self.add_node(op_type, [v, *extras], attrs, name, index=index, meta=meta)
        new = node.outputs[0]
        for n, i in old_uses:
            n.inputs[i] = new
            v.uses.remove((n, i))
            new.uses.append((n, i))
        for i in was_output:
            self.outputs[i] = new
        pos = self.nodes.index(node)
        if any(self.nodes.index(n) < pos for n, _ in old_uses):
            self.toposort()
        return node

    def set_input(self, node: Node, index: int, value: Value | str | None) -> None:
        """Make ``node.inputs[index]`` read ``value``.

        Raises:
            GraphError: foreign node/value, or the rewire would create a cycle.
            OpError, ShapeError: the node would no longer fit its op. Graph unchanged.
        """
        self._own_node(node)
        v = self._resolve(value, f"input {index} of node {node.name!r}")
        if not 0 <= index < max(len(node.inputs), index + 1):
            raise GraphError(f"node {node.name!r}: input index {index} out of range")
        if v is not None and v.producer is not None and (
            v.producer is node or self._reaches(node, v.producer)
        ):
            raise GraphError(
                f"node {node.name!r}: reading {v.name!r} (produced downstream) would create a cycle"
            )
        new_inputs = list(node.inputs) + [None] * (index + 1 - len(node.inputs))
        new_inputs[index] = v
        attrs, out_shapes = self._check_node(node.name, node.op_type, new_inputs, node.attrs)
        if [o.shape for o in node.outputs] != out_shapes:
            raise ShapeError(
                f"node {node.name!r}: with input {index} = {v.name if v else None!r} its output shape would "
                f"change from {[_fmt_shape(o.shape) for o in node.outputs]} to "
                f"{[_fmt_shape(s) for s in out_shapes]}; use infer_shapes() after widening instead"
            )
        old = node.inputs[index] if index < len(node.inputs) else None
        if old is not None:
            old.uses.remove((node, index))
        node.inputs[:] = new_inputs
        while node.inputs and node.inputs[-1] is None:
            node.inputs.pop()
        if v is not None:
            v.uses.append((node, index))
        node.attrs = attrs
        if v is not None and v.producer is not None and self.nodes.index(v.producer) > self.nodes.index(node):
            self.toposort()

    def replace_all_uses_with(
        self, old: Value | str, new: Value | str, exclude: Iterable[Node] = (), outputs: bool = True
    ) -> None:
        """Rewire every use of ``old`` (except by nodes in ``exclude``) to ``new``; graph outputs too
        when ``outputs``.

        Raises:
            GraphError: foreign values, different shapes, or a rewire that would create a cycle.
        """
        o = self._resolve(old, "old value")
        n = self._resolve(new, "new value")
        excl = list(exclude)
        uses = [(u, i) for u, i in o.uses if all(u is not e for e in excl)]
        if o.shape != n.shape:
            raise GraphError(
                f"replace_all_uses_with: {o.name!r}{_fmt_shape(o.shape)} and {n.name!r}{_fmt_shape(n.shape)} "
                "have different shapes"
            )
        if n.producer is not None:
            for u, _ in uses:
                if u is n.producer or self._reaches(u, n.producer):
                    raise GraphError(
                        f"replace_all_uses_with: node {u.name!r} reading {n.name!r} would create a cycle"
                    )
        for u, i in uses:
            u.inputs[i] = n
            o.uses.remove((u, i))
            n.uses.append((u, i))
        if outputs:
            self.outputs = [n if x is o else x for x in self.outputs]
        if n.producer is not None:   # the rewired uses must come after new's producer
            pos = self.nodes.index(n.producer)
            if any(self.nodes.index(u) < pos for u, _ in uses):
                self.toposort()

    def remove_node(self, node: Node | str, replacement: Value | str | None = None) -> None:
        """Remove ``node``. Its outputs must be unused, or ``replacement`` takes over the uses of its
        first (only) output. Constant inputs left without uses are removed too.

        Raises:
            GraphError: outputs still used and no replacement; foreign node.
        """
        nd = self.node(node) if isinstance(node, str) else node
        self._own_node(nd)
        if replacement is not None:
            r = self._resolve(replacement, "replacement")
            if len(nd.outputs) != 1:
                raise GraphError(f"remove_node {nd.name!r}: a replacement needs a single-output node")
            if r.producer is nd:
                raise GraphError(f"remove_node {nd.name!r}: the replacement is the node's own output")
            self.replace_all_uses_with(nd.outputs[0], r)
        for o in nd.outputs:
            if o.uses or any(x is o for x in self.outputs):
                users = ", ".join(sorted({u.name for u, _ in o.uses})) or "graph output"
                raise GraphError(
                    f"cannot remove node {nd.name!r}: its output {o.name!r} is still used by {users}; "
                    "rewire those uses first (replace_all_uses_with) or pass replacement="
                )
        self._drop_node(nd)

    def _drop_node(self, nd: Node) -> None:
        for i, v in enumerate(nd.inputs):
            if v is not None:
                v.uses.remove((nd, i))
                if v.is_const and not v.uses:
                    del self.values[v.name]
        for o in nd.outputs:
            self.values.pop(o.name, None)
        self.nodes.remove(nd)
        del self._node_names[nd.name]

    def set_const(self, value: Value | str, array: np.ndarray) -> None:
        """Replace a constant's array (its shape may change; call :meth:`infer_shapes` after).

        Raises:
            GraphError: ``value`` is unknown, foreign or not a constant, or the dtype is unsupported.
        """
        v = self._resolve(value, "constant")
        if not v.is_const:
            raise GraphError(f"set_const: {v.name!r} is not a constant")
        arr = np.asarray(array)
        if arr.dtype.name not in _DTYPES:
            raise GraphError(f"set_const {v.name!r}: dtype {arr.dtype.name} is not supported; use one of "
                             f"{sorted(_DTYPES)}")
        v.const = arr
        v.shape = tuple(arr.shape)
        v.dtype = arr.dtype.name

    def set_attr(self, node: Node, key: str, val: Any) -> None:
        """Set one attribute (validated against the op and the node's current inputs).

        Output shapes are not recomputed: after a change that alters them (strides, pads) call
        :meth:`infer_shapes` (``verify()`` reports stale shapes). ``val=None`` restores the default.

        Raises:
            GraphError: the node is foreign. OpError, ShapeError: the attribute or the resulting
            node does not fit the op; the node is left unchanged.
        """
        self._own_node(node)
        attrs = dict(node.attrs)
        attrs[key] = val
        attrs, _ = self._check_node(node.name, node.op_type, node.inputs, attrs)
        node.attrs = attrs

    def prune(self) -> None:
        """Remove nodes whose outputs reach no graph output, and constants nothing uses."""
        live: set[int] = set()
        stack = [o for o in self.outputs]
        seen_vals: set[int] = set()
        while stack:
            v = stack.pop()
            if id(v) in seen_vals:
                continue
            seen_vals.add(id(v))
            if v.producer is not None and id(v.producer) not in live:
                live.add(id(v.producer))
                stack.extend(x for x in v.producer.inputs if x is not None)
        for nd in reversed(list(self.nodes)):
            if id(nd) not in live:
                self._drop_node(nd)
        for name in [n for n, v in self.values.items() if v.is_const and not v.uses]:
            del self.values[name]

    def _own_node(self, node: Node) -> None:
        if self._node_names.get(getattr(node, "name", None)) is not node:
            raise GraphError(f"node {getattr(node, 'name', node)!r} does not belong to this graph")

    def _reaches(self, src: Node, dst: Node) -> bool:
        """True when ``dst`` is reachable from ``src`` along def-use edges."""
        stack = [src]
        seen: set[int] = set()
        while stack:
            n = stack.pop()
            if n is dst:
                return True
            if id(n) in seen:
                continue
            seen.add(id(n))
            for o in n.outputs:
                stack.extend(u for u, _ in o.uses)
        return False

    # ------------------------------------------------------------------ whole-graph operations
    def toposort(self) -> None:
        """Reorder ``nodes`` topologically (stable: keeps the current order where it can).

        Raises:
            GraphError: the graph has a cycle (names the nodes on it).
        """
        pos = {id(n): i for i, n in enumerate(self.nodes)}
        indeg = {id(n): 0 for n in self.nodes}
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and v.producer is not None and id(v.producer) in pos:
                    indeg[id(n)] += 1
        import heapq

        ready = [(pos[id(n)], n.name) for n in self.nodes if indeg[id(n)] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            _, nm = heapq.heappop(ready)
            n = self._node_names[nm]
            order.append(n)
            for o in n.outputs:
                for u, _ in o.uses:
                    if id(u) in indeg:
                        indeg[id(u)] -= 1
                        if indeg[id(u)] == 0:
                            heapq.heappush(ready, (pos[id(u)], u.name))
        if len(order) != len(self.nodes):
            stuck = sorted(n.name for n in self.nodes if all(n is not o for o in order))
            raise GraphError(f"the graph has a cycle through nodes {stuck}; break it by rewiring one input")
        self.nodes = order

    def infer_shapes(self) -> None:
        """Recompute every node's output shapes from the inputs and weights, in topological order.

        Used after a pass changed weight shapes (widening). All-or-nothing.

        Raises:
            ShapeError: a node no longer fits (names the node); shapes are left as they were.
        """
        new: dict[int, list[Shape]] = {}
        cur: dict[int, Shape | None] = {}

        def shp(v: Value | None):
            if v is None:
                return None
            return cur.get(id(v), v.shape)

        for nd in self.nodes:
            spec = _ops.get_op(nd.op_type)
            shapes = [shp(v) for v in nd.inputs]
            consts = [v.const if v is not None else None for v in nd.inputs]
            try:
                outs = spec.infer(nd.attrs, shapes, consts)
            except ShapeError as e:
                ins = ", ".join(f"{v.name}{_fmt_shape(shp(v))}" for v in nd.inputs if v is not None)
                raise ShapeError(f"node {nd.name!r} ({nd.op_type}) with inputs {ins}: {e}") from None
            except (TypeError, IndexError, KeyError, ValueError) as e:
                raise ShapeError(
                    f"node {nd.name!r} ({nd.op_type}): inputs or attributes do not fit the op ({e})"
                ) from None
            new[id(nd)] = [tuple(s) for s in outs]
            for o, s in zip(nd.outputs, outs):
                cur[id(o)] = tuple(s)
        for nd in self.nodes:
            for o, s in zip(nd.outputs, new[id(nd)]):
                o.shape = s

    def verify(self) -> None:
        """Check every invariant of the IR (module docstring).

        Raises:
            VerifyError: lists each problem, naming the node or value and what to fix.
        """
        problems: list[str] = []
        p = problems.append
        owned = self.values
        node_ids = {id(n) for n in self.nodes}
        names: set[str] = set()
        for n in self.nodes:
            if n.name in names:
                p(f"node {n.name!r}: the name is used by two nodes; rename one (names must be unique)")
            names.add(n.name)
            if self._node_names.get(n.name) is not n:
                p(f"node {n.name!r}: not registered in the graph's name table; add nodes with graph.add_node")
        for k, v in owned.items():
            if v.name != k:
                p(f"value {v.name!r}: stored under the name {k!r}; rename values through the graph only")
            if v.is_const:
                if v.producer is not None:
                    p(f"constant {k!r}: has a producer node {v.producer.name!r}; a constant has none")
                if tuple(v.const.shape) != tuple(v.shape or ()):
                    p(f"constant {k!r}: shape {_fmt_shape(v.shape)} differs from its array's "
                      f"{list(v.const.shape)}; use graph.set_const")
                if v.const.dtype.name != v.dtype:
                    p(f"constant {k!r}: dtype {v.dtype} differs from its array's {v.const.dtype.name}; "
                      "use graph.set_const")
            if v.producer is not None and id(v.producer) not in node_ids:
                p(f"value {k!r}: its producer {v.producer.name!r} is not in the graph; remove the value too")
            for u, i in v.uses:
                if id(u) not in node_ids:
                    p(f"value {k!r}: lists a use by node {u.name!r}, which is not in the graph; "
                      "remove the stale use")
                elif i >= len(u.inputs) or u.inputs[i] is not v:
                    p(f"value {k!r}: lists a use by node {u.name!r} at input {i}, but that input is another "
                      "value; rewire with graph.set_input")
        for v in self.inputs:
            if owned.get(v.name) is not v:
                p(f"graph input {v.name!r}: not owned by the graph; add it with graph.add_input")
            if v.is_const:
                p(f"graph input {v.name!r}: is a constant; weights are not graph inputs")
            if v.producer is not None:
                p(f"graph input {v.name!r}: is produced by node {v.producer.name!r}; a graph input has no "
                  "producer (remove it from graph.inputs)")
        for v in self.outputs:
            if owned.get(v.name) is not v:
                p(f"graph output {v.name!r}: not owned by the graph; mark an owned value with add_output")
        defined: set[int] = {id(v) for v in self.inputs}
        used_before_defined = False
        for n in self.nodes:
            spec = _ops.OPS.get(n.op_type)
            for i, v in enumerate(n.inputs):
                if v is None:
                    continue
                if owned.get(v.name) is not v:
                    p(f"node {n.name!r}: input {i} {v.name!r} does not belong to the graph; use the graph's "
                      "own value (graph.value(name))")
                    continue
                if (n, i) not in [(u, j) for u, j in v.uses if u is n]:
                    p(f"node {n.name!r}: reads {v.name!r} at input {i} but the value's use list lacks it; "
                      "rewire with graph.set_input")
                if not v.is_const and id(v) not in defined:
                    used_before_defined = True
                    p(f"node {n.name!r}: input {i} {v.name!r} is used before it is defined; reorder with "
                      "graph.toposort() or fix the producer")
            for o in n.outputs:
                if o.producer is not n:
                    p(f"node {n.name!r}: output {o.name!r} names another producer; outputs belong to one "
                      "node")
                if owned.get(o.name) is not o:
                    p(f"node {n.name!r}: output {o.name!r} does not belong to the graph; create outputs "
                      "with graph.add_node")
                defined.add(id(o))
            if spec is None:
                p(f"node {n.name!r}: op {n.op_type!r} is not in the op table; supported: "
                  f"{', '.join(_ops.supported_ops())}")
                continue
            try:
                attrs, shapes = self._check_node(n.name, n.op_type, list(n.inputs), n.attrs)
            except NashirError as e:
                p(f"{e}; fix the node's inputs/attributes")
                continue
            if attrs != n.attrs:
                diff = sorted(set(attrs) ^ set(n.attrs)
                              | {k for k in attrs if attrs.get(k) != n.attrs.get(k)})
                p(f"node {n.name!r}: attributes {diff} are missing or not explicit/normalised; every "
                  "attribute must be explicit (build nodes with graph.add_node)")
            if len(shapes) != len(n.outputs):
                p(f"node {n.name!r}: has {len(n.outputs)} outputs, {n.op_type} gives {len(shapes)}; "
                  "rebuild the node with graph.add_node")
            for o, s in zip(n.outputs, shapes):
                if o.shape != s:
                    p(f"node {n.name!r}: output {o.name!r} has shape {_fmt_shape(o.shape)} but shape "
                      f"inference gives {_fmt_shape(s)}; call graph.infer_shapes() after changing weights")
        # cycles: a cycle has a use before its definition in every node order, so only then is the
        # graph searched for one (to name its nodes)
        if used_before_defined:
            try:
                import networkx as nx

                if not nx.is_directed_acyclic_graph(self.to_networkx()):
                    cyc = nx.find_cycle(self.to_networkx())
                    p(f"the graph has a cycle through nodes {sorted({a for a, _ in cyc})}; rewire one input "
                      "to break it")
            except NashirError as e:
                p(str(e))
        if problems:
            raise VerifyError(problems)

    def clone(self) -> Graph:
        """A deep copy: new Values, Nodes and copied weight arrays; names kept."""
        g = Graph(self.name)
        g.meta = copy.deepcopy(self.meta)
        vmap: dict[int, Value] = {}
        for k, v in self.values.items():
            nv = Value(v.name, v.shape, v.dtype, None if v.const is None else v.const.copy())
            vmap[id(v)] = nv
            g.values[k] = nv
        for n in self.nodes:
            nn = Node(n.name, n.op_type, [vmap[id(v)] if v is not None else None for v in n.inputs],
                      [vmap[id(o)] for o in n.outputs], _copy_attrs(n.attrs),
                      copy.deepcopy(n.meta) if n.meta else {})
            for i, v in enumerate(nn.inputs):
                if v is not None:
                    v.uses.append((nn, i))
            for o in nn.outputs:
                o.producer = nn
            g.nodes.append(nn)
            g._node_names[nn.name] = nn
        g.inputs = [vmap[id(v)] for v in self.inputs]
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g

    def to_networkx(self):
        """A ``networkx.DiGraph`` view: one vertex per node name, an edge per data dependency
        (attribute ``value`` names the tensor). Use it for ancestors, paths and the like."""
        import networkx as nx

        dg = nx.DiGraph()
        for n in self.nodes:
            dg.add_node(n.name, op_type=n.op_type)
        for n in self.nodes:
            for v in n.inputs:
                if v is not None and v.producer is not None:
                    dg.add_edge(v.producer.name, n.name, value=v.name)
        return dg

    def is_ancestor(self, a: Value | str, b: Value | str) -> bool:
        """True when value ``b`` depends on value ``a`` (``a`` is ``b`` or upstream of it)."""
        va = self._resolve(a, "value a")
        vb = self._resolve(b, "value b")
        if va is vb:
            return True
        stack = [vb]
        seen: set[int] = set()
        while stack:
            v = stack.pop()
            if v is va:
                return True
            if id(v) in seen or v.producer is None:
                continue
            seen.add(id(v))
            stack.extend(x for x in v.producer.inputs if x is not None)
        return False

    # ------------------------------------------------------------------ statistics
    def param_count(self) -> int:
        """Number of parameter scalars (weights, biases, BatchNorm arrays incl. running stats).

        A constant shared by several nodes counts once (per-node counts: :func:`nashir.ops.count_params`).
        """
        seen: dict[int, int] = {}
        for n in self.nodes:
            for v in _ops.param_values(n):
                seen[id(v)] = int(v.const.size)
        return sum(seen.values())

    def mac_count(self) -> int:
        """Multiply-accumulates of one forward pass for one sample."""
        return sum(_ops.count_macs(n) for n in self.nodes)

    def constants(self) -> list[Value]:
        """Every constant Value, in name order."""
        return [self.values[k] for k in sorted(self.values) if self.values[k].is_const]

    # ------------------------------------------------------------------ text form
    def __str__(self) -> str:
        def val(v: Value | None) -> str:
            if v is None:
                return "_"
            if v.is_const:
                if v.const.size == 1 and v.const.ndim <= 1:
                    return f"${v.name}<{v.const.reshape(-1)[0].item()!r}>"
                return f"${v.name}{_fmt_shape(v.shape)}"
            return f"%{v.name}"

        def attr(x: Any) -> str:
            if isinstance(x, list):
                return "[" + ",".join(attr(y) for y in x) + "]"
            if isinstance(x, float):
                return repr(x)
            if isinstance(x, str):
                return repr(x)
            return str(x)

        lines = [f"graph {self.name}("
                 + ", ".join(f"%{v.name}: {v.dtype}{_fmt_shape(v.shape)}" for v in self.inputs) + ")"]
        for n in self.nodes:
            a = " ".join(f"{k}={attr(n.attrs[k])}" for k in sorted(n.attrs))
            outs = ", ".join(f"%{o.name}: {o.dtype}{_fmt_shape(o.shape)}" for o in n.outputs)
            line = f"  {outs} = {n.op_type}[{n.name}](" + ", ".join(val(v) for v in n.inputs) + ")"
            if a:
                line += " {" + a + "}"
            if "calibrate" in n.meta:
                line += f"  # calibrate={n.meta['calibrate']}"
            lines.append(line)
        lines.append("  return " + ", ".join(f"%{v.name}" for v in self.outputs))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.nodes)} nodes, {self.param_count()} params>"


__all__ = ["Value", "Node", "Graph", "Shape", "Dim"]

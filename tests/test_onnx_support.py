"""Shared helpers for the ONNX backend tests (no tests here): an independent torch reference of IR graphs.

The reference evaluates a nashir Graph op by op with ``torch.nn.functional`` so that onnxruntime
outputs of exported models can be checked against something that shares no code with nashir's
exporter or onnxruntime.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def torch_reference(graph, x: np.ndarray) -> list[np.ndarray]:
    """Evaluate ``graph`` on ``x`` (single data input) with torch.nn.functional, float64."""
    import torch
    import torch.nn.functional as F

    env = {graph.inputs[0].name: torch.from_numpy(np.asarray(x, np.float64))}

    def t(v):
        if v is None:
            return None
        if v.is_const:
            c = torch.from_numpy(np.array(v.const))
            return c.double() if c.is_floating_point() else c
        return env[v.name]

    for n in graph.nodes:
        ins = [t(v) for v in n.inputs]
        a = n.attrs
        op = n.op_type
        if op == "Conv":
            p = a["pads"]
            h = F.pad(ins[0], (p[1], p[3], p[0], p[2]))
            y = F.conv2d(h, ins[1], ins[2] if len(ins) > 2 else None, stride=a["strides"],
                         dilation=a["dilations"], groups=a["group"])
        elif op == "BatchNormalization":
            x0, s, b, m, var = ins
            sh = (1, -1) + (1,) * (x0.dim() - 2)
            y = (x0 - m.view(sh)) / torch.sqrt(var.view(sh) + a["epsilon"]) * s.view(sh) + b.view(sh)
        elif op == "Relu":
            y = F.relu(ins[0])
        elif op == "LeakyRelu":
            y = F.leaky_relu(ins[0], a["alpha"])
        elif op == "Sigmoid":
            y = torch.sigmoid(ins[0])
        elif op == "Tanh":
            y = torch.tanh(ins[0])
        elif op in ("Identity", "Dropout"):
            y = ins[0]
        elif op == "Clip":
            lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
            hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
            y = torch.clamp(ins[0], lo, hi)
        elif op == "LRN":
            y = F.local_response_norm(ins[0], a["size"], a["alpha"], a["beta"], a["bias"])
        elif op == "MaxPool":
            p = a["pads"]
            h = F.pad(ins[0], (p[1], p[3], p[0], p[2]), value=-float("inf"))
            y = F.max_pool2d(h, a["kernel_shape"], a["strides"], 0, a["dilations"], bool(a["ceil_mode"]))
        elif op == "AveragePool":
            p = a["pads"]
            assert p[0] == p[2] and p[1] == p[3] and not a["ceil_mode"]
            y = F.avg_pool2d(ins[0], a["kernel_shape"], a["strides"], (p[0], p[1]),
                             count_include_pad=bool(a["count_include_pad"]))
        elif op == "GlobalAveragePool":
            y = ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)
        elif op == "Flatten":
            ax = a["axis"]
            y = ins[0].reshape(int(np.prod(ins[0].shape[:ax])), -1)
        elif op == "Reshape":
            tgt = [int(s) if s != 0 else ins[0].shape[i] for i, s in enumerate(ins[1].tolist())]
            y = ins[0].reshape(tgt)
        elif op == "Transpose":
            y = ins[0].permute(a["perm"])
        elif op == "Softmax":
            y = torch.softmax(ins[0], a["axis"])
        elif op == "Gemm":
            y = ins[0] @ ins[1].T
            if len(ins) > 2 and ins[2] is not None:
                y = y + ins[2]
        elif op == "Add":
            y = ins[0] + ins[1]
        elif op == "Mul":
            y = ins[0] * ins[1]
        elif op == "Concat":
            y = torch.cat(ins, a["axis"])
        elif op == "Elu":
            y = torch.where(ins[0] > 0, ins[0], a["alpha"] * (torch.exp(ins[0]) - 1))
        elif op == "HardSigmoid":
            y = torch.clamp(a["alpha"] * ins[0] + a["beta"], 0, 1)
        elif op == "HardSwish":
            y = ins[0] * torch.clamp(ins[0] + 3, 0, 6) / 6
        elif op == "PRelu":
            y = torch.where(ins[0] >= 0, ins[0], ins[0] * ins[1])
        elif op == "GlobalMaxPool":
            y = ins[0].amax(dim=tuple(range(2, ins[0].dim())), keepdim=True)
        elif op == "LogSoftmax":
            z = ins[0] - ins[0].amax(a["axis"], keepdim=True)
            y = z - torch.log(torch.exp(z).sum(a["axis"], keepdim=True))
        elif op == "ConvTranspose":   # scatter form, 2-D, group 1: y[i*s + k*d] += x[i] w[k] per axis
            assert a["group"] == 1 and ins[0].dim() == 4
            x0, w = ins[0], ins[1]
            (sh_, sw_), (dh, dw), p, op_ = a["strides"], a["dilations"], a["pads"], a["output_padding"]
            hh, ww = x0.shape[2], x0.shape[3]
            kh, kw = w.shape[2], w.shape[3]
            full = x0.new_zeros(x0.shape[0], w.shape[1], sh_ * (hh - 1) + dh * (kh - 1) + 1 + op_[0],
                                sw_ * (ww - 1) + dw * (kw - 1) + 1 + op_[1])
            for i in range(kh):
                for j in range(kw):
                    rows = slice(i * dh, i * dh + sh_ * (hh - 1) + 1, sh_)
                    cols = slice(j * dw, j * dw + sw_ * (ww - 1) + 1, sw_)
                    full[:, :, rows, cols] += torch.einsum("nchw,cd->ndhw", x0, w[:, :, i, j])
            y = full[:, :, p[0]:full.shape[2] - p[2], p[1]:full.shape[3] - p[3]]
            if len(ins) > 2 and ins[2] is not None:
                y = y + ins[2].view(1, -1, 1, 1)
        elif op == "InstanceNormalization":
            sp = tuple(range(2, ins[0].dim()))
            sh = (1, -1) + (1,) * (ins[0].dim() - 2)
            mu = ins[0].mean(sp, keepdim=True)
            var = ((ins[0] - mu) ** 2).mean(sp, keepdim=True)
            y = (ins[0] - mu) / torch.sqrt(var + a["epsilon"]) * ins[1].view(sh) + ins[2].view(sh)
        elif op == "Pad":   # numpy's pad as the independent reference
            r = ins[0].dim()
            width = [(a["pads"][i], a["pads"][i + r]) for i in range(r)]
            mode = a["mode"]
            kw = {"constant_values": a["value"]} if mode == "constant" else {}
            y = torch.from_numpy(np.pad(ins[0].numpy(), width, mode=mode, **kw))
        elif op == "Slice":
            sl = [slice(None)] * ins[0].dim()
            for ax, b_, e_, st in zip(a["axes"], a["starts"], a["ends"], a["steps"]):
                sl[ax] = slice(b_, None if e_ < -(2**62) else e_, st)
            y = torch.from_numpy(np.ascontiguousarray(ins[0].numpy()[tuple(sl)]))
        else:  # pragma: no cover - a new op needs a reference here
            raise NotImplementedError(op)
        env[n.outputs[0].name] = y
    return [env[v.name].numpy() for v in graph.outputs]


def assert_close(a, b, rtol=1e-5, atol=1e-5):
    """|a - b| <= atol * max(1, max|b|) + rtol * |b| elementwise."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    err = np.abs(a - b)
    assert (err <= atol * scale + rtol * np.abs(b)).all(), f"max abs diff {err.max()} (scale {scale})"

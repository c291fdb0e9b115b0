"""Round trips of models exported by torch.onnx (legacy TorchScript exporter and the dynamo exporter):
load -> save -> load gives the same text form; onnxruntime outputs of the torch export and of nashir's
re-export agree within 1e-5 relative, and both agree with torch itself; the batch is free afterwards."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from test_onnx_support import assert_close

import nashir
from nashir.backends.onnx import run

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def _bn_relu_conv(cin, cout, k=3):
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, k, padding=k // 2, bias=False))


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 3 * 3, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10)
        )

    def forward(self, x):
        return self.head(self.features(x))


class ResBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.short = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)) + self.short(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class DenseBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.l1 = _bn_relu_conv(8, 4)
        self.l2 = _bn_relu_conv(12, 4)
        self.trans = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.AvgPool2d(2))
        self.fc = nn.Linear(8 * 5 * 5, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.l1(x)], 1)
        x = torch.cat([x, self.l2(x)], 1)
        return self.fc(self.trans(x).view(x.size(0), -1))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b3 = nn.Sequential(nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(8, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 5, padding=2))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 2, 1))
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        h = torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)
        h = F.relu(self.bn(h))
        return self.fc(h.mean(dim=(2, 3), keepdim=True).flatten(1))


class MatMulHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.w = nn.Parameter(torch.randn(4 * 5 * 5, 10) * 0.1)
        self.b = nn.Parameter(torch.randn(10) * 0.1)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = h.reshape(h.shape[0], -1)
        return torch.softmax(torch.matmul(h, self.w) + self.b, dim=1)


class SqueezeExcite(nn.Module):
    """x * gate(fc2(act(fc1(gap(x))))): EfficientNet (SiLU, Sigmoid) and MobileNetV3 (ReLU, Hardsigmoid)."""

    def __init__(self, c, r, act=nn.SiLU, gate=nn.Sigmoid):
        super().__init__()
        self.fc1, self.fc2, self.act, self.gate = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1), act(), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class MobileNetV3Block(nn.Module):
    """MobileNetV3's inverted residual with Hardswish and a Hardsigmoid squeeze-and-excitation."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.exp = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16),
                                nn.Hardswish())
        self.se = SqueezeExcite(16, 8, nn.ReLU, nn.Hardsigmoid)
        self.proj = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Linear(8, 12), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(12, 10))

    def forward(self, x):
        x = self.stem(x)
        x = x + self.proj(self.se(self.dw(self.exp(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ShuffleNetV2Block(nn.Module):
    """ShuffleNetV2's basic unit: chunk (Split/Slice), branch, concat, channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                    nn.Conv2d(4, 4, 3, 1, 1, groups=4, bias=False), nn.BatchNorm2d(4),
                                    nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return F.log_softmax(self.fc(x.amax((2, 3))), 1)


class ResNeXtBlock(nn.Module):
    """A ResNeXt bottleneck (grouped 3x3 conv, 4 groups), PReLU, InstanceNorm and an Elu head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.InstanceNorm2d(8, affine=True), nn.PReLU(8))
        self.c1 = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=4, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.fc = nn.Sequential(nn.Linear(8 * 5 * 5, 10), nn.ELU())

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.c3(self.c2(self.c1(x))))
        return self.fc(torch.flatten(F.max_pool2d(self.pad(x), 2), 1))


MODELS = {
    "vgg": VGG,
    "resnet": ResBlock,
    "densenet": DenseBlock,
    "inception": Inception,
    "matmul-head": MatMulHead,
    "mobilenetv3": MobileNetV3Block,
    "shufflenetv2": ShuffleNetV2Block,
    "resnext": ResNeXtBlock,
}
#: the blocks of issue 16 (ops nashir did not read before): they need no Gemm/Flatten checks
NEW_OP_MODELS = ("mobilenetv3", "shufflenetv2", "resnext")
SHAPE = (3, 10, 10)


def _make(name):
    torch.manual_seed(0)
    m = MODELS[name]()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that folding them matters
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def _export(model, exporter, keep_bn, batch=2):
    x = torch.randn(batch, *SHAPE)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            kw = (
                {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
                if keep_bn
                else {}
            )
            dyn = {"x": {0: "batch"}, "y": {0: "batch"}} if keep_bn else None  # fixed batch when folded
            torch.onnx.export(
                model, (x,), f, dynamo=False, input_names=["x"], output_names=["y"], dynamic_axes=dyn, **kw
            )
        else:
            dyn = ({0: torch.export.Dim("batch", min=1, max=64)},) if keep_bn else None
            torch.onnx.export(
                model,
                (x,),
                f,
                dynamo=True,
                optimize=not keep_bn,
                dynamic_shapes=dyn,
                input_names=["x"],
                output_names=["y"],
                verbose=False,
            )
    return onnx.load_from_string(f.getvalue())


def _check(name, exporter, keep_bn, tmp_path):
    model = _make(name)
    src = _export(model, exporter, keep_bn)
    has_bn = any(n.op_type == "BatchNormalization" for n in src.graph.node)
    if keep_bn:
        assert has_bn
    g = nashir.load(src)
    assert any(n.op_type == "BatchNormalization" for n in g.nodes) == has_bn
    out = tmp_path / f"{name}.onnx"
    nashir.save(g, out)
    onnx.checker.check_model(str(out), full_check=True)
    g2 = nashir.load(out)
    assert str(g2) == str(g)
    x = np.random.default_rng(1).normal(size=(2, *SHAPE)).astype(np.float32)
    want = run(src, x)[0]
    got = run(out, x)[0]
    assert_close(got, want, rtol=1e-5)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert_close(got, ref, rtol=1e-4, atol=1e-5)
    x7 = np.random.default_rng(2).normal(size=(7, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        assert_close(run(out, x7)[0], model(torch.from_numpy(x7)).numpy(), rtol=1e-4, atol=1e-5)
    return g


@pytest.mark.parametrize("keep_bn", [False, True], ids=["bn-folded", "bn-kept"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_legacy_exporter(name, keep_bn, tmp_path):
    g = _check(name, "legacy", keep_bn, tmp_path)
    ops = {n.op_type for n in g.nodes}
    if name in NEW_OP_MODELS:
        need = {"mobilenetv3": {"HardSwish", "HardSigmoid", "Mul"}, "shufflenetv2": {"Slice", "Transpose"},
                "resnext": {"PRelu", "InstanceNormalization", "Elu", "Pad"}}[name]
        assert need <= ops, ops
        return
    assert "Gemm" in ops and not ops & {"MatMul", "Shape", "Gather", "Unsqueeze", "Constant"}
    if name in ("vgg", "densenet", "matmul-head", "resnet"):
        assert "Flatten" in ops and "Reshape" not in ops


# The dynamo exporter takes seconds per model: each model once, BatchNorm kept (unoptimised export with a
# dynamic batch) for some and folded (optimised export at a fixed batch) for the others.
DYNAMO_CASES = [
    ("vgg", False),
    ("resnet", True),
    ("densenet", False),
    ("inception", True),
    ("matmul-head", False),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,keep_bn", DYNAMO_CASES, ids=[f"{n}-bn-{'kept' if k else 'folded'}" for n, k in DYNAMO_CASES]
)
def test_dynamo_exporter(name, keep_bn, tmp_path):
    pytest.importorskip("onnxscript")
    g = _check(name, "dynamo", keep_bn, tmp_path)
    ops = {n.op_type for n in g.nodes}
    assert "Gemm" in ops and "Reshape" not in ops

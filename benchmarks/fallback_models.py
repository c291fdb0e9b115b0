"""Hand-written torch models of the torchvision classifier families, for benchmarks/coverage.py when
torchvision does not import (it is not a nashir dependency, and its PyPI wheels need a matching torch).

Each builder follows the torchvision architecture's layer pattern (stage widths, block types,
groups, squeeze-and-excitation, activations, channel shuffle), so that the same ops and the same
channel couplings appear; the depths are those of the named model unless a comment says otherwise.
Weights are torch's defaults (the coverage figures do not depend on them).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(cin, cout, k=3, s=1, g=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _head(cin, classes=1000, dropout=0.0):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, classes))


# ---------------------------------------------------------------------------------------------- ResNet family


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, w, s, groups=1, base=64):
        super().__init__()
        self.c1, self.c2 = _cbr(cin, w, 3, s), _cbr(w, w, 3, 1, act=None)
        self.down = _cbr(cin, w, 1, s, act=None) if s != 1 or cin != w else None

    def forward(self, x):
        return F.relu(self.c2(self.c1(x)) + (x if self.down is None else self.down(x)))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, w, s, groups=1, base=64):
        super().__init__()
        mid = int(w * base / 64) * groups
        out = w * 4
        self.c1, self.c2 = _cbr(cin, mid, 1), _cbr(mid, mid, 3, s, g=groups)
        self.c3 = _cbr(mid, out, 1, act=None)
        self.down = _cbr(cin, out, 1, s, act=None) if s != 1 or cin != out else None

    def forward(self, x):
        return F.relu(self.c3(self.c2(self.c1(x))) + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, block, depths, groups=1, base=64):
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for i, (w, d) in enumerate(zip((64, 128, 256, 512), depths)):
            for k in range(d):
                layers.append(block(cin, w, 2 if i and not k else 1, groups, base))
                cin = w * block.expansion
        self.layers = nn.Sequential(*layers)
        self.head = _head(cin)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


# ------------------------------------------------------------------------------------- VGG, SqueezeNet


class VGG11BN(nn.Module):
    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7))
        self.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class _Fire(nn.Module):
    def __init__(self, cin, s, e):
        super().__init__()
        self.sq, self.e1, self.e3 = nn.Conv2d(cin, s, 1), nn.Conv2d(s, e, 1), nn.Conv2d(s, e, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.sq(x))
        return torch.cat([F.relu(self.e1(h)), F.relu(self.e3(h))], 1)


class SqueezeNet(nn.Module):
    def __init__(self):
        super().__init__()
        mp = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, 2), nn.ReLU(), mp, _Fire(96, 16, 64), _Fire(128, 16, 64), _Fire(128, 32, 128),
            nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(256, 32, 128), _Fire(256, 48, 192), _Fire(384, 48, 192),
            _Fire(384, 64, 256), nn.MaxPool2d(3, 2, ceil_mode=True), _Fire(512, 64, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, 1000, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------- DenseNet, GoogLeNet


class DenseNet121(nn.Module):
    def __init__(self, growth=32, blocks=(6, 12, 24, 16)):
        super().__init__()
        self.stem = nn.Sequential(_cbr(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.ModuleList()
        self.trans = nn.ModuleList()
        c = 64
        for i, n in enumerate(blocks):
            layers = nn.ModuleList()
            for _ in range(n):
                layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(),
                                            nn.Conv2d(c, 4 * growth, 1, bias=False),
                                            nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)))
                c += growth
            self.blocks.append(layers)
            if i < len(blocks) - 1:
                self.trans.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(),
                                                nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)))
                c //= 2
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 1000)

    def forward(self, x):
        x = self.stem(x)
        for i, layers in enumerate(self.blocks):
            feats = [x]
            for lay in layers:
                feats.append(lay(torch.cat(feats, 1)))
            x = torch.cat(feats, 1)
            if i < len(self.trans):
                x = self.trans[i](x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1), 1))


class _Inception(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        self.b1 = _cbr(cin, c1, 1)
        self.b2 = nn.Sequential(_cbr(cin, c3r, 1), _cbr(c3r, c3, 3))
        self.b3 = nn.Sequential(_cbr(cin, c5r, 1), _cbr(c5r, c5, 3))   # torchvision uses 3x3 here too
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _cbr(cin, pp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class GoogLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        mp = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.net = nn.Sequential(
            _cbr(3, 64, 7, 2), mp, _cbr(64, 64, 1), _cbr(64, 192, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
            _Inception(192, 64, 96, 128, 16, 32, 32), _Inception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool2d(3, 2, ceil_mode=True), _Inception(480, 192, 96, 208, 16, 48, 64),
            _Inception(512, 160, 112, 224, 24, 64, 64), _Inception(512, 128, 128, 256, 24, 64, 64),
            _Inception(512, 112, 144, 288, 32, 64, 64), _Inception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool2d(2, 2, ceil_mode=True), _Inception(832, 256, 160, 320, 32, 128, 128),
            _Inception(832, 384, 192, 384, 48, 128, 128))
        self.head = _head(1024, dropout=0.2)

    def forward(self, x):
        return self.head(self.net(x))


# ---------------------------------------------------------------------------------------------- mobile nets


class _SE(nn.Module):
    def __init__(self, c, r, act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        self.fc1, self.fc2, self.act, self.gate = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1), act(), gate()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class _MB(nn.Module):
    """Inverted residual: expand 1x1, depthwise kxk, optional SE, project 1x1 (MobileNetV2/V3,
    MnasNet, EfficientNet)."""

    def __init__(self, cin, exp, cout, k, s, act=nn.ReLU6, se=None, se_act=nn.ReLU, gate=nn.Sigmoid):
        super().__init__()
        layers = [] if exp == cin else [_cbr(cin, exp, 1, act=act)]
        layers.append(_cbr(exp, exp, k, s, g=exp, act=act))
        if se:
            layers.append(_SE(exp, se, se_act, gate))
        layers.append(_cbr(exp, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.res = s == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.res else self.body(x)


def mobilenet_v2():
    # (expand ratio t, cout, repeats n, stride s) as torchvision's mobilenet_v2
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1)]
    layers, cin = [_cbr(3, 32, 3, 2, act=nn.ReLU6)], 32
    for t, cout, n, s in cfg:
        for i in range(n):
            layers.append(_MB(cin, cin * t, cout, 3, s if i == 0 else 1, nn.ReLU6))
            cin = cout
    layers.append(_cbr(cin, 1280, 1, act=nn.ReLU6))
    return nn.Sequential(*layers, _head(1280, dropout=0.2))


class MobileNetV3Small(nn.Module):
    def __init__(self):
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU

        def se(c):
            return max(8, (c // 4 + 4) // 8 * 8)
        # (cin, exp, cout, k, s, se, act) as torchvision's mobilenet_v3_small
        cfg = [(16, 16, 16, 3, 2, True, re), (16, 72, 24, 3, 2, False, re), (24, 88, 24, 3, 1, False, re),
               (24, 96, 40, 5, 2, True, hs), (40, 240, 40, 5, 1, True, hs), (40, 240, 40, 5, 1, True, hs),
               (40, 120, 48, 5, 1, True, hs), (48, 144, 48, 5, 1, True, hs), (48, 288, 96, 5, 2, True, hs),
               (96, 576, 96, 5, 1, True, hs), (96, 576, 96, 5, 1, True, hs)]
        layers = [_cbr(3, 16, 3, 2, act=hs)]
        for cin, exp, cout, k, s, use_se, act in cfg:
            layers.append(_MB(cin, exp, cout, k, s, act, se(exp) if use_se else None, nn.ReLU,
                              nn.Hardsigmoid))
        layers.append(_cbr(96, 576, 1, act=hs))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(576, 1024), hs(), nn.Dropout(0.2), nn.Linear(1024, 1000))

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class EfficientNetB0(nn.Module):
    def __init__(self):
        super().__init__()
        # (expand ratio, cout, k, s, repeats)
        cfg = [(1, 16, 3, 1, 1), (6, 24, 3, 2, 2), (6, 40, 5, 2, 2), (6, 80, 3, 2, 3), (6, 112, 5, 1, 3),
               (6, 192, 5, 2, 4), (6, 320, 3, 1, 1)]
        layers, cin = [_cbr(3, 32, 3, 2, act=nn.SiLU)], 32
        for t, cout, k, s, n in cfg:
            for i in range(n):
                e = cin * t
                layers.append(_MB(cin, e, cout, k, s if i == 0 else 1, nn.SiLU, max(1, cin // 4), nn.SiLU))
                cin = cout
        layers.append(_cbr(cin, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.head = _head(1280, dropout=0.2)

    def forward(self, x):
        return self.head(self.features(x))


def mnasnet1_0():
    # (expand ratio t, cout, k, stride s, repeats n) as torchvision's mnasnet1_0
    cfg = [(3, 24, 3, 2, 3), (3, 40, 5, 2, 3), (6, 80, 5, 2, 3), (6, 96, 3, 1, 2), (6, 192, 5, 2, 4),
           (6, 320, 3, 1, 1)]
    layers = [_cbr(3, 32, 3, 2), _cbr(32, 32, 3, 1, g=32), _cbr(32, 16, 1, act=None)]
    cin = 16
    for t, cout, k, s, n in cfg:
        for i in range(n):
            layers.append(_MB(cin, cin * t, cout, k, s if i == 0 else 1, nn.ReLU))
            cin = cout
    layers.append(_cbr(cin, 1280, 1))
    return nn.Sequential(*layers, _head(1280, dropout=0.2))


class _Shuffle(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        half = cout // 2
        self.s = s
        if s > 1:
            self.b1 = nn.Sequential(_cbr(cin, cin, 3, s, g=cin, act=None), _cbr(cin, half, 1))
        self.b2 = nn.Sequential(_cbr(cin if s > 1 else half, half, 1),
                                _cbr(half, half, 3, s, g=half, act=None), _cbr(half, half, 1))

    def forward(self, x):
        if self.s == 1:
            a, b = x.chunk(2, dim=1)
            x = torch.cat([a, self.b2(b)], 1)
        else:
            x = torch.cat([self.b1(x), self.b2(x)], 1)
        n, c, h, w = x.shape
        return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNetV2(nn.Module):
    def __init__(self, widths=(24, 116, 232, 464, 1024), repeats=(4, 8, 4)):
        super().__init__()
        layers, cin = [_cbr(3, widths[0], 3, 2), nn.MaxPool2d(3, 2, 1)], widths[0]
        for w, n in zip(widths[1:4], repeats):
            for i in range(n):
                layers.append(_Shuffle(cin, w, 2 if i == 0 else 1))
                cin = w
        layers.append(_cbr(cin, widths[4], 1))
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(widths[4], 1000)

    def forward(self, x):
        return self.fc(self.net(x).mean((2, 3)))


class _RegY(nn.Module):
    def __init__(self, cin, w, s, gw=8):
        super().__init__()
        self.a, self.b = _cbr(cin, w, 1), _cbr(w, w, 3, s, g=w // gw)
        self.se = _SE(w, max(1, cin // 4))
        self.c = _cbr(w, w, 1, act=None)
        self.proj = _cbr(cin, w, 1, s, act=None) if s != 1 or cin != w else None

    def forward(self, x):
        return F.relu(self.c(self.se(self.b(self.a(x)))) + (x if self.proj is None else self.proj(x)))


class RegNetY400MF(nn.Module):
    def __init__(self, widths=(48, 104, 208, 440), depths=(1, 3, 6, 6)):
        super().__init__()
        layers, cin = [_cbr(3, 32, 3, 2)], 32
        for w, d in zip(widths, depths):
            for i in range(d):
                layers.append(_RegY(cin, w, 2 if i == 0 else 1))
                cin = w
        self.net = nn.Sequential(*layers)
        self.head = _head(cin)

    def forward(self, x):
        return self.head(self.net(x))


FALLBACKS = {
    "resnet18": lambda: ResNet(_Basic, (2, 2, 2, 2)),
    "resnet50": lambda: ResNet(_Bottleneck, (3, 4, 6, 3)),
    "resnext50_32x4d": lambda: ResNet(_Bottleneck, (3, 4, 6, 3), groups=32, base=4),
    "wide_resnet50_2": lambda: ResNet(_Bottleneck, (3, 4, 6, 3), base=128),
    "regnet_y_400mf": RegNetY400MF,
    "vgg11_bn": VGG11BN,
    "densenet121": DenseNet121,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": MobileNetV3Small,
    "efficientnet_b0": EfficientNetB0,
    "shufflenet_v2_x1_0": ShuffleNetV2,
    "squeezenet1_0": SqueezeNet,
    "googlenet": GoogLeNet,
    "mnasnet1_0": mnasnet1_0,
}

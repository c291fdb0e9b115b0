"""Graph-level training and evaluation (nashir.backends.torch.train / evaluate), on CPU with digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nashir import GraphBuilder, ops
from nashir.backends.onnx import run as ort_run
from nashir.backends.torch import TrainConfig, calibration_hook, evaluate, to_torch, train
from nashir.backends.torch.sgdr import DeviceData
from nashir.data import load_dataset
from nashir.errors import BackendError, DataError, TrainingDiverged
from nashir.ir import Graph


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def small_cnn(seed: int = 0, cin: int = 1, hw: int = 8) -> Graph:
    b = GraphBuilder("small", (cin, hw, hw), seed=seed)
    h = b.conv_bn_relu(b.input, 8)
    h = b.maxpool(h, 2)
    h = b.flatten(h)
    return b.build(b.gemm(h, 10))


def identity_bn(b: GraphBuilder, x, name: str, momentum: float = 0.9):
    """Net2DeeperNet's BatchNorm in its inference-identity form, marked for calibration."""
    c = x.shape[1]
    eps = 1e-5
    g = b.graph
    ins = [x, g.add_const(np.full(c, np.sqrt(1 + eps), np.float32), f"{name}.scale"),
           g.add_const(np.zeros(c, np.float32), f"{name}.bias"),
           g.add_const(np.zeros(c, np.float32), f"{name}.mean"),
           g.add_const(np.ones(c, np.float32), f"{name}.var")]
    node = g.add_node("BatchNormalization", ins, {"epsilon": eps, "momentum": momentum}, name=name,
                      meta={"calibrate": "identity"})
    return node.output


def consts(g: Graph) -> dict[str, np.ndarray]:
    return {v.name: v.const.copy() for v in g.constants()}


CPU = dict(device="cpu", threads=1)


def test_train_returns_new_graph_and_history(digits):
    g = small_cnn()
    before = consts(g)
    text = str(g)
    cfg = TrainConfig(epochs=2, lr_start=0.05, **CPU)
    g2, hist = train(g, digits, cfg)
    assert g2 is not g
    assert str(g) == text and all(np.array_equal(v.const, before[v.name]) for v in g.constants())
    g2.verify()
    assert [h["epoch"] for h in hist] == [0, 1]
    for h in hist:
        assert set(h) >= {"epoch", "loss", "train_acc", "val_acc", "lr", "seconds"}
        assert np.isfinite(h["loss"]) and 0 <= h["val_acc"] <= 1 and h["seconds"] > 0
    changed = [k for k in before if not np.array_equal(before[k], g2.value(k).const)]
    assert "gemm_0.weight" in changed and "conv_0.weight" in changed
    assert "bn_0.mean" in changed  # running statistics are written back
    assert all(g2.value(k).const.dtype == np.float32 for k in before)


def test_training_learns_digits_and_evaluate_matches_onnxruntime(digits):
    g2, hist = train(small_cnn(), digits, TrainConfig(epochs=4, lr_start=0.1, **CPU))
    assert hist[-1]["val_acc"] > 0.85
    acc, loss = evaluate(g2, digits, "test", device="cpu")
    # independent check: onnxruntime on the normalised test images
    x, y = digits.split("test")
    xn = ((x - digits.mean.reshape(1, -1, 1, 1)) / digits.std.reshape(1, -1, 1, 1)).astype(np.float32)
    logits = ort_run(g2, xn)[0].astype(np.float64)
    want_acc = float((logits.argmax(1) == y).mean())
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    want_loss = float((lse - logits[np.arange(len(y)), y]).mean())
    assert acc == pytest.approx(want_acc, abs=1.5 / len(y))
    assert loss == pytest.approx(want_loss, rel=1e-4)
    assert acc > 0.85
    val_acc, _ = evaluate(g2, digits, "val", device="cpu")
    assert val_acc == pytest.approx(hist[-1]["val_acc"])


def test_same_seed_same_weights_on_cpu(digits):
    cfg = TrainConfig(epochs=2, lr_start=0.05, seed=3, **CPU)
    a, ha = train(small_cnn(), digits, cfg)
    b, hb = train(small_cnn(), digits, cfg)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    for v in a.constants():
        assert np.array_equal(v.const, b.value(v.name).const), v.name
    c, _ = train(small_cnn(), digits, TrainConfig(epochs=2, lr_start=0.05, seed=4, **CPU))
    assert not np.array_equal(a.value("gemm_0.weight").const, c.value("gemm_0.weight").const)


# ----------------------------------------------------------------------------------------------
# identity calibration of Net2DeeperNet BatchNorms
# ----------------------------------------------------------------------------------------------


def deepened(momentum: float) -> Graph:
    b = GraphBuilder("deep", (1, 8, 8), seed=5)
    h = b.conv(b.input, 6, 3, name="c1")
    h = identity_bn(b, h, "bn_a", momentum)
    h = b.relu(h)
    h = b.conv(h, 6, 3, name="c2")
    h = identity_bn(b, h, "bn_b", momentum)
    h = b.relu(h)
    h = b.flatten(h)
    return b.build(b.gemm(h, 10))


def conv64(x: torch.Tensor, g: Graph, name: str) -> torch.Tensor:
    n = g.node(name)
    w = torch.from_numpy(n.inputs[1].const).double()
    bias = torch.from_numpy(n.inputs[2].const).double()
    return F.conv2d(x, w, bias, padding=1)


def test_identity_batchnorms_are_calibrated_on_the_first_batch(digits):
    # ONNX momentum 1 (torch momentum 0): running statistics keep what calibration set; lr 0 keeps
    # every weight, so the returned graph shows the calibration alone.
    g = deepened(momentum=1.0)
    cfg = TrainConfig(epochs=1, lr_start=0.0, lr_end=0.0, weight_decay=0.0, batch_size=64, seed=7, **CPU)
    g2, _ = train(g, digits, cfg)
    assert g.node("bn_a").meta == {"calibrate": "identity"}  # input untouched
    assert "calibrate" not in g2.node("bn_a").meta and "calibrate" not in g2.node("bn_b").meta
    for k in ("c1.weight", "c2.weight", "gemm_0.weight"):
        assert np.array_equal(g.value(k).const, g2.value(k).const)
    # the first training batch, as the trainer draws it (same seed, same generator use)
    dd = DeviceData(digits, "train", "cpu", augment=digits.augment, seed=cfg.seed)
    xb, _ = next(dd.batches(cfg.batch_size, shuffle=True))
    x = xb.double()
    a_in = conv64(x, g, "c1")
    # bn_a is the identity in training mode after calibration, so bn_b's input is conv2(relu(conv1 x))
    b_in = conv64(torch.relu(a_in), g, "c2")
    eps = 1e-5
    for name, inp in (("bn_a", a_in), ("bn_b", b_in)):
        mu = inp.mean(dim=(0, 2, 3)).numpy()
        var = inp.var(dim=(0, 2, 3), unbiased=False).numpy()
        np.testing.assert_allclose(g2.value(f"{name}.mean").const, mu, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g2.value(f"{name}.var").const, var, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g2.value(f"{name}.scale").const, np.sqrt(var + eps), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g2.value(f"{name}.bias").const, mu, rtol=1e-4, atol=1e-5)
    # and the calibrated layers are the identity on that batch, in training mode and in inference
    m = to_torch(g2)
    seen = {}
    for name in ("bn_a", "bn_b"):
        mod = m.get_submodule(m.nashir_modules[name])
        mod.register_forward_hook(lambda mod_, args, out, name=name: seen.__setitem__(name, (args[0], out)))
    for mode in (True, False):
        m.train(mode)
        with torch.no_grad():
            m(xb)
        for name in ("bn_a", "bn_b"):
            inp, out = seen[name]
            assert torch.allclose(out, inp, atol=1e-4), (name, mode)


def test_calibration_hook_leaves_other_batchnorms_and_rng_alone():
    b = GraphBuilder("mix", (2, 5, 5), seed=1)
    h = b.bn(b.conv(b.input, 4, 3), random_stats=True)
    h = identity_bn(b, h, "marked")
    g = b.build(h)
    m = to_torch(g)
    plain = m.get_submodule(m.nashir_modules["bn_0"])
    marked = m.get_submodule(m.nashir_modules["marked"])
    before = {k: t.clone() for k, t in plain.state_dict().items()}
    marked_tracked = marked.num_batches_tracked.clone()
    hook = calibration_hook(m, {m.nashir_modules["marked"]: marked})
    x = torch.randn(16, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(11)
    hook(m, x)
    after_rng = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after_rng, torch.rand(3))  # global RNG not advanced
    assert hook.calibrated == [m.nashir_modules["marked"]]
    for k, t in plain.state_dict().items():
        assert torch.equal(t, before[k]), k
    assert torch.equal(marked.num_batches_tracked, marked_tracked)
    with torch.no_grad():
        inp = plain.train()(m.get_submodule(m.nashir_modules["conv_0"])(x))
    want = inp.mean(dim=(0, 2, 3)).numpy()
    np.testing.assert_allclose(marked.running_mean.numpy(), want, rtol=1e-5, atol=1e-6)
    assert m.training


def test_zero_epochs_keep_the_mark(digits):
    g = deepened(0.9)
    g2, hist = train(g, digits, TrainConfig(epochs=0, **CPU))
    assert hist == []
    assert g2.node("bn_a").meta == {"calibrate": "identity"}
    assert all(np.array_equal(v.const, g.value(v.name).const) for v in g2.constants())


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def test_input_shape_that_does_not_fit_names_both_shapes(digits):
    g = small_cnn(cin=3, hw=32)
    with pytest.raises(DataError) as ei:
        train(g, digits, TrainConfig(epochs=1, **CPU))
    msg = str(ei.value)
    assert "(N, 3, 32, 32)" in msg and "(N, 1, 8, 8)" in msg and "input" in msg
    with pytest.raises(DataError, match=r"\(N, 3, 32, 32\)"):
        evaluate(g, digits, "test", device="cpu")


def test_output_that_does_not_fit_the_classes(digits):
    b = GraphBuilder("k7", (1, 8, 8))
    g = b.build(b.gemm(b.flatten(b.input), 7))
    with pytest.raises(DataError, match=r"\(N, 7\).*10 classes|10 classes.*\(N, 10\)"):
        train(g, digits, TrainConfig(epochs=1, **CPU))


def test_nan_loss_raises_training_diverged(digits):
    g = small_cnn()
    w = g.value("gemm_0.weight")
    bad = w.const.copy()
    bad[0, 0] = np.nan
    g.set_const(w, bad)
    with pytest.raises(TrainingDiverged) as ei:
        train(g, digits, TrainConfig(epochs=2, **CPU))
    assert ei.value.epoch == 0 and ei.value.step == 0
    assert "nan" in str(ei.value).lower()


def test_unlowerable_op_in_training_names_node_and_op(digits, monkeypatch):
    spec = ops.OpSpec("Mystery", 1, 1, lambda attrs, shapes, consts: [tuple(shapes[0])])
    monkeypatch.setitem(ops.OPS, "Mystery", spec)
    b = GraphBuilder("m", (1, 8, 8))
    h = b.graph.add_node("Mystery", [b.input], name="odd_one").output
    g = b.build(b.gemm(b.flatten(h), 10))
    with pytest.raises(BackendError, match="odd_one.*Mystery"):
        train(g, digits, TrainConfig(epochs=1, **CPU))

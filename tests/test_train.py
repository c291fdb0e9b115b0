"""Tests of nashir.backends.torch.sgdr: SGDR schedule, device augmentation, training loop (CPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from nashir.backends.torch.sgdr import (
    DeviceData,
    TrainConfig,
    TrainConfigError,
    crop_at,
    evaluate_module,
    hflip_where,
    random_crop,
    random_flip,
    resolve_device,
    sgdr_lr,
    train_module,
)
from nashir.data import Dataset, load_dataset
from nashir.errors import BackendError, DataError, NashirError, TrainingDiverged


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(32, 10),
    )


# ----------------------------------------------------------------------------------------------
# SGDR schedule (Loshchilov & Hutter, arXiv 1608.03983, eq. 5)
# ----------------------------------------------------------------------------------------------


def test_sgdr_single_cycle_values():
    cfg = TrainConfig(epochs=10, lr_start=0.1, lr_end=0.001)
    spe = 10  # 100 steps in the cycle
    assert sgdr_lr(0, spe, cfg) == pytest.approx(0.1)
    # Middle: cos(pi/2) = 0 -> halfway between the two rates.
    assert sgdr_lr(50, spe, cfg) == pytest.approx(0.0505)
    # A quarter: 0.001 + 0.5 * 0.099 * (1 + sqrt(2)/2).
    assert sgdr_lr(25, spe, cfg) == pytest.approx(0.001 + 0.0495 * (1 + 0.7071067811865476))
    # Last step of the cycle: T_cur = 99/100 of it.
    assert sgdr_lr(99, spe, cfg) == pytest.approx(0.001 + 0.0495 * (1 + math.cos(math.pi * 0.99)))
    # End of the cycle (and beyond) is lr_end.
    assert sgdr_lr(100, spe, cfg) == pytest.approx(0.001)
    assert sgdr_lr(1000, spe, cfg) == pytest.approx(0.001)
    # Monotone decreasing within the cycle.
    lrs = [sgdr_lr(s, spe, cfg) for s in range(100)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_sgdr_linear_warmup_scales_the_first_iterations():
    cfg = TrainConfig(epochs=10, lr_start=0.1, lr_end=0.0, warmup_epochs=0.5)
    plain = TrainConfig(epochs=10, lr_start=0.1, lr_end=0.0)
    spe = 10  # W = round(0.5 * 10) = 5 warm-up steps
    for s in range(5):
        assert sgdr_lr(s, spe, cfg) == pytest.approx(sgdr_lr(s, spe, plain) * (s + 1) / 5)
    for s in (5, 6, 50, 99):
        assert sgdr_lr(s, spe, cfg) == pytest.approx(sgdr_lr(s, spe, plain))
    assert sgdr_lr(0, spe, cfg) == pytest.approx(0.02)
    # a warm-up shorter than one step still gives at least one (factor 1 at step 0)
    tiny = TrainConfig(epochs=1, lr_start=0.1, warmup_epochs=0.01)
    assert sgdr_lr(0, 10, tiny) == pytest.approx(sgdr_lr(0, 10, plain))
    # without SGDR the warm-up still applies to the constant rate
    const = TrainConfig(epochs=2, lr_start=0.1, sgdr=False, warmup_epochs=1)
    assert [sgdr_lr(s, 4, const) for s in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


def test_bf16_precision_trains_on_cpu_and_is_repeatable(digits):
    def run(precision="bf16"):
        m = cnn(0)
        cfg = TrainConfig(epochs=3, batch_size=64, seed=3, device="cpu", precision=precision)
        return m, train_module(m, digits, cfg)

    m1, h1 = run()
    m2, h2 = run()
    assert [x["loss"] for x in h1] == [x["loss"] for x in h2]
    _, h32 = run("fp32")
    assert h1[-1]["val_acc"] > 0.3 and abs(h1[-1]["val_acc"] - h32[-1]["val_acc"]) < 0.1
    # the module is left in float32 and contiguous, as after an fp32 run
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in m1.parameters())
    acc32, _ = evaluate_module(m1, digits, "val", device="cpu", precision="fp32")
    acc16, _ = evaluate_module(m1, digits, "val", device="cpu", precision="bf16")
    assert abs(acc32 - acc16) < 0.05
    with pytest.raises(TrainConfigError, match="precision"):
        TrainConfig(epochs=1, precision="fp16")
    with pytest.raises(TrainConfigError, match="warmup_epochs"):
        TrainConfig(epochs=1, warmup_epochs=-1)


def test_device_data_takes_the_data_sets_crop_pad_and_flip(digits):
    import dataclasses

    x = np.zeros((6, 1, 8, 8), np.float32)
    x[:, :, :, :4] = 1.0  # left half bright: a flip moves it to the right half
    y = np.zeros(6, np.int64)
    ds = dataclasses.replace(digits, x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y, augment=True,
                             crop_pad=0, flip=False, mean=np.zeros(1), std=np.ones(1))
    dd = DeviceData(ds, "train", "cpu", augment=True, seed=0)
    assert dd.pad == 0 and dd.flip is False
    for _ in range(5):  # no crop, no flip: the batches are the images
        xb, _ = next(dd.batches(6, shuffle=True))
        assert torch.equal(xb, torch.from_numpy(x))
    flipping = DeviceData(dataclasses.replace(ds, flip=True), "train", "cpu", augment=True, seed=0)
    seen = torch.cat([next(flipping.batches(6, shuffle=True))[0] for _ in range(5)])
    assert bool((seen[:, 0, 0, 7] == 1.0).any())  # some image was mirrored


def test_sgdr_warm_restarts_tmult2():
    cfg = TrainConfig(epochs=14, lr_start=0.05, lr_end=0.0, t_0=2, t_mult=2)
    spe = 5  # cycles: steps [0, 10), [10, 30), [30, 70)
    assert sgdr_lr(0, spe, cfg) == pytest.approx(0.05)
    assert sgdr_lr(5, spe, cfg) == pytest.approx(0.025)  # middle of cycle 1
    assert sgdr_lr(9, spe, cfg) == pytest.approx(0.025 * (1 + math.cos(math.pi * 0.9)))
    assert sgdr_lr(10, spe, cfg) == pytest.approx(0.05)  # restart
    assert sgdr_lr(20, spe, cfg) == pytest.approx(0.025)  # middle of cycle 2 (20 steps)
    assert sgdr_lr(15, spe, cfg) == pytest.approx(0.025 * (1 + math.sqrt(0.5)))
    assert sgdr_lr(30, spe, cfg) == pytest.approx(0.05)  # restart
    assert sgdr_lr(50, spe, cfg) == pytest.approx(0.025)  # middle of cycle 3 (40 steps)


def test_sgdr_warm_restarts_tmult1_and_constant():
    cfg = TrainConfig(epochs=9, lr_start=0.2, lr_end=0.02, t_0=3)
    spe = 4
    assert sgdr_lr(12, spe, cfg) == pytest.approx(0.2)
    assert sgdr_lr(24, spe, cfg) == pytest.approx(0.2)
    assert sgdr_lr(18, spe, cfg) == pytest.approx(0.11)
    assert sgdr_lr(6, spe, cfg) == pytest.approx(0.11)
    const = TrainConfig(epochs=9, lr_start=0.2, sgdr=False)
    assert {sgdr_lr(s, spe, const) for s in range(40)} == {0.2}
    with pytest.raises(TrainConfigError):
        sgdr_lr(-1, spe, cfg)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(epochs=-1), "epochs"),
        (dict(epochs=1.5), "epochs"),
        (dict(epochs=1, lr_start=0.01, lr_end=0.1), "lr_end"),
        (dict(epochs=1, lr_start=-0.1, lr_end=-0.2), "lr_start"),
        (dict(epochs=1, batch_size=0), "batch_size"),
        (dict(epochs=1, momentum=1.0), "momentum"),
        (dict(epochs=1, momentum=0.0, nesterov=True), "nesterov"),
        (dict(epochs=1, weight_decay=-1), "weight_decay"),
        (dict(epochs=1, t_0=0), "t_0"),
        (dict(epochs=1, t_mult=0), "t_mult"),
        (dict(epochs=1, threads=0), "threads"),
        (dict(epochs=1, train_split="training"), "train_split"),
        (dict(epochs=1, eval_split="validation"), "eval_split"),
        (dict(epochs=1, lr_start=float("nan")), "lr_start"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(TrainConfigError, match=field) as ei:
        TrainConfig(**kwargs)
    assert isinstance(ei.value, NashirError)


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(TrainConfigError, match="not a torch device"):
        resolve_device("potato")
    if not torch.cuda.is_available():
        with pytest.raises(TrainConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------


def test_crop_at_equals_slices():
    padded = torch.arange(3 * 2 * 10 * 12).view(3, 2, 10, 12)
    oy, ox = torch.tensor([0, 2, 4]), torch.tensor([4, 0, 3])
    out = crop_at(padded, oy, ox, 6, 8)
    assert out.shape == (3, 2, 6, 8)
    for b in range(3):
        torch.testing.assert_close(out[b], padded[b, :, oy[b] : oy[b] + 6, ox[b] : ox[b] + 8])


def test_random_crop_is_a_window_of_the_zero_padded_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=g)
    out = random_crop(x, 4, g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.zeros(16, 3, 16, 16, dtype=torch.uint8)
    padded[:, :, 4:12, 4:12] = x
    offsets = set()
    for b in range(16):
        hits = [
            (i, j)
            for i in range(9)
            for j in range(9)
            if torch.equal(out[b], padded[b, :, i : i + 8, j : j + 8])
        ]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets vary across the batch
    assert torch.equal(random_crop(x, 0, g), x)


def test_flip():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    out = hflip_where(x, torch.tensor([True, False]))
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([2.0, 1.0, 0.0]))
    g = torch.Generator().manual_seed(1)
    y = torch.randn(64, 3, 4, 4)
    z = random_flip(y, g)
    assert z.shape == y.shape
    flipped = [torch.equal(z[b], y[b].flip(-1)) for b in range(64)]
    kept = [torch.equal(z[b], y[b]) for b in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54


def test_device_data_normalises_and_keeps_uint8():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 4, 50).astype(np.int64)
    mean = np.array([10.0, 20.0, 30.0], np.float32)
    std = np.array([2.0, 4.0, 8.0], np.float32)
    ds = Dataset("t", x, y, x[:10], y[:10], x[:5], y[:5], 4, mean, std, augment=True)
    dd = DeviceData(ds, "train", "cpu", augment=False, seed=0)
    assert dd.x.dtype == torch.uint8 and len(dd) == 50 and dd.num_batches(16) == 4
    batches = list(dd.batches(16))
    assert [b[0].shape[0] for b in batches] == [16, 16, 16, 2]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    expect = (torch.from_numpy(x[:16]).float() - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(xb, expect)
    # Shuffled epochs are permutations, different each epoch, and repeatable by seed.
    ep1 = torch.cat([b for _, b in dd.batches(16, shuffle=True)])
    ep2 = torch.cat([b for _, b in dd.batches(16, shuffle=True)])
    assert sorted(ep1.tolist()) == sorted(y.tolist())
    dd2 = DeviceData(ds, "train", "cpu", seed=0)
    assert torch.equal(torch.cat([b for _, b in dd2.batches(16, shuffle=True)]), ep1)
    assert not torch.equal(ep1, ep2)  # a fresh permutation per epoch
    # Augmented batches keep shapes.
    dda = DeviceData(ds, "train", "cpu", augment=True, seed=0)
    xa, _ = next(dda.batches(50))
    assert xa.shape == (50, 3, 8, 8) and xa.dtype == torch.float32
    with pytest.raises(DataError, match="unknown split"):
        DeviceData(ds, "nope", "cpu")


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def test_train_digits_reaches_80_percent(digits):
    m = mlp()
    hist = train_module(m, digits, TrainConfig(epochs=3, batch_size=32, seed=0))
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert set(hist[0]) == {"epoch", "loss", "train_acc", "val_acc", "lr", "seconds"}
    assert hist[-1]["val_acc"] > 0.8
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert all(h["seconds"] >= 0 for h in hist)
    # lr at the last step of the last epoch is near lr_end (=0), decreasing over epochs.
    assert hist[0]["lr"] > hist[1]["lr"] > hist[2]["lr"] >= 0
    acc, loss = evaluate_module(m, digits, "test")
    assert 0.8 < acc <= 1 and loss > 0


def _strip(hist):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in hist]


def test_same_seed_same_history_on_cpu(digits):
    cfg = TrainConfig(epochs=2, batch_size=64, seed=7, threads=1)
    ds = load_dataset("digits", augment=True)  # exercise augmentation RNG too
    a_mod, b_mod = cnn(), cnn()
    a = train_module(a_mod, ds, cfg)
    b = train_module(b_mod, ds, cfg)
    assert _strip(a) == _strip(b)
    for pa, pb in zip(a_mod.state_dict().values(), b_mod.state_dict().values()):
        assert torch.equal(pa, pb)
    c = train_module(cnn(), ds, TrainConfig(epochs=2, batch_size=64, seed=8, threads=1))
    assert _strip(c) != _strip(a)


def test_threads_restored(digits):
    before = torch.get_num_threads()
    train_module(mlp(), digits, TrainConfig(epochs=1, threads=1, eval_split=None))
    assert torch.get_num_threads() == before


class NaNAfter(nn.Module):
    """Linear classifier whose output becomes NaN from the k-th training forward call on."""

    def __init__(self, k: int):
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.k = k
        self.calls = 0

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.k:
                out = out * float("nan")
        return out


def test_nan_raises_training_diverged(digits):
    spe = math.ceil(len(digits.y_train) / 128)
    m = NaNAfter(spe + 2)  # training calls 0..spe+1 fine, call spe+2 = epoch 1, step 2
    with pytest.raises(TrainingDiverged) as ei:
        train_module(m, digits, TrainConfig(epochs=3, batch_size=128))
    assert ei.value.epoch == 1 and ei.value.step == 2
    assert "epoch 1, step 2" in str(ei.value)
    assert isinstance(ei.value, NashirError)
    m0 = NaNAfter(0)
    with pytest.raises(TrainingDiverged) as ei:
        train_module(m0, digits, TrainConfig(epochs=2))
    # the losses are read once per epoch: the first NaN is found (and named) at the end of epoch 0
    assert (ei.value.epoch, ei.value.step) == (0, 0)
    assert m0.calls == spe


def _count_syncs(monkeypatch) -> list[str]:
    """Count the device -> host reads (Tensor.item / tolist) made from now on."""
    calls: list[str] = []
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def counted_item(t):
        calls.append("item")
        return item(t)

    def counted_tolist(t):
        calls.append("tolist")
        return tolist(t)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    return calls


@pytest.mark.parametrize("batch_size", [16, 128])
def test_no_host_sync_per_step(digits, monkeypatch, batch_size):
    # 68 or 9 steps per epoch: the number of reads depends on the epochs only
    calls = _count_syncs(monkeypatch)
    train_module(mlp(), digits, TrainConfig(epochs=3, batch_size=batch_size, threads=1))
    assert len(calls) == 1 + 3 * 3, calls   # weights' finiteness once; per epoch: losses, weights, val


def test_progress_bar_reads_the_loss_at_most_once_per_interval(digits, monkeypatch):
    import nashir.backends.torch.sgdr as sgdr

    monkeypatch.setattr(sgdr, "PROGRESS_INTERVAL", 3600.0)
    calls = _count_syncs(monkeypatch)
    train_module(mlp(), digits, TrainConfig(epochs=2, batch_size=16, progress=True, threads=1))
    assert len(calls) == 1 + 2 * 4, calls   # + the last step's loss of each epoch for the bar


def test_cuda_flags_turn_cudnn_benchmark_on_for_cuda_only():
    from nashir.backends.torch.sgdr import cuda_flags

    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with cuda_flags(torch.device("cpu")):
            assert torch.backends.cudnn.benchmark is False
        with cuda_flags(torch.device("cuda")):   # setting the flag needs no GPU
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(KeyError), cuda_flags(torch.device("cuda", 0)):
            raise KeyError("inside")
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = old


def test_on_first_batch_called_once_before_first_step(digits):
    m = cnn()
    init = {k: v.detach().clone() for k, v in m.state_dict().items()}
    calls = []

    def hook(module, xb):
        assert module is m
        calls.append(xb.shape)
        assert xb.dtype == torch.float32
        # Normalised: roughly zero mean, unit std over the batch.
        assert abs(xb.mean().item()) < 0.5 and 0.5 < xb.std().item() < 1.5
        for k, v in module.state_dict().items():
            assert torch.equal(v, init[k]), f"{k} changed before on_first_batch"

    train_module(m, digits, TrainConfig(epochs=2, batch_size=32), on_first_batch=hook)
    assert calls == [torch.Size([32, 1, 8, 8])]


def test_on_first_batch_may_change_parameters(digits):
    m = mlp()

    def hook(module, xb):
        with torch.no_grad():
            module[3].bias.fill_(0.0)

    hist = train_module(m, digits, TrainConfig(epochs=1, batch_size=32), on_first_batch=hook)
    assert hist[0]["val_acc"] > 0.5


def test_eval_split_none_and_trainval(digits):
    hist = train_module(mlp(), digits, TrainConfig(epochs=1, eval_split=None, train_split="trainval"))
    assert hist[0]["val_acc"] is None
    assert train_module(mlp(), digits, TrainConfig(epochs=0)) == []


def test_progress_bar_runs(digits, capsys):
    hist = train_module(mlp(), digits, TrainConfig(epochs=1, progress=True, eval_split="test"))
    assert len(hist) == 1 and 0 <= hist[0]["val_acc"] <= 1


def test_wrong_output_shape(digits):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    with pytest.raises(BackendError, match=r"expected logits \(batch, 10\)"):
        train_module(m, digits, TrainConfig(epochs=1))
    with pytest.raises(BackendError, match=r"expected logits"):
        evaluate_module(m, digits, "val")


def test_evaluate_restores_mode(digits):
    m = cnn()
    m.train()
    acc, loss = evaluate_module(m, digits, "val", device="cpu", batch_size=100)
    assert m.training and 0 <= acc <= 1 and math.isfinite(loss)
    m.eval()
    evaluate_module(m, digits, "val")
    assert not m.training


def test_compile_runs_the_full_batches_through_torch_compile(digits, monkeypatch):
    # a fake torch.compile: counts the batches it sees; the last, smaller batch and the evaluation
    # run the module itself, so that one compilation serves the call
    seen = []

    class Fake(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            seen.append(x.shape[0])
            return self.m(x)

    modes = []

    def fake_compile(m, mode=None):
        modes.append(mode)
        return Fake(m)

    monkeypatch.setattr(torch, "compile", fake_compile)
    n = len(digits.y_train)   # 1078: 16 batches of 64 and one of 54 per epoch
    hist = train_module(mlp(), digits, TrainConfig(epochs=2, batch_size=64, compile=True,
                                                   compile_mode="reduce-overhead"))
    assert modes == ["reduce-overhead"] and len(hist) == 2
    assert seen == [64] * (2 * (n // 64))
    seen.clear()
    train_module(mlp(), digits, TrainConfig(epochs=1, batch_size=64))
    assert seen == []


def test_compile_options_are_checked():
    with pytest.raises(TrainConfigError, match="compile_mode"):
        TrainConfig(epochs=1, compile=True, compile_mode="fastest")
    with pytest.raises(TrainConfigError, match="compile"):
        TrainConfig(epochs=1, compile="yes")

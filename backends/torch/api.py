"""Graph-level training and evaluation: lower, train with :func:`train_module`, write back.

:func:`train` is what NASH's hill climbing calls for every neighbour (Elsken et al. 2018, arXiv
1711.04528, Algorithm 1, ``TrainSGDR``): the graph is lowered with
:func:`~nashir.backends.torch.lower.to_torch`, trained with SGD + momentum + weight decay under
SGDR (:func:`~nashir.backends.torch.sgdr.train_module`), and the trained weights and BatchNorm
running statistics are written into a copy of the graph.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nashir.backends.torch.lower import to_torch, update_weights
from nashir.backends.torch.sgdr import TrainConfig, evaluate_module, train_module
from nashir.data import Dataset
from nashir.errors import DataError
from nashir.ir import Graph

__all__ = ["train", "evaluate", "check_fits", "calibration_hook", "CALIBRATE_KEY", "CALIBRATE_IDENTITY"]

#: ``node.meta`` key and value that mark a BatchNormalization for identity calibration.
CALIBRATE_KEY = "calibrate"
CALIBRATE_IDENTITY = "identity"


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_fits(graph: Graph, data: Dataset) -> None:
    """Check that a graph can be fed the data set's images and scores its classes.

    The graph needs exactly one data input of shape (N, C, H, W) whose fixed dimensions equal the
    data set's ``(C, H, W)`` (a symbolic dimension fits any size), and exactly one output of shape
    (N, K) with ``K == data.num_classes`` (when K is fixed).

    Raises:
        DataError: The shapes do not fit; the message gives the model's and the data set's shapes.
    """
    if len(graph.inputs) != 1:
        raise DataError(
            f"model {graph.name!r} has {len(graph.inputs)} data inputs "
            f"({', '.join(v.name for v in graph.inputs) or 'none'}); training and evaluation need exactly "
            "one image input (N, C, H, W)"
        )
    v = graph.inputs[0]
    c, h, w = data.input_shape
    shp = tuple(v.shape or ())
    fits = len(shp) == 4 and all(not isinstance(d, int) or d == e for d, e in zip(shp[1:], (c, h, w)))
    if not fits:
        raise DataError(
            f"model input {v.name!r} has shape {_fmt(shp)} but data set {data.name!r} has images of shape "
            f"(N, {c}, {h}, {w}) (N, C, H, W); use a model made for {c}x{h}x{w} inputs or another data set"
        )
    if len(graph.outputs) != 1:
        raise DataError(
            f"model {graph.name!r} has {len(graph.outputs)} outputs; training and evaluation need exactly "
            "one output of class scores (N, num_classes)"
        )
    o = graph.outputs[0]
    oshp = tuple(o.shape or ())
    k = data.num_classes
    if len(oshp) != 2 or (isinstance(oshp[1], int) and oshp[1] != k):
        raise DataError(
            f"model output {o.name!r} has shape {_fmt(oshp)} but data set {data.name!r} has {k} classes, so "
            f"the output must be (N, {k}) class scores; change the model's last layer"
        )


def calibration_hook(module: nn.Module, bn_modules: dict[str, nn.Module]):
    """Make the ``on_first_batch`` callback that calibrates identity-marked BatchNorms.

    Net2DeeperNet's BatchNorm (DESIGN.md section 5; NASH, arXiv 1711.04528, Sec. 4.1) is the
    identity in inference with running mean 0, var 1, scale ``sqrt(1 + eps)``, bias 0, but not in
    training mode, where the batch's statistics replace the running ones. On the first training
    batch, for each marked BatchNorm (input ``x`` of shape (N, C, ...)), with ``mu`` and ``var``
    the per-channel mean and biased variance of ``x`` over every axis but 1:
    ``running_mean := mu``, ``running_var := var``, ``scale := sqrt(var + eps)``, ``bias := mu``,
    so that ``scale * (x - mu) / sqrt(var + eps) + bias == x``: the layer is the identity in
    training mode on that batch (and in inference on it).

    One forward pass in training mode under ``torch.no_grad`` computes the statistics; a forward
    pre-hook calibrates each marked layer just before it runs, so a marked layer downstream of
    another sees its input as training will. The pass leaves no other trace: every BatchNorm's
    buffers are restored (then the marked ones get the statistics above) and torch's RNG state
    is forked.

    Args:
        module: The lowered module (its submodules include ``bn_modules``).
        bn_modules: submodule name -> BatchNorm module to calibrate.

    Returns:
        ``fn(module, xb)`` for :func:`~nashir.backends.torch.sgdr.train_module`'s
        ``on_first_batch``; after it ran, ``fn.calibrated`` lists the calibrated submodule names.
    """

    def on_first_batch(mod: nn.Module, xb: torch.Tensor) -> None:
        all_bn = [m for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [{k: b.clone() for k, b in m._buffers.items() if b is not None} for m in all_bn]
        stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = []
        for name, bn in bn_modules.items():
            def pre(m, args, name=name):
                x = args[0].float()
                dims = [0] + list(range(2, x.ndim))
                mu = x.mean(dim=dims)
                var = x.var(dim=dims, unbiased=False)
                m.weight.copy_(torch.sqrt(var + m.eps).to(m.weight.dtype))
                m.bias.copy_(mu.to(m.bias.dtype))
                stats[name] = (mu, var)

            handles.append(bn.register_forward_pre_hook(pre))
        devices = [xb.device] if xb.device.type == "cuda" else []
        was_training = mod.training
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                mod.train()
                mod(xb)
        finally:
            for h in handles:
                h.remove()
            mod.train(was_training)
            with torch.no_grad():
                for m, buf in zip(all_bn, saved):
                    for k, b in buf.items():
                        m._buffers[k].copy_(b)
        with torch.no_grad():
            for name, (mu, var) in stats.items():
                bn = bn_modules[name]
                bn.running_mean.copy_(mu)
                bn.running_var.copy_(var)
        on_first_batch.calibrated = sorted(stats)

    on_first_batch.calibrated = []
    return on_first_batch


def train(graph: Graph, data: Dataset, config: TrainConfig, on_epoch=None) -> tuple[Graph, list[dict]]:
    """Train a graph on a data set; return a trained copy and the per-epoch history.

    SGD with momentum (Nesterov optional) and coupled weight decay, the learning rate annealed per
    iteration by SGDR (Loshchilov & Hutter 2017, arXiv 1608.03983, eq. 5), one cosine cycle per
    call as NASH does unless ``config.t_0`` asks for warm restarts (see
    :class:`~nashir.backends.torch.sgdr.TrainConfig` for every knob and the defaults:
    momentum 0.9, weight decay 5e-4, batch 128). BatchNormalization nodes marked
    ``node.meta["calibrate"] == "identity"`` (Net2DeeperNet) are calibrated on the first training
    batch (:func:`calibration_hook`) and the mark is removed from the returned graph (it stays
    when ``config.epochs == 0``, as nothing was calibrated).

    Args:
        graph: The model; not modified. Input (N, C, H, W) matching the data set's images, output
            (N, num_classes) logits.
        data: The data set (``config.train_split`` is trained on, ``config.eval_split`` scored).
        config: Hyper-parameters, device, seed, threads.
        on_epoch: Called with each epoch's history dict as soon as the epoch is done.

    Returns:
        ``(trained, history)``: a new :class:`~nashir.ir.Graph` with the trained weights and
        BatchNorm running statistics (float32), and one dict per epoch with ``epoch``, ``loss``,
        ``train_acc``, ``val_acc``, ``lr``, ``seconds``.

    Raises:
        DataError: The graph's input or output shape does not fit the data set (both shapes named).
        TrainingDiverged: The loss became NaN or infinite (epoch and step given).
        BackendError: An op cannot be lowered (node and op named).
    """
    check_fits(graph, data)
    g = graph.clone()
    module = to_torch(g)
    marked = [n for n in g.nodes
              if n.op_type == "BatchNormalization" and n.meta.get(CALIBRATE_KEY) == CALIBRATE_IDENTITY]
    hook = None
    if marked:
        hook = calibration_hook(module, {module.nashir_modules[n.name]: module.get_submodule(
            module.nashir_modules[n.name]) for n in marked})
    history = train_module(module, data, config, on_first_batch=hook, on_epoch=on_epoch)
    update_weights(g, module)
    if hook is not None:
        done = set(hook.calibrated)
        for n in marked:
            if module.nashir_modules[n.name] in done:
                del n.meta[CALIBRATE_KEY]
    # The network expects inputs normalised as (x - mean) / std per channel; the ONNX exporter keeps
    # this in the model's metadata so that whoever deploys the model can reproduce it.
    g.meta["input_normalization"] = {"mean": [float(x) for x in data.mean],
                                     "std": [float(x) for x in data.std]}
    return g, history


def evaluate(graph: Graph, data: Dataset, split: str = "test", device: str | torch.device | None = None,
             batch_size: int = 512, precision: str = "auto") -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a graph on one split of a data set (inference mode).

    Args:
        graph: The model (not modified).
        data: The data set; images are normalised with its per-channel mean/std, never augmented.
        split: ``"test"``, ``"val"``, ``"train"`` or ``"trainval"``.
        device: None or ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda[:N]"``.
        batch_size: Images per forward pass.
        precision: ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"fp32"`` or ``"bf16"``.

    Returns:
        ``(accuracy, loss)``: top-1 accuracy in [0, 1] and mean cross-entropy in nats per image.

    Raises:
        DataError: Shapes that do not fit the data set, or an unknown/empty split.
        BackendError: An op cannot be lowered.
    """
    check_fits(graph, data)
    module = to_torch(graph)
    return evaluate_module(module, data, split, device="auto" if device is None else device,
                           batch_size=batch_size, precision=precision)

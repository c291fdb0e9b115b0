"""PyTorch backend (DESIGN.md section 6): lowering of the IR, SGDR training, evaluation.

* :func:`to_torch` lowers a :class:`~nashir.ir.Graph` to a ``torch.fx.GraphModule`` with one
  submodule per IR node; :func:`update_weights` writes trained weights back.
* :func:`train` trains a copy of a graph (SGD + momentum + weight decay under SGDR) and returns it
  with the per-epoch history; :func:`evaluate` scores a graph on a split.
* :mod:`nashir.backends.torch.sgdr` holds the module-level loop (:class:`TrainConfig`,
  :func:`train_module`, :func:`evaluate_module`, device-resident data and augmentation).

Importing this package imports torch; ``import nashir`` does not.
"""

from __future__ import annotations

from nashir.backends.torch.api import calibration_hook, check_fits, evaluate, train
from nashir.backends.torch.lower import (
    lowerable_ops,
    module_name,
    register_lowering,
    to_torch,
    update_weights,
)
from nashir.backends.torch.sgdr import (
    DeviceData,
    TrainConfig,
    evaluate_module,
    resolve_device,
    sgdr_lr,
    train_module,
)
from nashir.errors import TrainingDiverged

__all__ = [
    "to_torch", "update_weights", "register_lowering", "lowerable_ops", "module_name",
    "train", "evaluate", "check_fits", "calibration_hook",
    "TrainConfig", "train_module", "evaluate_module", "resolve_device", "sgdr_lr", "DeviceData",
    "TrainingDiverged",
]

"""Optimizers: ``SGD``, ``AdaGrad``, ``RMSProp``, ``Adam``, ``AdamW``, ``NAdam``, ``Adamax``, ``RAdam``, ``Lion``.

Each updates a list of NumPy arrays (or PyTorch-style parameter groups) in place (``opt.step(grads)``) or,
made without parameters, is bound by ``Sequential.fit`` to the model. The math is in each class's docstring.
"""

from fastopt.optim.adagrad import AdaGrad
from fastopt.optim.adam import Adam, AdamW
from fastopt.optim.adamax import Adamax
from fastopt.optim.clip import clip_grad_norm_, clip_grad_value_
from fastopt.optim.lion import Lion
from fastopt.optim.nadam import NAdam
from fastopt.optim.optimizer import Optimizer
from fastopt.optim.radam import RAdam
from fastopt.optim.rmsprop import RMSProp
from fastopt.optim.sgd import SGD

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "adam": Adam,
    "adamw": AdamW,
    "nadam": NAdam,
    "adamax": Adamax,
    "radam": RAdam,
    "lion": Lion,
}

__all__ = [
    "OPTIMIZERS",
    "SGD",
    "AdaGrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Lion",
    "NAdam",
    "Optimizer",
    "RAdam",
    "RMSProp",
    "clip_grad_norm_",
    "clip_grad_value_",
]

"""Optimizers: ``SGD``, ``AdaGrad``, ``RMSProp``, ``Adam``, ``AdamW``.

Each updates a list of NumPy arrays in place (``opt.step(grads)``) or, made without parameters,
is bound by ``Sequential.fit`` to the model. The math is in each class's docstring.
"""

from fastopt.optim.adagrad import AdaGrad
from fastopt.optim.adam import Adam, AdamW
from fastopt.optim.optimizer import Optimizer
from fastopt.optim.rmsprop import RMSProp
from fastopt.optim.sgd import SGD

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "adam": Adam,
    "adamw": AdamW,
}

__all__ = ["OPTIMIZERS", "SGD", "AdaGrad", "Adam", "AdamW", "Optimizer", "RMSProp"]

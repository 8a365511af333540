"""fastopt: fast, trustworthy training of small neural networks on CPU.

One API over two backends: ``"numpy"``, the readable reference that defines every result, and
``"cython"``, compiled fused kernels that must agree with it. See ``fastopt.show_config()``.
"""

from fastopt import datasets, layers, losses, optim
from fastopt._config import set_num_threads, show_config
from fastopt._version import __version__
from fastopt.backend import available_backends, get_backend, set_backend, use_backend
from fastopt.model import History, Sequential, load

get_backend()  # decides the default backend now: a compiled extension that does not import is reported at import

__all__ = [
    "History",
    "Sequential",
    "__version__",
    "available_backends",
    "datasets",
    "get_backend",
    "layers",
    "load",
    "losses",
    "optim",
    "set_backend",
    "set_num_threads",
    "show_config",
    "use_backend",
]

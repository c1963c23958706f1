"""spreadcode: compress embedding vectors into codebook-free compact codes and search them.

Pipeline (Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019):
a *catalyzer* (small MLP) maps vectors onto the unit sphere so that a fixed quantizer
(the spherical lattice S(d, r^2) or plain sign bits) codes them well; search is asymmetric
(catalyzed query against decoded codes).

The Python API is `spreadcode.Index` (``spreadcode.index``). Submodules are imported lazily:
the codec, ``spreadcode.container``, the vector I/O and the model store never import torch, so
format tools start instantly.
"""

__version__ = "0.1.0"

from . import openmp as _openmp  # noqa: E402

_openmp.set_wait_policy()  # before any module of the package imports torch


def __getattr__(name):
    """``spreadcode.Index`` and ``spreadcode.SpreadcodeError``, imported on first use."""
    if name == "Index":
        from .index import Index
        return Index
    if name == "SpreadcodeError":
        from .errors import SpreadcodeError
        return SpreadcodeError
    raise AttributeError(f"module 'spreadcode' has no attribute {name!r}")

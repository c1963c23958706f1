"""spreadcode: compress embedding vectors into codebook-free compact codes and search them.

Pipeline (Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019):
a *catalyzer* (small MLP) maps vectors onto the unit sphere so that a fixed quantizer
(the spherical lattice S(d, r^2) or plain sign bits) codes them well; search is asymmetric
(catalyzed query against decoded codes).

Submodules are imported lazily: ``spreadcode.lattice``, ``spreadcode.signs`` and
``spreadcode.container`` never import torch, so format tools start instantly.
"""

__version__ = "0.1.0"

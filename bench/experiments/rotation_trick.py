"""Issue #14 scratch experiment: the rotation trick (Fifty et al., "Restructuring vector
quantization with the rotation trick", ICLR 2025) instead of the straight-through estimator
through the residual model's lattices.

Straight-through passes the loss gradient at the lattice point z to the encoder's output y
unchanged. The rotation trick writes z = R·y with R the rotation (held constant) that takes
y to z in their plane, so y receives Rᵀ·∂L/∂z: the gradient keeps its angle to the code it
arrived at. Both y and z are unit vectors here (the encoder's output is normalised, the
lattice point divided by its radius), so no rescaling is needed.

Run:  python bench/experiments/rotation_trick.py DATA OUT [FIELD=VALUE ...]
      (residual_variants.py with the estimator patched; one JSON row in results-issue14.jsonl)
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import residual  # noqa: E402
from spreadcode.losses import straight_through  # noqa: E402


def rotated_through(y, quantizer):
    """Forward: the quantizer's reconstruction z of y (unit rows, float tensor (n, d));
    backward: Rᵀ·grad with R = I − 2rrᵀ + 2zyᵀ, r = (y + z)/‖y + z‖, the rotation taking y to
    z (held constant)."""
    z = straight_through(y, quantizer).detach()
    y_unit = torch.nn.functional.normalize(y.detach(), dim=1)
    r = torch.nn.functional.normalize(y_unit + z, dim=1)
    rotated = (y - 2 * r * (r * y).sum(1, keepdim=True)
               + 2 * z * (y_unit * y).sum(1, keepdim=True))
    return rotated + (z - rotated).detach()


if __name__ == "__main__":
    residual.straight_through = rotated_through
    residual_variants.main("rotation_trick")

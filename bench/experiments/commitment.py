"""Issue #14 scratch experiment: a commitment term (VQ-VAE, van den Oord et al. 2017) on the
residual model's encoders.

Straight-through hands the encoder output y the gradient that the lattice point z received,
as if z were y; the farther y lies from z, the more that gradient misleads, and greedy
encoding picks z by y alone. The term beta · Σ_m ‖y_m − sg(z_m)‖² (both unit vectors) pulls
each encoder output towards the point it chose, so that what the encoder outputs and what
the decoder reads agree. The decoders and the lattices are unchanged.

Run:  python bench/experiments/commitment.py DATA OUT beta=B [FIELD=VALUE ...]
      (residual_variants.py with the term added; one JSON row in results-issue14.jsonl)
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

_TERMS = []  # ‖y − sg(z)‖² batch means of the stages of the current training pass


def committed_through(y, quantizer):
    """`straight_through`, recording the stage's commitment term while gradients are on."""
    snapped = straight_through(y, quantizer)
    if torch.is_grad_enabled():
        _TERMS.append((y - snapped.detach()).pow(2).sum(1).mean())
    return snapped


def with_commitment(training_loss, beta):
    """``training_loss`` plus beta × the summed commitment terms of its forward pass."""
    def loss(self, x, aux, *noise):
        _TERMS.clear()
        value = training_loss(self, x, aux, *noise)
        return value + beta * sum(_TERMS)
    return loss


if __name__ == "__main__":
    beta = float(next(arg for arg in sys.argv if arg.startswith("beta=")).split("=", 1)[1])
    sys.argv = [arg for arg in sys.argv if not arg.startswith("beta=")]
    residual.straight_through = committed_through
    residual.ResidualCatalyzer.training_loss = with_commitment(
        residual.ResidualCatalyzer.training_loss, beta)
    residual_variants.main(f"commitment beta={beta:g}")

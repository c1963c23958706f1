"""Issue #14 scratch experiment: decoupled weight decay (AdamW, Loshchilov & Hutter 2019) in
the residual model's training.

The default model over-fits its ~47k learn vectors (held-out MSE 0.30 against 0.24 on its own
training rows, BENCHMARKS.md lever 11), and the regularisers tried so far act on the inputs
(noise, mixup) or the activations (dropout). Weight decay shrinks the weights themselves,
every step, by lr · wd of their value; the batch norms' scales and shifts and the biases are
left out, as usual.

Run:  python bench/experiments/weight_decay.py DATA OUT wd=W [FIELD=VALUE ...]
      (residual_variants.py with Adam replaced by AdamW; one JSON row in results-issue14.jsonl)
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import residual  # noqa: E402


def adamw(weight_decay):
    """A drop-in for `spreadcode.torchutil.adam`: AdamW decaying the matrices (tensors of two
    or more dimensions) by ``weight_decay``, the vectors not at all."""
    def optimizer(params, lr):
        params = [p for p in params if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr)
    return optimizer


if __name__ == "__main__":
    wd = float(next(arg for arg in sys.argv if arg.startswith("wd=")).split("=", 1)[1])
    sys.argv = [arg for arg in sys.argv if not arg.startswith("wd=")]
    residual.adam = adamw(wd)
    residual_variants.main(f"weight_decay wd={wd:g}")

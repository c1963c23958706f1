"""Issue #14 scratch experiment: training through a soft choice between each stage's two
nearest lattice points (soft-to-hard quantization, Agustsson et al., NeurIPS 2017), annealed
to the greedy nearest point.

The encoders learn through the lattices by straight-through gradients, which say nothing
about the other lattice point the vector nearly took; a beam shows the same decoders do 8 %
better from better-chosen points (BENCHMARKS.md, levers 8 and 33). Here each training stage
decodes both nearest points z₁, z₂ of the encoder's output y (each straight-through to y) and
continues with their mixture, weighted softmax(−‖y − z_i‖² / T): the encoder feels which of
the two serves the final error better. T falls geometrically from T0 (the median gap between
the two squared distances on S(12, 6) for random directions, 0.024) to T0 / 100 over the
planned steps, where the mixture is the nearest point's decoding: training ends as greedy
encoding runs. Held-out errors (the epoch choice) use the greedy pass.

Run:  python bench/experiments/soft_choice.py DATA OUT [T0=0.024] [FIELD=VALUE ...]
(residual_variants.py with the training pass patched; one JSON row in results-issue14.jsonl)
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import lattice, residual  # noqa: E402

GREEDY_FORWARD = residual.ResidualCatalyzer.forward
SCHEDULE = {"t0": 0.024, "steps": 1, "done": 0}


def temperature():
    progress = min(1.0, SCHEDULE["done"] / SCHEDULE["steps"])
    return SCHEDULE["t0"] * 0.01 ** progress


def soft_forward(self, x):
    """Training pass: each stage continues with the mixture of its two nearest points'
    decodings; eval mode: the greedy pass."""
    if not self.training:
        return GREEDY_FORWARD(self, x)
    xs = self.preprocess(x)
    xh = first = None
    tau = temperature()
    for m, block in enumerate(self.quantizer.blocks):
        y = torch.nn.functional.normalize(self._encode_stage(m, xs, xh), dim=1)
        points = lattice.nearest_candidates(y.detach().float().cpu().numpy(), block.param, 2)
        unit = torch.from_numpy(points.astype(np.float32) * np.float32(block.param ** -0.5))
        unit = unit.to(y.device)
        n = y.shape[0]
        weights = torch.softmax(-(y[:, None] - unit).pow(2).sum(2) / tau, dim=1)
        through = y[:, None] + (unit - y[:, None]).detach()
        decoded = self._decode_stage(
            m, through.reshape(2 * n, block.d),
            None if xh is None else xh.repeat_interleave(2, 0)).reshape(n, 2, -1)
        xh = (weights[..., None] * decoded).sum(1)
        first = xh if m == 0 else first
    return xh, first


def counted_loss(original):
    def training_loss(self, x, aux, *noise):
        loss = original(self, x, aux, *noise)
        SCHEDULE["done"] += 1
        return loss
    return training_loss


if __name__ == "__main__":
    args = sys.argv[1:3]
    for item in sys.argv[3:]:
        if item.startswith("T0="):
            SCHEDULE["t0"] = float(item[3:])
        else:
            args.append(item)
    data = residual_variants.load_dataset(args[0])
    config = residual_variants.variant_config(residual_variants.parse_overrides(args[2:]))
    if config.time_budget_s is not None:  # the schedule is planned over every epoch
        args.append("time_budget_s=null")
    n_train = len(residual.held_out_rows(len(data.learn), config.seed)[0])
    SCHEDULE["steps"] = config.epochs * (n_train // min(config.batch_size, n_train))
    residual.ResidualCatalyzer.forward = soft_forward
    residual.ResidualCatalyzer.training_loss = counted_loss(
        residual.ResidualCatalyzer.training_loss)
    sys.argv = [sys.argv[0]] + args
    residual_variants.main("soft_choice")

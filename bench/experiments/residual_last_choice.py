"""Issue #14 scratch experiment: the last stage's choice between its two nearest points made
during training too.

Lever 33 found the last stage's choice the most valuable per unit of work: scoring its 2
nearest lattice points by the decoder and keeping the better (`beam_schedule.py` schedule
``1x1,1x1,1x1,2x1``) costs two decoder rows per vector. Here training makes the same choice:
the last stage decodes both candidates (straight-through from the encoder's output), and the
loss takes the one of lower error, so the decoder learns from the codes that encoding will
give and the encoder from the better of its two roundings. Everything else is `spreadcode
train`'s default (`residual_variants.py`).

Run:  python bench/experiments/residual_last_choice.py DATA OUT
then  python bench/experiments/beam_schedule.py OUT DATA 1x1,1x1,1x1,1x1 1x1,1x1,1x1,2x1 ...
"""
import os
import sys

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import residual_variants  # noqa: E402
from spreadcode import lattice, residual  # noqa: E402
from spreadcode.losses import straight_through  # noqa: E402


def forward_last_choice(self, x):
    """`ResidualCatalyzer.forward` whose last stage decodes its 2 nearest points and returns,
    per row, the reconstruction of lower error (x̂_M, x̂_1), both (n, d_in) preprocessed."""
    xs = self.preprocess(x)
    xh = first = None
    blocks = self.quantizer.blocks
    for m, block in enumerate(blocks):
        y = nn.functional.normalize(self._encode_stage(m, xs, xh), dim=1)
        if m + 1 < len(blocks) or m == 0:
            xh = self._decode_stage(m, straight_through(y, block), xh)
        else:
            near = lattice.nearest_candidates(y.detach().float().cpu().numpy(), block.param, 2)
            unit = torch.from_numpy(near.astype(np.float32) * np.float32(block.param ** -0.5))
            tried = unit.shape[1]
            unit = unit.transpose(0, 1).reshape(-1, block.d).to(y.device)
            ys = y.repeat(tried, 1)
            decoded = self._decode_stage(m, ys + (unit - ys).detach(), xh.repeat(tried, 1))
            decoded = decoded.reshape(tried, -1, self.d_in)
            best = (decoded - xs[None]).pow(2).sum(2).detach().argmin(0)
            xh = decoded[best, torch.arange(xs.shape[0], device=xs.device)]
        first = xh if m == 0 else first
    return xh, first


def append_row(row, append=residual_variants.append_row):
    append({**row, "experiment": "residual_last_choice"})


if __name__ == "__main__":
    residual.ResidualCatalyzer.forward = forward_last_choice
    residual_variants.append_row = append_row
    residual_variants.main()

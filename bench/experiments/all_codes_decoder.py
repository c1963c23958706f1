"""Issue #14 lever 90: the last decoder reads every stage's point, not only its own.

g_{M−1} decodes [z_{M−1}, x̂_{M−2}]: the earlier stages reach it only through x̂, a smooth
96-d summary of their codes. Here it reads [z_0, ..., z_{M−1}, x̂_{M−2}] (48 + 96 inputs at
64 bits). Greedy encoding never runs the last decoder, so encoding is unchanged; decoding
costs + 36 × hidden multiply-adds per code. Trained with `spreadcode train`'s defaults
otherwise, searched by the default search.

    python bench/experiments/all_codes_decoder.py DATA OUT [FIELD=VALUE ...]

Saves the model to OUT (it loads only with this script's class) and appends one row
(residual_variants' columns).
"""
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from residual_variants import run_model_class  # noqa: E402
from spreadcode import int8, residual  # noqa: E402
from spreadcode.losses import straight_through  # noqa: E402


class AllCodesLast(residual.ResidualCatalyzer):
    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        last = len(quantizer.blocks) - 1
        self.g[last] = residual._mlp(quantizer.d + self.d_in, self._decoder_width(last),
                                     self.d_in)

    def _last(self, points, xh, g=None):
        g = self.g if g is None else g
        return xh + int8.run_on_concat(g[-1], torch.cat(points, 1).contiguous(), xh)

    def _chain(self, xs):
        xh = first = None
        points, last = [], len(self.quantizer.blocks) - 1
        for m, block in enumerate(self.quantizer.blocks):
            y = nn.functional.normalize(self._encode_stage(m, xs, xh), dim=1)
            points.append(straight_through(y, block))
            xh = self._last(points, xh) if m == last else self._decode_stage(m, points[-1], xh)
            first = xh if m == 0 else first
        return xh, first

    def _decode_batch(self, codes, g):
        xh, points, last = None, [], len(self.quantizer.blocks) - 1
        for m, (block, ranks) in enumerate(zip(self.quantizer.blocks,
                                                self.quantizer.block_codes(codes))):
            points.append(torch.from_numpy(block.reconstruct(ranks)))
            xh = (self._last(points, xh, g) if m == last
                  else self._decode_stage(m, points[-1], xh, ranks, g)).float()
        return self._on_sphere(self.unprocess(xh))


if __name__ == "__main__":
    run_model_class("all_codes_decoder", AllCodesLast, 90)

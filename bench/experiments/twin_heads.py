"""Issue #14 lever 91: two last decoders trained side by side, averaged when decoding.

The models are data-limited (held-out error ~25 % above the training rows'), so part of the
last decoder's error is variance. Lever 47's second decoder, trained after the fact on fixed
codes, reconstructed 9 % worse and its average gained nothing: the codes were shaped for the
first. Here a twin g'_{M−1} of the last decoder (same shape, its own initialisation) trains
with everything else, each head on its own loss, (‖x̂ − x‖² + ‖x̂' − x‖²) / 2, so the encoders
shape the codes for both; decoding (held-out error, search) averages them. Greedy encoding
never runs the last decoder: encoding is unchanged; re-ranking decodes the last stage twice.

    python bench/experiments/twin_heads.py DATA OUT [FIELD=VALUE ...]

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


class TwinHeads(residual.ResidualCatalyzer):
    def __init__(self, d_in, quantizer, *args, **kwargs):
        super().__init__(d_in, quantizer, *args, **kwargs)
        last = len(quantizer.blocks) - 1
        self.twin = residual._mlp(quantizer.blocks[last].d + self.d_in,
                                  self._decoder_width(last), self.d_in)
        self._twin_int8 = None

    def _twin(self, g):
        """The twin in the arithmetic of ``g`` (int8 when ``g`` is the int8 chain)."""
        if g is None or g is self.g or not isinstance(g[-1], int8.Int8Mlp):
            return self.twin
        if self._twin_int8 is None or self._twin_int8[0] is not g:
            self._twin_int8 = (g, int8.Int8Mlp(self.twin))
        return self._twin_int8[1]

    def _decode_stage(self, m, z, xh, ranks=None, g=None):
        if m + 1 < len(self.quantizer.blocks):
            return super()._decode_stage(m, z, xh, ranks, g)
        g = self.g if g is None else g
        return xh + 0.5 * (int8.run_on_concat(g[m], z, xh)
                           + int8.run_on_concat(self._twin(g), z, xh))

    def training_loss(self, x, aux, noise=0.0, generator=None):
        target = self.preprocess(x)
        xs = target
        if noise:
            xs = target + noise * torch.randn(target.shape, generator=generator,
                                               device=target.device, dtype=target.dtype)
        xh, last = None, len(self.quantizer.blocks) - 1
        for m, block in enumerate(self.quantizer.blocks):
            z = straight_through(nn.functional.normalize(self._encode_stage(m, xs, xh), dim=1),
                                 block)
            if m < last:
                xh = self._decode_stage(m, z, xh)
        heads = [xh + head(torch.cat([z, xh], 1)) for head in (self.g[last], self.twin)]
        return sum((h - target).pow(2).sum(1).mean() for h in heads) / 2


if __name__ == "__main__":
    run_model_class("twin_heads", TwinHeads, 91)

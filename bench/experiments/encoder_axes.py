"""Issue #14 lever 89: on wide inputs, the encoding chain reads the leading principal axes only.

On raw 384-d text the default encodes ~7× LSQ's rate where 96-d inputs give ~10.7×: its
encoders read [x − x̂, x̂] (768 inputs), its chain decoders x̂ (384) and output 384, so greedy
encoding costs ~6.2 M multiply-adds per vector against ~4.0 M at 96-d, while LSQ's cost barely
depends on d. Here the data is first rotated onto the learn set's principal axes (an
orthonormal map: distances, norms and ground truth unchanged), and every encoder f_m and
decoder g_m reads only the first AXES coordinates of its inputs (f_0: x[:AXES], f_m:
[x − x̂, x̂][:AXES] each, g_m: [z_m, x̂[:AXES]]); the decoders still output all d_in
coordinates and x̂ accumulates in full, so the reconstruction (and search) is 384-d. Greedy
encoding then only needs x̂'s first AXES coordinates, i.e. the chain decoders' first AXES
outputs: the 96-d model's cost. This script measures the recall side (the model is trained
and searched in full; the rotation is applied to the files beforehand).

    python bench/experiments/encoder_axes.py DATA OUT [axes=96] [residual_axes=A] [FIELD=VALUE ...]

residual_axes (default: axes): how many leading coordinates of x and x − x̂ the encoders read
(residual_axes=384 with axes=96: the full residual, x̂ through its 96 leading axes).

DATA: a directory with learn/base/query .npy (or .fvecs) and groundtruth.ivecs (rotated in
memory). Saves the model to OUT (it loads only with this script's class) and appends one row
(residual_variants' columns, plus axes).
"""
import dataclasses
import os
import sys

import numpy as np
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import load_dataset  # noqa: E402
from residual_variants import parse_overrides, save_and_append, train_variant  # noqa: E402
from spreadcode import int8, residual  # noqa: E402


def rotated(data):
    """``data`` with learn, base and query rotated onto the learn set's principal axes
    (eigenvectors of its covariance, by decreasing variance; not centred, so norms stay)."""
    learn = data.learn.astype(np.float64)
    _, vectors = np.linalg.eigh(np.cov(learn, rowvar=False))
    rotation = np.ascontiguousarray(vectors[:, ::-1]).astype(np.float32)
    return dataclasses.replace(data, **{name: np.ascontiguousarray(getattr(data, name) @ rotation)
                            for name in ("learn", "base", "query")})


def leading_axes_model(axes, residual_axes):
    """A ResidualCatalyzer whose encoders and decoders read the first ``axes`` coordinates of
    x̂, and the encoders the first ``residual_axes`` of x and of x − x̂."""
    class LeadingAxes(residual.ResidualCatalyzer):
        def __init__(self, d_in, quantizer, *args, **kwargs):
            super().__init__(d_in, quantizer, *args, **kwargs)
            dims = [block.d for block in quantizer.blocks]
            self.f = nn.ModuleList([residual._mlp(residual_axes + (axes if m else 0),
                                                  self.hidden, d) for m, d in enumerate(dims)])
            self.g = nn.ModuleList([residual._mlp(d if m == 0 else d + axes,
                                                  self._decoder_width(m), self.d_in)
                                    for m, d in enumerate(dims)])

        def _encode_stage(self, m, xs, xh, f=None):
            f = self.f if f is None else f
            if m == 0:
                return f[0](xs[:, :residual_axes].contiguous())
            return int8.run_on_concat(f[m], (xs - xh)[:, :residual_axes].contiguous(),
                                      xh[:, :axes].contiguous())

        def _decode_stage(self, m, z, xh, ranks=None, g=None):
            if m == 0:
                return super()._decode_stage(m, z, xh, ranks, g)
            g = self.g if g is None else g
            return xh + int8.run_on_concat(g[m], z, xh[:, :axes].contiguous())

        def _fused_greedy(self, f, g):
            return None

    return LeadingAxes


def main():
    data, out = load_dataset(sys.argv[1]), sys.argv[2]
    overrides = parse_overrides(sys.argv[3:])
    axes = overrides.pop("axes", 96)
    residual_axes = overrides.pop("residual_axes", axes)
    data = rotated(data)
    trained, row = train_variant("encoder_axes", data, overrides,
                                 leading_axes_model(axes, residual_axes))
    row.update(lever=89, axes=axes, residual_axes=residual_axes)
    save_and_append(trained, row, out)


if __name__ == "__main__":
    main()

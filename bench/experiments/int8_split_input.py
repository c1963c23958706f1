"""Issue #14 scratch measurement (lever 66): the encoders' input rows in int8 with one scale
per part instead of one per row.

An encoder f_m (m ≥ 1) reads [x − x̂_{m−1}, x̂_{m−1}]; under lever 63's int8 arithmetic that
row takes one scale, set by its largest entry, so the residual x − x̂ (on SIFT a quarter of
x̂'s magnitude after three stages) keeps ~2 bits fewer than the reconstruction. Here the two
halves are quantized with a scale each, multiplied by their halves of the first layer's
weight codes in two exact int8 products, and the float sums combined before the ReLU (in
numpy: a measurement of the codes, not of speed). Everything else is lever 63's.

Run:  python bench/experiments/int8_split_input.py MODEL DATA
One JSON row per encoding (bfloat16, int8 as in the library, int8 with split inputs): codes
equal to bfloat16's, base MSE, R@1/10/100 of the default search.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402
from spreadcode import _codec, int8  # noqa: E402


class SplitInput:
    """An `int8.Int8Mlp` whose first layer quantizes input columns [0, k) and [k, end) with a
    row scale each."""

    def __init__(self, mlp, k):
        self.mlp, self.k = mlp, k

    def __call__(self, x):
        threads = torch.get_num_threads()
        x = np.ascontiguousarray(x.detach().float().numpy())
        codes, col_scale, _, bias = self.mlp.layers[0]
        pre = np.broadcast_to(bias, (x.shape[0], len(bias))).copy()
        for part, weights in ((x[:, :self.k], codes[:self.k]), (x[:, self.k:], codes[self.k:])):
            part = np.ascontiguousarray(part)
            rows = np.empty(part.shape, dtype=np.int8)
            scale = np.empty(part.shape[0], dtype=np.float32)
            _codec.quantize_rows(part, rows, scale, threads)
            sums = torch._int_mm(torch.from_numpy(rows), weights.contiguous()).numpy()
            pre += sums.astype(np.float32) * (scale[:, None] * col_scale[None])
        h = np.maximum(pre, 0)
        top = h.max(1)
        row_scale = (top / 255).astype(np.float32)
        inv = np.where(top > 0, 255 / np.where(top > 0, top, 1), 0).astype(np.float32)
        rows = (np.floor(h * inv[:, None] + 0.5) - int8.UNSIGNED_SHIFT).astype(np.int8)
        return self.mlp.run_layers(rows, row_scale, first=1)


def main(model_path, data_path):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.encode(data.base[:70_000])  # g_0's table
    model._runs_int8 = lambda precision: False
    reference = model.encode(data.base)
    del model._runs_int8
    library = model.encode(data.base)
    f, g = model._int8_chain()
    model._int8 = ([f[0], *(SplitInput(mlp, model.d_in) for mlp in f[1:])], g)
    split = model.encode(data.base)
    model._int8 = (f, g)
    for name, codes in (("bfloat16", reference), ("int8 rows (library)", library),
                        ("int8 rows, encoder inputs split", split)):
        print(json.dumps({"encoding": name, "codes equal to bfloat16 %": round(
            100 * float((codes == reference).all(1).mean()), 1),
            **measure_codes(model, meta, data, codes)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

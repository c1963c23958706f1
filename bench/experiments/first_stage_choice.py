"""Issue #14 scratch measurement: stage 0's point chosen by its own error, through g_0's table.

g_0 is a table (one row per point of S(12, 6)), so scoring stage 0's K nearest points by
‖x − g_0(z)‖² costs K × d multiply-adds, nothing next to an MLP. Greedy encoding takes the
point nearest f_0's output instead; this takes, of f_0's K nearest points, the one whose own
decoding is nearest x, and continues greedily (float32 stages, as `beam_schedule.py`).

Run:  python bench/experiments/first_stage_choice.py MODEL DATA K [K ...]
One JSON row per K (K = 1: greedy): the base MSE and the default search's R@1/10/100.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402
from autoencoder_levers import load_dataset  # noqa: E402
from last_choice_scorer import greedy_stages, nearest_point, unit  # noqa: E402
from spreadcode import lattice  # noqa: E402


@torch.no_grad()
def encode_first_choice(model, x, count, batch=8192):
    """Codes uint8 (n, code_bytes) of x float32 (n, d_in): stage 0 the best of ``count``."""

    def pick(m, block, y, xs):
        if m > 0 or count == 1:
            return nearest_point(m, block, y, xs)
        z = lattice.nearest_candidates(y.numpy(), block.param, count)
        n, k, d = z.shape
        decoded = model.g[0](torch.from_numpy(unit(z.reshape(-1, d), block)))
        error = (decoded.reshape(n, k, -1) - xs[:, None]).pow(2).sum(2)
        return z[np.arange(n), error.argmin(1).numpy()]

    out = []
    for start in range(0, len(x), batch):
        xs = model.preprocess(torch.from_numpy(x[start:start + batch]).float())
        points = greedy_stages(model, xs, pick)[0]
        out.append(model.quantizer.quantize(np.hstack(points).astype(np.float32)))
    return np.concatenate(out)


def main(model_path, data_path, *counts):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.eval()
    for count in map(int, counts):
        codes = encode_first_choice(model, data.base, count)
        print(json.dumps({"model": os.path.basename(model_path), "stage 0 of": count,
                          **measure_codes(model, meta, data, codes)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

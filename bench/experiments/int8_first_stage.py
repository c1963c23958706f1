"""Issue #14/#15 scratch measurement (lever 70): the first stage's decoder g_0 in row-scaled
int8 like g_1..g_{M−1} (lever 64), instead of float32.

g_0 is a table over the 64,416 points of S(12, 6) once a process has decoded as many rows
(`ResidualCatalyzer._first_stage`); until then, and to build the table, it runs in float32:
≈ 1.2 s per 64k rows on 2 cores, a quarter of a cold 1M search at k = 100 (issue #15) and
up to 2.4 s of a fresh `spreadcode encode`. Here g_0 runs as `spreadcode.int8.Int8Mlp`
(row results independent of the batch, so its table equals it exactly): the library's
"auto" since lever 70, which the "float32" variant undoes.

Run:  python bench/experiments/int8_first_stage.py MODEL DATA
One JSON row per variant ("float32" g_0: the library; "int8" g_0): seconds to build the
table from a fresh model, seconds of a fresh process-like encode of the base (the table
built on the way, as `spreadcode encode` does), share of codes equal to the library's, base
MSE and R@1/10/100 of `Index.search(query, 100)` (`beam_sphere.measure_codes`).
"""
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402

from spreadcode import lattice  # noqa: E402


def float_first_stage(model):
    """``model`` as the library ran it before lever 70: g_0 in float32 under "auto" too."""
    chain = model._int8_chain
    model._int8_chain = lambda: (chain()[0], [model.g[0], *chain()[1][1:]])


def table_seconds(model, g0):
    """Seconds for ``g0`` to decode every point of block 0 (what building the table takes)."""
    block = model.quantizer.blocks[0]
    count = lattice.count(block.d, block.param)
    points = torch.from_numpy(block.reconstruct(np.arange(count, dtype=np.uint64)))
    start = time.perf_counter()
    with torch.no_grad():
        torch.cat([g0(points[s:s + 4096]) for s in range(0, count, 4096)])
    return time.perf_counter() - start


def main(model_path, data_path):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    reference = None
    for variant in ("float32", "int8"):
        model, meta = load_on_sphere(model_path, data)  # fresh: no table yet
        model.eval()
        if variant == "float32":
            float_first_stage(model)
        build = table_seconds(model, model._int8_chain()[1][0])
        start = time.perf_counter()
        codes = model.encode(data.base)
        seconds = time.perf_counter() - start
        reference = codes if reference is None else reference
        equal = float((codes == reference).all(1).mean())
        print(json.dumps({"g_0": variant, "table s": round(build, 2),
                          "fresh encode s": round(seconds, 2), "codes equal": round(equal, 3),
                          **measure_codes(model, meta, data, codes)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

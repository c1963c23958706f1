"""Issue #14 scratch experiment: free codebooks for the tail of a residual lattice code.

A trained residual model's stages are smooth (MLP) functions of 12-d lattice points, and on
raw 384-d text they leave most of the variance beyond the 32 leading principal axes
(BENCHMARKS lever 24); LSQ's free additive codewords spread energy there. This probe keeps
the model's first S stages (greedy codes, the model's own decoders) and spends the bits of
the stages it drops on faiss additive quantizers fitted to the residual x − x̂_S of the learn
set: the decoded vector is x̂_S + Σ_j C_j[b_j]. Nothing is retrained, so a win here is a
lower bound on what stages trained jointly with the lattice would give.

Run:
    python bench/experiments/tail_codebooks.py MODEL DATA SPEC [SPEC ...]
MODEL: a library residual model file; DATA: a dataset folder (learn/base/query,
groundtruth.ivecs); SPEC: ``S:FACTORY``, e.g. ``3:RQ2x8`` (the first 3 stages, then faiss
``index_factory(d, "RQ2x8")`` on the residual), ``3:LSQ2x8``, ``4:none`` (the model alone),
``3:none``. One JSON row per SPEC: bits, learn-residual fit seconds, base MSE, and R@1/10/100
of the exhaustive search of the queries over the decoded base ("decall").
"""
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from spreadcode import lattice  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402
from spreadcode.search import recall_at  # noqa: E402


@torch.no_grad()
def partial_decode(model, x, stages, batch=4096):
    """x̂_S in input space: float32 (n, d_in), the greedy codes' first ``stages`` stages."""
    model.eval()
    out = np.empty_like(x)
    codes = model.encode(x)
    block_codes = model.quantizer.block_codes(codes)
    for start in range(0, len(x), batch):
        xh = None
        for m in range(stages):
            block = model.quantizer.blocks[m]
            z = torch.from_numpy(block.reconstruct(block_codes[m][start:start + batch]))
            xh = model._decode_stage(m, z, xh)
        out[start:start + batch] = model.unprocess(xh).numpy()
    return out


def main(model_path, data_path, *specs):
    import faiss

    faiss.omp_set_num_threads(2)
    model, _ = load_catalyzer(model_path)
    data = load_dataset(data_path)
    for spec in specs:
        stages, factory = spec.split(":")
        stages = int(stages)
        learn_hat = partial_decode(model, data.learn, stages)
        base_hat = partial_decode(model, data.base, stages)
        bits = round(sum(math.log2(lattice.count(block.d, block.param))
                         for block in model.quantizer.blocks[:stages]), 2)
        fit_s = 0.0
        if factory != "none":
            tail = faiss.index_factory(data.learn.shape[1], factory)
            start = time.time()
            tail.train(np.ascontiguousarray(data.learn - learn_hat))
            fit_s = time.time() - start
            residual = np.ascontiguousarray(data.base - base_hat)
            base_hat = base_hat + tail.sa_decode(tail.sa_encode(residual))
        mse = float(((data.base - base_hat) ** 2).sum(1).mean())
        _, ids = exact_knn(base_hat, data.query, 100)
        row = {"spec": spec, "stage_bits": bits, "fit_s": round(fit_s, 1), "mse": round(mse, 4),
               **{f"R@{k}": round(100 * v, 1) for k, v in
                  recall_at(ids, data.groundtruth).items()}}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Issue #14 scratch measurement: greedy encoding speed of a residual model, its first stage's
decoder g_0 computed or looked up in its table (`spreadcode.residual.FIRST_TABLE_BYTES`),
against faiss LSQ7x8_Nqint8 at its default iterations, in one run.

Vectors: DATA/base.npy four times, each copy with Gaussian noise of relative norm 0.05,
re-normalised (the table pays beyond its 64,416 rows); LSQ is trained on 50,000 rows of
DATA/learn.npy and encodes the first 30,000 vectors. 2 threads each.

Run:  python bench/experiments/encode_vs_lsq.py MODEL STORE DATA
Prints vectors/s per encoder (BENCHMARKS.md, "Issue #14 levers", row 27).
"""
import os
import sys
import time

import faiss
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from spreadcode import residual  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402

LSQ_ROWS = 30_000


def main(model_ref, store, data):
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    model, _ = load_catalyzer(model_ref, store=store)
    base = np.load(os.path.join(data, "base.npy")).astype(np.float32)
    learn = np.load(os.path.join(data, "learn.npy")).astype(np.float32)
    rng = np.random.default_rng(0)
    x = np.vstack([base + 0.05 * rng.standard_normal(base.shape).astype(np.float32)
                   / np.sqrt(base.shape[1]) for _ in range(4)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for _ in range(2):
        for table_bytes in (0, residual.FIRST_TABLE_BYTES):
            residual.FIRST_TABLE_BYTES, model._first_key = table_bytes, None
            started = time.perf_counter()
            model.encode(x)
            print(f"spreadcode greedy, g_0 table {'on' if table_bytes else 'off'}: "
                  f"{len(x) / (time.perf_counter() - started):,.0f} vec/s", flush=True)
    lsq = faiss.index_factory(base.shape[1], "LSQ7x8_Nqint8")
    lsq.train(learn[:50_000])
    started = time.perf_counter()
    lsq.sa_encode(x[:LSQ_ROWS])
    print(f"faiss LSQ7x8_Nqint8: {LSQ_ROWS / (time.perf_counter() - started):,.0f} vec/s")


if __name__ == "__main__":
    main(*sys.argv[1:4])

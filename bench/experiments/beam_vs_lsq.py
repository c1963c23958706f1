"""Issue #14 scratch measurement: encoding speed and recall of a residual model's greedy and
beam encodings against faiss LSQ7x8_Nqint8 (its default iterations), in one run.

LSQ is trained on the first 50,000 learn vectors and encodes the whole base (`sa_encode`)
before the model's encodings and again after them (its speed moves between runs); the model
encodes the whole base after a warm-up that builds its g_0 table. 2 threads each.
Recall: the default search (`Index.search(query, 100)`), and LSQ's exhaustive search.

Run:  python bench/experiments/beam_vs_lsq.py MODEL DATA BEAM [BEAM ...]
One JSON row per encoder: vectors/s, base MSE (spreadcode), R@1/10/100 (BENCHMARKS.md, "Issue #14 levers", row 33).
"""
import json
import os
import sys
import time

import faiss
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402


def main(model_path, data_path, *beams):
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    data = load_dataset(data_path)
    base = np.ascontiguousarray(data.base, dtype=np.float32)
    model, meta = load_on_sphere(model_path, data)
    lsq = faiss.index_factory(base.shape[1], "LSQ7x8_Nqint8")
    lsq.train(np.ascontiguousarray(data.learn[:50_000], dtype=np.float32))

    def lsq_rate():
        started = time.perf_counter()
        lsq.sa_encode(base)
        return round(len(base) / (time.perf_counter() - started))

    lsq_before = lsq_rate()
    model.encode(np.vstack([base] * 2)[:70000])  # builds the g_0 table
    for beam in map(int, beams):
        started = time.perf_counter()
        codes = model.encode(base, beam=beam)
        seconds = time.perf_counter() - started
        print(json.dumps({"encoder": f"spreadcode beam {beam}", "vec/s": round(len(base) / seconds),
                          **measure_codes(model, meta, data, codes)}), flush=True)
    lsq_after = lsq_rate()
    lsq.add(base)
    ids = lsq.search(np.ascontiguousarray(data.query, dtype=np.float32), 100)[1]
    print(json.dumps({"encoder": "faiss LSQ7x8_Nqint8", "vec/s": [lsq_before, lsq_after],
                      **recall_columns(ids, data.groundtruth)}), flush=True)

if __name__ == "__main__":
    main(*sys.argv[1:])

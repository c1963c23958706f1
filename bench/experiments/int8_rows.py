"""Issue #14 scratch measurement (lever 63): greedy encoding with int8 products, one scale per
row of activations and one per output channel of weights (`spreadcode.int8`).

Lever 32 quantized with PyTorch's dynamic int8 Linear (one activation scale per batch) on an
AVX2 CPU: 1.6× float32, half the codes changed, recall ± 0.8. Here the CPU has AVX512-VNNI,
where ``torch._int_mm`` multiplies int8 matrices at ~2× the bfloat16 rate (370 against 190
GMAC/s at 4,096 × 1,024 × 1,024), and sums them exactly. Each MLP of the encoding chain (f_m,
g_1..g_{M−2}; BatchNorms folded into their Linear) runs as int8 GEMMs; between layers the
int32 sums are scaled back, biased, passed through ReLU and quantized again per row by the
compiled core. The codes are decoded by the model as always.

Run:  python bench/experiments/int8_rows.py MODEL DATA [ROUNDS [BEAM]]
The base is encoded ROUNDS times (default 3; greedily, or with a beam of BEAM) in turn by
float32, bfloat16 (the library's "auto" before lever 63) and "auto" (int8 rows on a CPU), and
by faiss LSQ7x8_Nqint8 (faiss's default iterations, trained on 50,000 learn rows; 30,000
base rows); then one JSON row per encoding: vectors/s of each round, × LSQ's rate of the same round
(median), share of codes equal to bfloat16's, base MSE, R@1/10/100 of
`Index.search(query, 100)`, decoded as the library decodes (lever 63's table: in bfloat16,
before lever 64 moved the full decoder to int8).
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
from autoencoder_levers import load_dataset  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402

LSQ_ROWS = 30_000


def encode(model, vectors, name, beam):
    """Codes of vectors by the encoding ``name`` and the vectors/s it ran at."""
    if name == "bfloat16":
        model._runs_int8 = lambda precision: False  # the library's "auto" before lever 63
    try:
        start = time.perf_counter()
        codes = model.encode(vectors, beam,
                             precision="float32" if name == "float32" else "auto")
        return codes, len(vectors) / (time.perf_counter() - start)
    finally:
        model.__dict__.pop("_runs_int8", None)


def main(model_path, data_path, rounds=3, beam=1):
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.encode(data.base[:70_000])  # warm up; g_0's table is built from then on
    lsq = faiss.index_factory(data.base.shape[1], "LSQ7x8_Nqint8")
    lsq.train(np.ascontiguousarray(data.learn[:50_000], dtype=np.float32))
    rows = np.ascontiguousarray(data.base[:LSQ_ROWS], dtype=np.float32)
    names = ("float32", "bfloat16", "auto")
    rates, ratios, codes = {name: [] for name in names}, {name: [] for name in names}, {}
    for _ in range(int(rounds)):
        start = time.perf_counter()
        lsq.sa_encode(rows)
        lsq_rate = LSQ_ROWS / (time.perf_counter() - start)
        rates.setdefault("faiss LSQ7x8_Nqint8", []).append(lsq_rate)
        for name in names:
            codes[name], rate = encode(model, data.base, name, int(beam))
            rates[name].append(rate)
            ratios[name].append(rate / lsq_rate)
    for name in names:
        print(json.dumps({"encoding": name, "beam": int(beam),
                          "vectors/s": [round(r) for r in rates[name]],
                          "x LSQ (median)": round(float(np.median(ratios[name])), 1),
                          "codes equal to bfloat16 %": round(100 * float(
                              (codes[name] == codes["bfloat16"]).all(1).mean()), 1),
                          **measure_codes(model, meta, data, codes[name])}), flush=True)
    print(json.dumps({"encoding": "faiss LSQ7x8_Nqint8",
                      "vectors/s": [round(r) for r in rates["faiss LSQ7x8_Nqint8"]]}))


if __name__ == "__main__":
    main(*sys.argv[1:])

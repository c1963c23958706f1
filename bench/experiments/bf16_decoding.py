"""Issue #14/#15 scratch measurement: decoding and search under bfloat16 autocast.

The default search of a residual model decodes every code by the shortlist decoder (kept by
the index) and its candidates by the full decoder (≈ 3.8 M multiply-adds each: most of a cold
search at 1M codes, BENCHMARKS.md run M). `ResidualCatalyzer.decode` / `decode_shortlist`
take the encoder's precision: "auto" multiplies in bfloat16 where the CPU does so natively.
Here the same float32 codes of the base are decoded and searched both ways.

Run:  python bench/experiments/bf16_decoding.py MODEL DATA
One JSON row per precision: seconds to decode the base by the full decoder (best of 3), its
MSE, the first (cold: every code decoded) and second (warm) `Index.search(query, 100)` in
seconds, and its R@1/10/100 (BENCHMARKS.md, lever 58).
"""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset, recall_columns  # noqa: E402
from beam_sphere import load_on_sphere  # noqa: E402
from spreadcode import Index  # noqa: E402


def main(model_path, data_path):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    codes = model.encode(data.base, precision="float32")
    for precision in ("float32", "auto"):
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            decoded = model.decode(codes, precision=precision)
            seconds.append(time.perf_counter() - start)
        index = Index.from_catalyzer(model, meta)
        index.add(data.base, precision="float32")
        searches = []
        for _ in range(2):
            start = time.perf_counter()
            ids = index.search(data.query, k=100, precision=precision)[1]
            searches.append(time.perf_counter() - start)
        print(json.dumps({"precision": precision, "decode base s": round(min(seconds), 2),
                          "mse": round(float(((decoded - data.base) ** 2).sum(1).mean()), 5),
                          "search s (cold, warm)": [round(s, 2) for s in searches],
                          "queries": len(data.query),
                          **recall_columns(ids, data.groundtruth)}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

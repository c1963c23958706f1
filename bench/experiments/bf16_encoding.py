"""Issue #14 scratch measurement: encoding under bfloat16 autocast, against float32 and faiss LSQ.

Greedy encoding is dense layers (the encoders f_m and the decoders g_1..g_{M−2} that feed the
next stage) running at this CPU's float32 peak. A CPU with AVX512-BF16 multiplies bfloat16
matrices at about twice that rate (BENCHMARKS.md, lever 17: 97 against 201 GFLOP/s at
256 × 1,024 × 1,024), and the default training already runs its forward passes under
bfloat16 autocast there. Here the same model encodes the base with `ResidualCatalyzer.encode`'s
precision "float32" and "auto" (bfloat16 autocast on such a CPU), greedy and with a beam; the
codes are decoded and searched in float32 as always, so a code chosen under bfloat16 is still
an exact code of the same model.

Run:  python bench/experiments/bf16_encoding.py MODEL DATA [BEAM ...]
One JSON row per (precision, beam): encode seconds (best of 3), vectors/s, share of codes equal
to float32's greedy codes, base MSE, R@1/10/100 of `Index.search(query, 100)`; then faiss
LSQ7x8_Nqint8 (default iterations, trained on 50,000 learn rows) encoding 30,000 base rows,
best of 3 (BENCHMARKS.md, lever 57).
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


def main(model_path, data_path, *beams):
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    model.encode(data.base[:20000])  # warm up, and count rows towards g_0's table
    reference = None
    for beam in [1, *map(int, beams)]:
        for precision in ("float32", "auto"):
            seconds = []
            for _ in range(3):
                start = time.perf_counter()
                codes = model.encode(data.base, beam=beam, precision=precision)
                seconds.append(time.perf_counter() - start)
            reference = codes if reference is None else reference
            print(json.dumps({"precision": precision, "beam": beam,
                              "encode s": round(min(seconds), 2),
                              "vectors/s": round(len(codes) / min(seconds)),
                              "codes equal to float32 greedy %": round(100 * float(
                                  (codes == reference).all(1).mean()), 1),
                              **measure_codes(model, meta, data, codes)}), flush=True)
    lsq = faiss.index_factory(data.base.shape[1], "LSQ7x8_Nqint8")
    lsq.train(np.ascontiguousarray(data.learn[:50_000], dtype=np.float32))
    rows = np.ascontiguousarray(data.base[:LSQ_ROWS], dtype=np.float32)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        lsq.sa_encode(rows)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"encoder": "faiss LSQ7x8_Nqint8",
                      "vectors/s": [round(LSQ_ROWS / s) for s in seconds]}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

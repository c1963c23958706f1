"""Issue #14 scratch experiment: a beam for the vectors the greedy codes reconstruct worst.

`--beam B` costs every vector B's search. If the beam's gain sits in the vectors whose
greedy code is poor, searching only those gets most of it for a fraction of the time: encode
greedily, decode, and re-encode with the beam the share S of vectors of largest
reconstruction error (on the model's sphere, as search decodes them).

Run:  python bench/experiments/adaptive_beam.py MODEL DATA BEAM:SHARE [BEAM:SHARE ...]
One JSON row per setting: seconds (greedy encode + decode + beam on the share), base MSE and
the default search's recall (`beam_sphere.measure_codes`), appended to results-issue14.jsonl.
"""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import append_row, load_dataset  # noqa: E402
from beam_sphere import load_on_sphere, measure_codes  # noqa: E402


def adaptive_codes(model, base, beam, share):
    """Greedy codes of base float32 (n, d), the ``share`` of largest error re-encoded with
    ``beam``: (codes uint8 (n, code_bytes), seconds)."""
    start = time.perf_counter()
    codes = model.encode(base)
    if share > 0:
        error = ((model.decode(codes) - base) ** 2).sum(1)
        worst = np.argsort(-error, kind="stable")[:int(round(share * len(base)))]
        codes[worst] = model.encode(base[worst], beam=beam)
    return codes, time.perf_counter() - start


def main(model_path, data_path, *settings):
    torch.set_num_threads(2)
    data = load_dataset(data_path)
    model, meta = load_on_sphere(model_path, data)
    for _ in range(2):  # g_0's table is built on the second pass: every setting finds it
        model.encode(data.base)
    for setting in settings:
        beam, share = setting.split(":")
        codes, seconds = adaptive_codes(model, data.base, int(beam), float(share))
        append_row({"experiment": "adaptive_beam", "data": data.name, "model": model_path,
                    "beam": int(beam), "share": float(share), "encode_s": round(seconds, 1),
                    **measure_codes(model, meta, data, codes)})


if __name__ == "__main__":
    main(*sys.argv[1:])

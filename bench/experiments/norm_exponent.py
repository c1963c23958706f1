"""Issue #14 scratch measurement: rank decoded vectors by ⟨q, x̂⟩ / ‖x̂‖^α for several α.

Lever 30 put the decoded vectors back on the data's sphere (α = 1: the cosine with the
query), which beat the MSE-optimal decoding (‖q − x̂‖²) and the inner product (α = 0). The
decoded norm ‖x̂‖ measures the code's uncertainty (the posterior mean shrinks towards the
centre), and the query's true nearest neighbour lies far out in the tail of ⟨q, x⟩, where an
uncertain code is more likely to be than its mean says: α > 1 would rank uncertain codes up.
Exhaustive search of the decoded base (greedy codes of the model), every ranking on the same
decodings.

Run:  python bench/experiments/norm_exponent.py MODEL DATA [ALPHA ...]
Prints one JSON row per α: R@1/10/100 over the data's queries.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_levers import load_dataset  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402
from spreadcode.search import recall_at  # noqa: E402


def top_inner_product(database, queries, k, batch=500):
    """Ids int64 (nq, k) of the largest ⟨q, v⟩ over database float32 (n, d)."""
    db = torch.from_numpy(database)
    out = []
    for start in range(0, len(queries), batch):
        scores = torch.from_numpy(queries[start:start + batch]) @ db.T
        out.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(out).astype(np.int64)


def main(model_path, data_path, *alphas):
    torch.set_num_threads(2)
    alphas = [float(a) for a in alphas] or [0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0]
    model, _ = load_catalyzer(model_path)
    data = load_dataset(data_path)
    codes = model.encode(data.base)
    kept, model.output_norm = model.output_norm, None
    decoded = model.decode(codes)
    model.output_norm = kept
    norms = np.linalg.norm(decoded, axis=1, keepdims=True)
    for alpha in alphas:
        ids = top_inner_product((decoded / norms ** alpha).astype(np.float32),
                                data.query.astype(np.float32), 100)
        print(json.dumps({"alpha": alpha, **{
            f"R@{k}": round(100 * v, 1) for k, v in recall_at(ids, data.groundtruth).items()}}),
            flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

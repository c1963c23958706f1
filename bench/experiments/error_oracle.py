"""Issue #14 lever 93: what knowing each base vector's own reconstruction error could buy R@1.

Lever 10 ranked candidates by ‖q − x̂‖² + w·ê with ê a per-code error predicted by a small
network, and lost at every w > 0. Here ê is replaced by the exact ‖x − x̂‖² of each base
vector (an oracle: a code does not hold it), to bound what any per-code error estimate, or
the quantiles of a Gaussian distance built from it, could give. Each query's 200 nearest
full-decoder reconstructions (exhaustive, greedy codes) are re-ranked by

    ‖q − x̂‖² + w·e² − κ·2·‖q − x̂‖·e / √d      (e = ‖x − x̂‖)

(κ = 0: the expected distance for w = 1; κ > 0: a lower quantile, favouring uncertain codes)
and R@1 is counted. One JSON row with every (w, κ) is appended to results-issue14.jsonl.

    python bench/experiments/error_oracle.py DATA MODEL
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset  # noqa: E402
from spreadcode.catalyzer import load_catalyzer  # noqa: E402

SHORTLIST = 200
GRID = [(w, 0.0) for w in (-1, -0.5, -0.25, 0, 0.25, 0.5, 1)] \
    + [(w, kappa) for w in (0, 1) for kappa in (0.5, 1, 2, 4)]


def main():
    torch.set_num_threads(2)
    data, path = load_dataset(sys.argv[1]), sys.argv[2]
    model = load_catalyzer(path)[0]
    decoded = model.decode(model.encode(data.base))
    error = ((data.base.astype(np.float32) - decoded) ** 2).sum(1)
    queries = data.query.astype(np.float32)
    distances = ((queries ** 2).sum(1)[:, None] - 2 * queries @ decoded.T
                 + (decoded ** 2).sum(1)[None])
    top = np.argpartition(distances, SHORTLIST, axis=1)[:, :SHORTLIST]
    dist, err = np.take_along_axis(distances, top, 1), error[top]
    spread = 2 * np.sqrt(np.maximum(dist, 0) * err / queries.shape[1])
    nearest, rows = data.groundtruth[:, 0], np.arange(len(queries))
    recall = {}
    for w, kappa in GRID:
        best = top[rows, np.argmin(dist + w * err - kappa * spread, axis=1)]
        recall[f"w={w} kappa={kappa}"] = round(100 * float((best == nearest).mean()), 2)
        print(w, kappa, recall[f"w={w} kappa={kappa}"], flush=True)
    append_row({"experiment": "error_oracle", "lever": 93, "data": data.name, "model": path,
                "base_mse": round(float(error.mean()), 5), "shortlist": SHORTLIST,
                "R@1": recall})


if __name__ == "__main__":
    main()

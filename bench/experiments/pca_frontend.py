"""Issue #14 scratch experiment: a PCA front-end for the residual default on raw embeddings.

On raw 384-d MiniLM vectors (`make_raw384.py`) the residual default trails LSQ by 5.9 R@1
while on the same texts after PCA 96 it is level with it. Here the learn set's centred PCA
(fitted on learn only) projects learn, base and queries to D dimensions, without
re-normalising: squared L2 in the projection is the 384-d distance minus the part of the
discarded components. The library's default `Index.train(learn, 64)` then trains on the
projection, and recall is measured against the data set's own (384-d) ground truth. D = 0
runs the default on the raw vectors.

Run:  python bench/experiments/pca_frontend.py DATA D [D ...]
One JSON row per D (appended to results-issue14.jsonl): variance kept, train/encode/search
seconds, R@1/10/100 of the default search (k = 100).
"""
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
from autoencoder_levers import append_row, load_dataset, recall_columns  # noqa: E402
from spreadcode import Index  # noqa: E402


def pca(learn, dims):
    """(mean float64 (d,), components float64 (dims, d) by decreasing variance, kept share)."""
    mean = learn.mean(axis=0, dtype=np.float64)
    cov = np.cov((learn - mean).T)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return mean, vectors[:, order[:dims]].T, float(values[order[:dims]].sum() / values.sum())


def main():
    data = load_dataset(sys.argv[1])
    for dims in map(int, sys.argv[2:]):
        if dims:
            mean, components, kept = pca(data.learn, dims)
            project = lambda x: ((x - mean) @ components.T).astype(np.float32)  # noqa: E731
        else:
            kept, project = 1.0, lambda x: x  # noqa: E731
        start = time.time()
        index = Index.train(project(data.learn), 64, progress=False)
        train_s = time.time() - start
        start = time.time()
        index.add(project(data.base))
        encode_s = time.time() - start
        start = time.time()
        _, ids = index.search(project(data.query), k=100)
        search_s = time.time() - start
        row = {"experiment": "pca_frontend", "data": data.name, "pca": dims,
               "variance_kept": round(kept, 4), "train_s": round(train_s, 1),
               "encode_s": round(encode_s, 1), "search_s": round(search_s, 1),
               **recall_columns(ids, data.groundtruth)}
        append_row(row)


if __name__ == "__main__":
    main()

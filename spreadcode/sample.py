"""The bundled sample dataset: a slice of wordnet-minilm96 shipped inside the package.

Real sentence embeddings (all-MiniLM-L6-v2 of WordNet glosses, PCA to 96 dims, L2-normalised),
stored as float16 in ``spreadcode/data/wordnet-minilm96-sample.npz`` (~3.6 MB):
10,000 learn, 10,000 base and 500 query vectors. ``spreadcode demo`` uses it, and so does
``spreadcode train`` when no learn file is given. Ground truth is computed exactly on load.
"""
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

SAMPLE_NAME = "wordnet-minilm96-sample"


@dataclass(frozen=True)
class SampleDataset:
    """Arrays of the sample: ``learn``/``base``/``query`` float32 (n, 96);
    ``groundtruth`` int64 (n_query, 100), ids into ``base`` of the exact L2 top-100."""

    name: str
    learn: np.ndarray
    base: np.ndarray
    query: np.ndarray
    groundtruth: np.ndarray


def exact_neighbors(base, query, k):
    """Exact L2 k-NN by blocked brute force; ties go to the lower id.

    base: float32 (n, d); query: float32 (nq, d) -> int64 (nq, min(k, n)). Cost O(nq·n·d);
    memory bounded by 1024 queries × n scores at a time.
    """
    k = min(k, base.shape[0])
    base_sq = np.einsum("ij,ij->i", base, base, dtype=np.float64)
    out = np.empty((query.shape[0], k), dtype=np.int64)
    for start in range(0, query.shape[0], 1024):
        q = query[start:start + 1024].astype(np.float64)
        dist = base_sq[None, :] - 2.0 * (q @ base.T.astype(np.float64))
        out[start:start + 1024] = np.lexsort(
            (np.broadcast_to(np.arange(base.shape[0]), dist.shape), dist), axis=1)[:, :k]
    return out


@lru_cache(maxsize=1)
def load_sample():
    """Load the bundled sample (cached). Returns a `SampleDataset`."""
    with resources.files("spreadcode").joinpath(f"data/{SAMPLE_NAME}.npz").open("rb") as fh:
        with np.load(fh) as npz:
            arrays = {key: np.ascontiguousarray(npz[key], dtype=np.float32)
                      for key in ("learn", "base", "query")}
    gt = exact_neighbors(arrays["base"], arrays["query"], 100)
    return SampleDataset(name=SAMPLE_NAME, groundtruth=gt, **arrays)

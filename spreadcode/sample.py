"""The bundled sample dataset: a slice of wordnet-minilm96 shipped inside the package.

Real sentence embeddings (all-MiniLM-L6-v2 of WordNet glosses, PCA to 96 dims, L2-normalised),
stored as float16 in ``spreadcode/data/wordnet-minilm96-sample.npz`` (~3.6 MB):
10,000 learn, 10,000 base and 500 query vectors. ``spreadcode demo`` uses it, and so does
``spreadcode train`` when no learn file is given. Ground truth is computed exactly on load (`spreadcode.knn.exact_knn`, float64).
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


@lru_cache(maxsize=1)
def load_sample():
    """Load the bundled sample (cached). Returns a `SampleDataset`."""
    with resources.files("spreadcode").joinpath(f"data/{SAMPLE_NAME}.npz").open("rb") as fh:
        with np.load(fh) as npz:
            arrays = {key: np.ascontiguousarray(npz[key], dtype=np.float32)
                      for key in ("learn", "base", "query")}
    from spreadcode.knn import exact_knn

    _, gt = exact_knn(arrays["base"].astype(np.float64), arrays["query"].astype(np.float64), 100)
    return SampleDataset(name=SAMPLE_NAME, groundtruth=gt, **arrays)

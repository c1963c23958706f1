"""Benchmark datasets: a texmex-style directory or an ann-benchmarks HDF5 file.

Directory layout (like ``/work/shared/data/wordnet-minilm96`` or ``pypi-minilm96``):
``learn``, ``base`` and ``query`` as ``.fvecs``, ``.bvecs`` or ``.npy`` (any dtype
`spreadcode.vecio` reads, e.g. float16: converted to float32) plus ``groundtruth.ivecs``
(exact L2 neighbour ids into base, best first).

ann-benchmarks file (``.h5``/``.hdf5``): ``train`` is the base, ``test`` the queries,
``neighbors`` the ground truth; the learn set is a seeded random sample of ``train``
(at most ``LEARN_FROM_TRAIN`` rows), as ann-benchmarks has no separate training split.
For ``distance = angular`` every vector is L2-normalised, so that L2 ranking equals the
file's cosine ranking.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spreadcode import vecio
from spreadcode.errors import SpreadcodeError
from spreadcode.knn import exact_knn

LEARN_FROM_TRAIN = 100_000
QUICK_SIZES = {"learn": 5_000, "base": 5_000, "query": 200}
SPLIT_EXTENSIONS = (".fvecs", ".bvecs", ".npy")  # in order of preference


@dataclass(frozen=True)
class Dataset:
    """One benchmark dataset.

    learn / base / query: float32 (n, d) C-contiguous; groundtruth: int64 (n_query, n_gt)
    ids into base of the exact nearest neighbours, best first; name: used for the results
    folder; source: where it came from, for the report.
    """

    name: str
    source: str
    learn: np.ndarray
    base: np.ndarray
    query: np.ndarray
    groundtruth: np.ndarray


def load_dataset(path):
    """Read a dataset directory or ann-benchmarks file (see module docstring) -> Dataset."""
    path = Path(path)
    if path.is_dir():
        return _load_directory(path)
    if path.suffix.lower() in (".h5", ".hdf5") and path.is_file():
        return _load_ann_benchmarks(path)
    raise SpreadcodeError(
        f"{path}: not a dataset directory (learn/base/query .fvecs + groundtruth.ivecs) "
        "or an ann-benchmarks .hdf5 file")


def _find_split(directory, split):
    found = [directory / f"{split}{ext}" for ext in SPLIT_EXTENSIONS
             if (directory / f"{split}{ext}").is_file()]
    if not found:
        names = ", ".join(f"{split}{ext}" for ext in SPLIT_EXTENSIONS)
        raise SpreadcodeError(f"{directory}: none of {names}")
    return found[0]


def _load_directory(directory):
    splits = {split: vecio.read_vectors(_find_split(directory, split))
              for split in ("learn", "base", "query")}
    gt_path = directory / "groundtruth.ivecs"
    if not gt_path.is_file():
        raise SpreadcodeError(f"{directory}: no groundtruth.ivecs")
    groundtruth = vecio.read_groundtruth(gt_path)
    return _checked(Dataset(name=directory.name, source=str(directory.resolve()),
                            groundtruth=groundtruth, **splits))


def _load_ann_benchmarks(path):
    import h5py

    with h5py.File(path, "r") as h5:
        missing = {"train", "test", "neighbors"} - set(h5.keys())
        if missing:
            raise SpreadcodeError(f"{path}: missing ann-benchmarks datasets {sorted(missing)}")
        distance = str(h5.attrs.get("distance", "euclidean"))
    if distance not in ("euclidean", "angular"):
        raise SpreadcodeError(f"{path}: distance '{distance}' is not supported "
                              "(euclidean or angular only)")
    base = vecio.read_vectors(path, dataset="train")
    query = vecio.read_vectors(path, dataset="test")
    groundtruth = vecio.read_groundtruth(path, dataset="neighbors")
    if distance == "angular":
        base = _normalized(base)
        query = _normalized(query)
    rng = np.random.default_rng(0)
    n_learn = min(LEARN_FROM_TRAIN, base.shape[0])
    learn = base[np.sort(rng.choice(base.shape[0], n_learn, replace=False))]
    return _checked(Dataset(name=path.stem, source=f"{path.resolve()} (distance={distance})",
                            learn=learn, base=base, query=query, groundtruth=groundtruth))


def _normalized(x):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def _checked(ds):
    dims = {split: getattr(ds, split).shape[1] for split in ("learn", "base", "query")}
    if len(set(dims.values())) != 1:
        raise SpreadcodeError(f"{ds.source}: splits have different dimensions {dims}")
    if ds.groundtruth.ndim != 2 or ds.groundtruth.shape[0] != ds.query.shape[0]:
        raise SpreadcodeError(f"{ds.source}: ground truth has {ds.groundtruth.shape[0]} rows "
                              f"for {ds.query.shape[0]} queries")
    if ds.groundtruth.min() < 0 or ds.groundtruth.max() >= ds.base.shape[0]:
        raise SpreadcodeError(f"{ds.source}: ground-truth ids fall outside the "
                              f"{ds.base.shape[0]} base vectors")
    return ds


def subsample_learn(ds, n):
    """The first ``n`` learn vectors (the shipped splits are already shuffled, and nested
    prefixes make training-size curves comparable) -> Dataset named ``<name>-learn<n>``, so
    that its results do not overwrite those of the full learn set."""
    if not 0 < n <= ds.learn.shape[0]:
        raise SpreadcodeError(f"{ds.source}: learn size {n} is not in 1..{ds.learn.shape[0]}")
    return replace(ds, name=f"{ds.name}-learn{n}", learn=ds.learn[:n])


def quick_slice(ds):
    """The first QUICK_SIZES rows of each split, with exact ground truth recomputed on the
    base slice (the file's ids point into the full base). -> Dataset named ``<name>-quick``."""
    learn, base, query = (getattr(ds, split)[:QUICK_SIZES[split]]
                          for split in ("learn", "base", "query"))
    _, groundtruth = exact_knn(base, query, min(100, base.shape[0]))
    return replace(ds, name=f"{ds.name}-quick", learn=learn, base=base, query=query,
                   groundtruth=groundtruth)

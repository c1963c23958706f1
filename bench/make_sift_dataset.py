"""Build a texmex-style SIFT dataset (uint8 .bvecs) from a folder of photos.

    pip install opencv-python-headless        # SIFT; only this script needs it
    python bench/make_sift_dataset.py IMAGES_DIR OUT_DIR [--queries 5000] [--seed 0]

spreadcode's defaults are also meant for SIFT descriptors (BigANN), which this machine cannot
download; this script makes a stand-in from any photos at hand. Every image (.jpg, .jpeg,
.png, .webp, searched recursively, sorted by path) is read in grayscale, shrunk so its long
side is at most MAX_SIDE pixels, and described by OpenCV's SIFT (128 values, rounded and
clipped to uint8 as in BigANN). Duplicate descriptors are dropped, the rest shuffled with
``--seed`` and split into ``--queries`` queries, then LEARN_SHARE of the remainder as learn
and the rest as base. Writes learn/base/query.bvecs, groundtruth.ivecs (the exact L2 top-100
in base of each query, computed in float64, ties to the lower id) and meta.json (counts,
seed, and per image its path and descriptor count), which bench/suite.py and the other
bench scripts read like ../shared/data/wordnet-minilm96.

The SIFT-photos rows of BENCHMARKS.md used the photos of the Debian packages
ukui-wallpapers, lomiri-wallpapers, lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04
(``apt-get download``, ``dpkg-deb -x``) and the sample images bundled in the scikit-image
wheel (skimage/data/*.png, *.jpg): 130,525 distinct descriptors.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from spreadcode import vecio  # noqa: E402
from spreadcode.knn import exact_knn  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MAX_SIDE = 1600
MIN_SIDE = 128
LEARN_SHARE = 0.45
GROUNDTRUTH_K = 100


def describe_images(paths):
    """SIFT descriptors of each image: (list of uint8 (n_i, 128) arrays, list of (path, n_i));
    images that cannot be read, are smaller than MIN_SIDE or have no keypoint are skipped."""
    try:
        import cv2
    except ImportError:
        raise SystemExit("bench/make_sift_dataset.py needs OpenCV: pip install opencv-python-headless") from None

    sift = cv2.SIFT_create()
    blocks, used = [], []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None or min(image.shape) < MIN_SIDE:
            continue
        scale = MAX_SIDE / max(image.shape)
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        _, descriptors = sift.detectAndCompute(image, None)
        if descriptors is None:
            continue
        blocks.append(np.clip(np.rint(descriptors), 0, 255).astype(np.uint8))
        used.append((str(path), len(descriptors)))
    return blocks, used


def split(descriptors, n_queries, seed):
    """Distinct rows of uint8 (n, 128), shuffled -> (learn, base, query) uint8 arrays."""
    distinct = np.unique(descriptors, axis=0)
    distinct = distinct[np.random.default_rng(seed).permutation(len(distinct))]
    if len(distinct) < n_queries + 2 * GROUNDTRUTH_K:
        raise SystemExit(f"only {len(distinct)} distinct descriptors: too few for {n_queries} queries")
    n_learn = int((len(distinct) - n_queries) * LEARN_SHARE)
    query, rest = distinct[:n_queries], distinct[n_queries:]
    return rest[:n_learn], rest[n_learn:], query


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    blocks, used = describe_images(paths)
    if not blocks:
        raise SystemExit(f"{args.images}: no image with SIFT keypoints")
    learn, base, query = split(np.concatenate(blocks), args.queries, args.seed)
    _, groundtruth = exact_knn(base.astype(np.float64), query.astype(np.float64), GROUNDTRUTH_K)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("learn", learn), ("base", base), ("query", query)):
        vecio.write_vectors(args.out / f"{name}.bvecs", rows)
    vecio.write_vectors(args.out / "groundtruth.ivecs", groundtruth.astype(np.int32))
    meta = {"learn": len(learn), "base": len(base), "query": len(query), "dim": 128,
            "gt_k": GROUNDTRUTH_K, "metric": "L2", "seed": args.seed,
            "images": [{"path": path, "descriptors": n} for path, n in used]}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{args.out}: learn {len(learn)}, base {len(base)}, query {len(query)} "
          f"SIFT descriptors from {len(used)} images")


if __name__ == "__main__":
    main()
